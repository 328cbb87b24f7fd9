//! Buffer ownership bookkeeping for one pool partition: a free bitmap and a reference count per
//! buffer. Pure code, no I/O; one partition belongs to one thread (one `Port`).
//!
//! Address-ordered: [`BufAlloc::alloc`] hands out the lowest free buffer, for data that stays
//! (packed values, copies the store keeps), and [`BufAlloc::alloc_high`] the highest, for
//! buffers that come back soon (the kernel's receive ring, reply copies). Kept data so fills
//! the file in runs of adjacent buffers, and a barrier writes them back as whole blocks: with
//! a free stack instead, a reply buffer freed between two packed buffers put them 2 KiB apart,
//! and every 2 KiB buffer cost a 4 KiB block on disk.
//!
//! A buffer is free (count 0, its bit set) or held by one or more owners: the kernel's
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

/// Free bitmap and reference counts of the buffers `first..first + len`.
#[derive(Debug, Clone)]
pub struct BufAlloc {
    first: u32,
    refs: Vec<u16>,
    /// Bit `i % 64` of word `i / 64`: buffer `first + i` is free.
    free: Vec<u64>,
    free_count: usize,
    /// No free bit in a word below `low` or above `high` (scan hints).
    low: usize,
    high: usize,
    /// `alloc_run(k)` found no free run of this `k`, and no release since completed one
    /// (allocating only takes buffers; each release checks its own slot): it fails at once
    /// instead of scanning the partition again (a store short of log space asks before each
    /// command).
    no_run: Option<u32>,
}

impl BufAlloc {
    /// All buffers in `first..first + len` free.
    pub fn new(first: u32, len: u32) -> BufAlloc {
        Self::with_live(first, len, |_| 0)
    }

    /// Start with the reference counts `live(idx)` (0 = free), as rebuilt by recovery.
    pub fn with_live(first: u32, len: u32, mut live: impl FnMut(BufIdx) -> u16) -> BufAlloc {
        let refs: Vec<u16> = (first..first + len).map(|i| live(BufIdx(i))).collect();
        let mut free = vec![0u64; (len as usize).div_ceil(64)];
        let mut free_count = 0;
        for (i, _) in refs.iter().enumerate().filter(|(_, &r)| r == 0) {
            free[i / 64] |= 1 << (i % 64);
            free_count += 1;
        }
        let high = free.len().saturating_sub(1);
        BufAlloc {
            first,
            refs,
            free,
            free_count,
            low: 0,
            high,
            no_run: None,
        }
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
        self.free_count
    }

    /// Take the lowest free buffer with one reference (for data that stays).
    pub fn alloc(&mut self) -> Option<BufIdx> {
        if self.free_count == 0 {
            return None;
        }
        let mut w = self.low;
        while self.free[w] == 0 {
            w += 1;
        }
        self.low = w;
        Some(self.take(w, self.free[w].trailing_zeros() as usize))
    }

    /// Take the highest free buffer with one reference (for buffers that come back soon).
    pub fn alloc_high(&mut self) -> Option<BufIdx> {
        if self.free_count == 0 {
            return None;
        }
        let mut w = self.high;
        while self.free[w] == 0 {
            w -= 1;
        }
        self.high = w;
        Some(self.take(w, 63 - self.free[w].leading_zeros() as usize))
    }

    /// Take a run of `k` free buffers, one reference each, whose first index is a multiple of
    /// `k` (a slot of the data region a store's log may borrow): the highest such run, away
    /// from the low end where kept data is packed. Returns its first buffer; `None` when no
    /// whole slot inside the partition is free.
    pub fn alloc_run(&mut self, k: u32) -> Option<BufIdx> {
        if k == 0 || self.free_count < k as usize || self.no_run == Some(k) {
            return None;
        }
        let end = self.first + self.refs.len() as u32;
        let mut start = (end / k) * k;
        while start >= self.first {
            if start + k <= end && self.all_free(start - self.first, start + k - self.first) {
                for b in start..start + k {
                    let i = (b - self.first) as usize;
                    self.take(i / 64, i % 64);
                }
                return Some(BufIdx(start));
            }
            let Some(next) = start.checked_sub(k) else {
                break;
            };
            start = next;
        }
        self.no_run = Some(k);
        None
    }

    /// Whether buffers `lo..hi` (partition-relative) are all free: a word at a time.
    fn all_free(&self, lo: u32, hi: u32) -> bool {
        let (lo, hi) = (lo as usize, hi as usize);
        let mut i = lo;
        while i < hi {
            let (w, bit) = (i / 64, i % 64);
            let n = (64 - bit).min(hi - i);
            let mask = match n {
                64 => u64::MAX,
                n => ((1u64 << n) - 1) << bit,
            };
            if self.free[w] & mask != mask {
                return false;
            }
            i += n;
        }
        true
    }

