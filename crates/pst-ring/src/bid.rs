//! Provided-buffer ring ids (16 bits) mapped to pool buffers ([`BufIdx`], 32 bits).
//!
//! The kernel names a buffer it filled by the 16-bit id we gave it when posting; the pool is far
//! larger than 65,536 buffers, so the id is only a name for "the n-th buffer currently lent".

use pst_pool::BufIdx;

/// Which pool buffer each lent ring id stands for.
#[derive(Debug, Clone)]
pub struct BidTable {
    lent: Vec<Option<BufIdx>>,
    free: Vec<u16>,
}

impl BidTable {
    /// A table for a ring of `entries` ids (at most 32,768, a kernel limit).
    pub fn new(entries: u16) -> BidTable {
        BidTable {
            lent: vec![None; entries as usize],
            free: (0..entries).rev().collect(),
        }
    }

    /// Number of ids.
    pub fn entries(&self) -> usize {
        self.lent.len()
    }

    /// Number of buffers currently lent to the kernel.
    pub fn lent(&self) -> usize {
        self.lent.len() - self.free.len()
    }

    /// Lend `buf`: returns the id to post it under, or `None` when every id is in use.
    pub fn lend(&mut self, buf: BufIdx) -> Option<u16> {
        let bid = self.free.pop()?;
        self.lent[bid as usize] = Some(buf);
        Some(bid)
    }

    /// The kernel gave back `bid`. `None` for an id that is not lent (a kernel/driver bug or a
    /// corrupt completion): the caller reports it instead of trusting it.
    pub fn take(&mut self, bid: u16) -> Option<BufIdx> {
        let buf = self.lent.get_mut(bid as usize)?.take()?;
        self.free.push(bid);
        Some(buf)
    }

    /// Take every lent buffer back (ring torn down).
    pub fn drain(&mut self) -> Vec<BufIdx> {
        let mut out = Vec::new();
        for (bid, b) in self.lent.iter_mut().enumerate() {
            if let Some(b) = b.take() {
                out.push(b);
                self.free.push(bid as u16);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lend_take_reuse() {
        let mut t = BidTable::new(2);
        let a = t.lend(BufIdx(70_000)).unwrap();
        let b = t.lend(BufIdx(5)).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.lend(BufIdx(6)), None);
        assert_eq!(t.take(a), Some(BufIdx(70_000)));
        assert_eq!(t.take(a), None, "double completion of one id is refused");
        assert_eq!(t.take(999), None);
        assert_eq!(t.lend(BufIdx(6)), Some(a));
        assert_eq!(t.lent(), 2);
        let mut d = t.drain();
        d.sort();
        assert_eq!(d, vec![BufIdx(5), BufIdx(6)]);
        assert_eq!(t.lent(), 0);
    }
}
