//! Arguments that are not stream bytes: an inline command's arguments after Redis's quote and
//! escape decoding (`SET k "a\x20b"`). The services address every argument as a range of
//! stream positions ([`Io`]); these get ranges in a virtual space far above any real stream
//! position, and [`OwnedIo`] serves those ranges from the owned bytes and everything else
//! from the engine. Inline commands are for humans at a terminal: the copy costs nothing that
//! matters, and the zero-copy path for RESP arrays is untouched.

use std::ops::Range;

use pst::Extent;

use crate::protocol::Io;

/// Where the virtual ranges start (2^62: no connection streams that many bytes).
const VIRTUAL: u64 = 1 << 62;

/// A connection's owned arguments, each at its virtual stream position.
#[derive(Debug, Default)]
pub struct OwnedArgs {
    args: Vec<(u64, Vec<u8>)>,
    next: u64,
}

impl OwnedArgs {
    /// Give `args` virtual ranges; they stay readable until [`OwnedArgs::clear`].
    pub fn stage(&mut self, args: Vec<Vec<u8>>) -> Vec<Range<u64>> {
        let mut ranges = Vec::with_capacity(args.len());
        for a in args {
            let start = VIRTUAL + self.next;
            // One byte of gap: consecutive arguments never share a boundary position.
            self.next += a.len() as u64 + 1;
            ranges.push(start..start + a.len() as u64);
            self.args.push((start, a));
        }
        ranges
    }

    /// Forget every staged argument (no command refers to them any more).
    pub fn clear(&mut self) {
        self.args.clear();
        self.next = 0;
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The owned bytes of virtual range `r`, or `None` for a real stream range.
    fn get(&self, r: &Range<u64>) -> Option<&[u8]> {
        if r.start < VIRTUAL {
            return None;
        }
        let i = self
            .args
            .partition_point(|(s, _)| *s <= r.start)
            .checked_sub(1)?;
        let (s, a) = &self.args[i];
        a.get((r.start - s) as usize..(r.end - s) as usize)
    }
}

/// The engine's [`Io`] plus a connection's owned arguments.
pub struct OwnedIo<'a, 'b> {
    /// The engine's byte access.
    pub inner: &'a mut (dyn Io + 'b),
    /// The owned arguments.
    pub owned: &'a OwnedArgs,
}

impl std::fmt::Debug for OwnedIo<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedIo")
            .field("owned", self.owned)
            .finish()
    }
}

impl Io for OwnedIo<'_, '_> {
    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        match self.owned.get(&r) {
            Some(b) => f(b),
            None if r.start >= VIRTUAL => {}
            None => self.inner.with_bytes(r, f),
        }
    }

    fn extents(&mut self, r: Range<u64>) -> Option<pst_store::ValueExtents> {
        match self.owned.get(&r) {
            Some(b) => self.inner.copy_in(b),
            None => self.inner.extents(r),
        }
    }

    fn copy_in(&mut self, bytes: &[u8]) -> Option<pst_store::ValueExtents> {
        self.inner.copy_in(bytes)
    }

    fn zero_copy(&mut self, extents: &[(u32, u32, u32)]) -> Option<pst_store::ValueExtents> {
        self.inner.zero_copy(extents)
    }

    fn has_room(&self, bytes: u64) -> bool {
        self.inner.has_room(bytes)
    }

    fn release(&mut self, e: Extent) {
        self.inner.release(e)
    }

    fn lend_segment(&mut self, store: &mut crate::store::PoolStore) {
        self.inner.lend_segment(store)
    }

    fn count_request(&mut self) {
        self.inner.count_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_arguments_read_back_by_range() {
        let mut o = OwnedArgs::default();
        let r = o.stage(vec![b"set".to_vec(), Vec::new(), b"a b".to_vec()]);
        assert_eq!(o.get(&r[0]), Some(&b"set"[..]));
        assert_eq!(o.get(&r[1]), Some(&b""[..]));
        assert_eq!(o.get(&r[2]), Some(&b"a b"[..]));
        assert_eq!(o.get(&(r[2].start + 1..r[2].end)), Some(&b" b"[..]));
        assert_eq!(o.get(&(0..3)), None);
        let r2 = o.stage(vec![b"x".to_vec()]);
        assert!(r2[0].start > r[2].end);
        assert_eq!(o.get(&r2[0]), Some(&b"x"[..]));
        o.clear();
        assert!(o.is_empty());
    }
}
