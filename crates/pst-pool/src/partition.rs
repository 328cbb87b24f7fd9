//! Claimed partitions: the buffers one owner (a port, or a set of `Buffers`) may touch.
//!
//! Byte access to pool buffers is sound only if no two owners touch the same buffer: a port's
//! kernel ring writes the buffers it lends, and its application writes the buffers it owns.
//! So owners are built from a [`Partition`], which [`Pool::claim`] hands out only for a range
//! that no live partition overlaps; dropping the partition gives the range back. The scratch
//! (TX) buffers that go with a range ([`Pool::scratch_part`]) are disjoint for disjoint ranges,
//! so they are claimed with it.

use std::ops::Range;
use std::sync::Arc;

use crate::geometry::BufIdx;
use crate::pool::{Pool, PoolError};

/// An exclusive claim on the buffers `range` of a pool (and their scratch buffers).
#[derive(Debug)]
pub struct Partition {
    pool: Arc<Pool>,
    range: Range<u32>,
}

impl Pool {
    /// Claim the buffers `range` for one owner. Refused if the range is empty, outside the
    /// pool, or overlaps a live claim.
    pub fn claim(self: &Arc<Self>, range: Range<u32>) -> Result<Partition, PoolError> {
        let n = self.geometry().buf_count;
        if range.is_empty() || range.end > n {
            return Err(PoolError::Claim {
                range,
                why: "empty or outside the pool",
            });
        }
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims
            .iter()
            .any(|c| c.start < range.end && range.start < c.end)
        {
            return Err(PoolError::Claim {
                range,
                why: "overlaps buffers another port or Buffers owns",
            });
        }
        claims.push(range.clone());
        Ok(Partition {
            pool: self.clone(),
            range,
        })
    }
}

impl Partition {
    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The claimed buffers.
    pub fn range(&self) -> Range<u32> {
        self.range.clone()
    }

    /// The scratch buffers that go with them.
    pub fn scratch(&self) -> Range<u32> {
        self.pool.scratch_part(&self.range)
    }

    /// Whether buffer `b` (pool or scratch) belongs to this partition.
    pub fn contains(&self, b: BufIdx) -> bool {
        self.range.contains(&b.0) || self.scratch().contains(&b.0)
    }
}

impl Partition {
    /// Read `len` bytes of buffer `b` (of this partition) from `off`.
    ///
    /// Sound because the partition is the only owner of its buffers in this process (claims)
    /// and in any other (the pool file's lock), writes to them go through `&mut Partition`
    /// ([`Partition::bytes_mut`]) — and the one other writer, a kernel ring the buffers are
    /// lent to, writes only while its driver holds `&mut Partition` (the contract of lending,
    /// `pst_uring::BufRing::push`). Panics if `b` is not this partition's or the range is
    /// outside the buffer.
    #[allow(unsafe_code)]
    pub fn bytes(&self, b: BufIdx, off: u32, len: u32) -> &[u8] {
        assert!(self.contains(b), "buffer {} is not in this partition", b.0);
        // SAFETY: see above; the borrow of `self` keeps every writer out while it lives.
        unsafe { self.pool.bytes(b, off, len) }
    }

    /// Write access to `len` bytes of buffer `b` from `off`.
    ///
    /// # Safety
    /// The caller must hold the only reference on `b` (its allocator's count is one, and the
    /// caller holds it): a store may read any buffer it holds a reference on from another
    /// thread, and `&mut self` cannot see that.
    #[allow(unsafe_code)]
    pub unsafe fn bytes_mut(&mut self, b: BufIdx, off: u32, len: u32) -> &mut [u8] {
        assert!(self.contains(b), "buffer {} is not in this partition", b.0);
        // SAFETY: `&mut self` excludes every other access through this partition and the
        // kernel (see `bytes`); the caller excludes the other reference holders.
        unsafe { self.pool.bytes_mut(b, off, len) }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let mut claims = self.pool.claims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = claims.iter().position(|c| *c == self.range) {
            claims.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Geometry, PersistMode};

    #[test]
    fn claims_are_exclusive_until_dropped() {
        let g = Geometry::for_size(1 << 20, 2048).unwrap();
        let pool = Arc::new(Pool::anonymous(g, PersistMode::None).unwrap());
        let a = pool.claim(0..100).unwrap();
        assert!(pool.claim(50..150).is_err(), "overlap refused");
        let b = pool.claim(100..200).expect("adjacent is fine");
        assert!(
            a.scratch().end <= b.scratch().start,
            "scratch parts disjoint"
        );
        assert!(pool.claim(0..0).is_err());
        assert!(pool.claim(0..g.buf_count + 1).is_err());
        drop(a);
        pool.claim(0..100).expect("free again once dropped");
    }
}
