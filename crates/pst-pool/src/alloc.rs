//! Buffer ownership bookkeeping for one pool partition: a free stack and a reference count per
//! buffer. Pure code, no I/O; one partition belongs to one thread (one `Port`).
//!
//! A buffer is free (count 0, on the free stack) or held by one or more owners: the kernel's
//! provided-buffer ring, an RX slot, kept [`Extent`](crate::BufIdx)s that share it (a buffer may
//! hold the end of one message and the start of the next), a TX queue, a log record.

use crate::geometry::BufIdx;

/// Why a reference-count operation was refused: it would corrupt the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The buffer does not belong to this partition.
    #[error("buffer {0:?} is outside this partition")]
    Foreign(BufIdx),
    /// The buffer is free; it has no reference to retain or release.
    #[error("buffer {0:?} is not allocated")]
    NotAllocated(BufIdx),
    /// The reference count would overflow.
    #[error("buffer {0:?} has too many references")]
    Overflow(BufIdx),
}

/// Free list and reference counts of the buffers `first..first + len`.
#[derive(Debug, Clone)]
pub struct BufAlloc {
    first: u32,
    refs: Vec<u16>,
    free: Vec<BufIdx>,
}

impl BufAlloc {
    /// All buffers in `first..first + len` free.
    pub fn new(first: u32, len: u32) -> BufAlloc {
        Self::with_live(first, len, |_| 0)
    }

    /// Start with the reference counts `live(idx)` (0 = free), as rebuilt by recovery.
    pub fn with_live(first: u32, len: u32, mut live: impl FnMut(BufIdx) -> u16) -> BufAlloc {
        let refs: Vec<u16> = (first..first + len).map(|i| live(BufIdx(i))).collect();
        // Reverse so the lowest indices are handed out first: nicer to read in traces.
        let free = (first..first + len)
            .rev()
            .filter(|&i| refs[(i - first) as usize] == 0)
            .map(BufIdx)
            .collect();
        BufAlloc { first, refs, free }
    }

    /// The partition's range of buffer indices.
    pub fn range(&self) -> std::ops::Range<u32> {
        self.first..self.first + self.refs.len() as u32
    }

    /// Number of buffers in the partition.
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Number of free buffers.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Take a free buffer with one reference.
    pub fn alloc(&mut self) -> Option<BufIdx> {
        let b = self.free.pop()?;
        self.refs[(b.0 - self.first) as usize] = 1;
        Some(b)
    }

    /// The reference count of `b` (0 when free).
    pub fn refs(&self, b: BufIdx) -> Result<u16, AllocError> {
        Ok(self.refs[self.slot(b)?])
    }

    /// Add a reference to an allocated buffer.
    pub fn retain(&mut self, b: BufIdx) -> Result<(), AllocError> {
        let i = self.slot(b)?;
        match self.refs[i] {
            0 => Err(AllocError::NotAllocated(b)),
            u16::MAX => Err(AllocError::Overflow(b)),
            _ => {
                self.refs[i] += 1;
                Ok(())
            }
        }
    }

    /// Drop a reference; returns `true` when the buffer became free.
    pub fn release(&mut self, b: BufIdx) -> Result<bool, AllocError> {
        let i = self.slot(b)?;
        match self.refs[i] {
            0 => Err(AllocError::NotAllocated(b)),
            n => {
                self.refs[i] = n - 1;
                if n == 1 {
                    self.free.push(b);
                }
                Ok(n == 1)
            }
        }
    }

    fn slot(&self, b: BufIdx) -> Result<usize, AllocError> {
        b.0.checked_sub(self.first)
            .map(|i| i as usize)
            .filter(|&i| i < self.refs.len())
            .ok_or(AllocError::Foreign(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_accounting() {
        let mut a = BufAlloc::new(10, 3);
        assert_eq!(a.alloc(), Some(BufIdx(10)));
        let b = a.alloc().unwrap();
        a.retain(b).unwrap();
        assert!(!a.release(b).unwrap());
        assert!(a.release(b).unwrap());
        assert_eq!(a.release(b), Err(AllocError::NotAllocated(b)));
        assert_eq!(a.retain(BufIdx(13)), Err(AllocError::Foreign(BufIdx(13))));
        assert_eq!(a.retain(BufIdx(9)), Err(AllocError::Foreign(BufIdx(9))));
        assert_eq!(a.free_count(), 2);
        assert!(a.alloc().is_some() && a.alloc().is_some() && a.alloc().is_none());
    }

    #[test]
    fn with_live_skips_live_buffers() {
        let mut a = BufAlloc::with_live(0, 4, |b| if b.0 == 1 { 2 } else { 0 });
        assert_eq!(a.free_count(), 3);
        let got: Vec<_> = std::iter::from_fn(|| a.alloc()).collect();
        assert!(!got.contains(&BufIdx(1)));
        assert_eq!(a.refs(BufIdx(1)), Ok(2));
    }
}