    fn take(&mut self, w: usize, bit: usize) -> BufIdx {
        self.free[w] &= !(1u64 << bit);
        self.free_count -= 1;
        let i = w * 64 + bit;
        self.refs[i] = 1;
        BufIdx(self.first + i as u32)
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
                    let w = i / 64;
                    self.free[w] |= 1 << (i % 64);
                    self.free_count += 1;
                    self.low = self.low.min(w);
                    self.high = self.high.max(w);
                    if let Some(k) = self.no_run {
                        // Did this release complete the aligned slot it lies in?
                        let (end, s) = (self.first + self.refs.len() as u32, b.0 / k * k);
                        if s >= self.first
                            && s + k <= end
                            && self.all_free(s - self.first, s + k - self.first)
                        {
                            self.no_run = None;
                        }
                    }
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
    fn lowest_for_data_highest_for_transients() {
        let mut a = BufAlloc::new(100, 130);
        assert_eq!(a.alloc(), Some(BufIdx(100)));
        assert_eq!(a.alloc_high(), Some(BufIdx(229)));
        assert_eq!(a.alloc(), Some(BufIdx(101)));
        // A transient between two kept buffers does not split them: it comes from the top.
        let t = a.alloc_high().unwrap();
        assert_eq!(a.alloc(), Some(BufIdx(102)));
        a.release(t).unwrap();
        assert_eq!(a.alloc_high(), Some(t));
        a.release(BufIdx(101)).unwrap();
        assert_eq!(
            a.alloc(),
            Some(BufIdx(101)),
            "a freed low buffer is reused first"
        );
        let mut got = vec![];
        while let Some(b) = a.alloc() {
            got.push(b.0);
        }
        assert_eq!(got.len(), 130 - 5);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.free_count(), 0);
        assert_eq!(a.alloc_high(), None);
    }

    #[test]
    fn runs_are_aligned_whole_and_highest_first() {
        // Buffers 10..74: slots of 16 are 16..32, 32..48, 48..64 (0..16 and 64..80 are not
        // wholly inside).
        let mut a = BufAlloc::new(10, 64);
        assert_eq!(a.alloc_run(16), Some(BufIdx(48)));
        assert_eq!(a.refs(BufIdx(48)), Ok(1));
        assert_eq!(a.refs(BufIdx(63)), Ok(1));
        assert_eq!(a.refs(BufIdx(64)), Ok(0));
        assert_eq!(
            a.alloc(),
            Some(BufIdx(10)),
            "kept data still starts at the bottom"
        );
        assert_eq!(a.alloc_run(16), Some(BufIdx(32)));
        assert_eq!(a.alloc_run(16), Some(BufIdx(16)));
        assert_eq!(a.alloc_run(16), None);
        assert_eq!(a.free_count(), 64 - 1 - 48);
        assert_eq!(a.alloc_run(0), None);
        // One live buffer inside 32..48 rules that slot out.
        let mut c = BufAlloc::with_live(10, 64, |b| (b.0 == 40) as u16);
        assert_eq!(c.alloc_run(16), Some(BufIdx(48)));
        assert_eq!(c.alloc_run(16), Some(BufIdx(16)));
        assert_eq!(c.alloc_run(16), None);
        // A failed search is remembered until a buffer comes free: taking more cannot make a
        // run, a release can.
        let b = c.alloc().expect("a free buffer");
        assert_eq!(c.alloc_run(16), None);
        assert_eq!(c.release(b), Ok(true));
        assert_eq!(c.alloc_run(16), None, "that release completes no slot");
        assert_eq!(c.release(BufIdx(40)), Ok(true));
        assert_eq!(c.alloc_run(16), Some(BufIdx(32)), "this one does");
    }

    /// The word-at-a-time search finds what a bit-by-bit search finds.
    #[test]
    fn runs_match_a_naive_search() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..400u32 {
            let first = (round * 37) % 300;
            let len = 200 + (round * 53) % 700;
            let density = round % 7;
            let live: Vec<bool> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 97) < density as u64
                })
                .collect();
            for k in [1u32, 8, 16, 64, 128] {
                let mut a =
                    BufAlloc::with_live(first, len, |b| live[(b.0 - first) as usize] as u16);
                let naive = (0..=(first + len) / k).rev().map(|j| j * k).find(|&s| {
                    s >= first
                        && s + k <= first + len
                        && (s..s + k).all(|b| !live[(b - first) as usize])
                });
                assert_eq!(a.alloc_run(k).map(|b| b.0), naive, "round {round} k {k}");
            }
        }
    }

    /// With searches remembered as failed, random takes and releases still find exactly the
    /// runs a bit-by-bit search finds.
    #[test]
    fn remembered_failures_match_a_naive_search() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (first, len, k) = (7u32, 256u32, 16u32);
        let mut a = BufAlloc::new(first, len);
        let mut held: Vec<BufIdx> = Vec::new();
        for step in 0..5000 {
            match rnd(4) {
                0 | 1 => held.extend(a.alloc()),
                2 if !held.is_empty() => {
                    let b = held.swap_remove(rnd(held.len() as u64) as usize);
                    assert_eq!(a.release(b), Ok(true));
                }
                _ => {
                    let free = |b: u32| a.refs(BufIdx(b)) == Ok(0);
                    let naive = (0..=(first + len) / k)
                        .rev()
                        .map(|j| j * k)
                        .find(|&s| s >= first && s + k <= first + len && (s..s + k).all(free));
                    let got = a.alloc_run(k).map(|b| b.0);
                    assert_eq!(got, naive, "step {step}");
                    if let Some(s) = got {
                        held.extend((s..s + k).map(BufIdx));
                    }
                }
            }
        }
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
