//! Provided-buffer ring ids (16 bits) mapped to pool buffers ([`BufIdx`], 32 bits).
//!
//! The kernel names a buffer it filled by the 16-bit id we gave it when posting; the pool is far
//! larger than 65,536 buffers, so the id is only a name for "the n-th buffer currently lent".
//!
//! The table also remembers the ring order of the lent ids: the kernel consumes a provided-buffer
//! ring from its head, in posting order, and a *bundle* receive (one completion for several
//! buffers) names only the first id — the others are the ring entries after it.

use std::collections::VecDeque;

use pst_pool::BufIdx;

/// Which pool buffer each lent ring id stands for, and the ids in ring order.
#[derive(Debug, Clone)]
pub struct BidTable {
    lent: Vec<Option<BufIdx>>,
    free: Vec<u16>,
    order: VecDeque<u16>,
    /// The lent buffers, for [`BidTable::is_lent`]: one bit per pool buffer index, grown to
    /// the highest index lent (64 bytes per MiB of pool below it, with 2 KiB buffers: 4 MiB
    /// for a 64 GiB pool). A bit, not a hash set: lending and taking run once per received
    /// buffer.
    lent_bufs: Vec<u64>,
}

/// Word and bit of buffer `b` in [`BidTable`]'s `lent_bufs`.
fn bit(b: u32) -> (usize, u64) {
    ((b / 64) as usize, 1u64 << (b % 64))
}

impl BidTable {
    /// A table for a ring of `entries` ids (at most 32,768, a kernel limit).
    pub fn new(entries: u16) -> BidTable {
        BidTable {
            lent: vec![None; entries as usize],
            free: (0..entries).rev().collect(),
            order: VecDeque::with_capacity(entries as usize),
            lent_bufs: Vec::new(),
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
        let (w, m) = bit(buf.0);
        if w >= self.lent_bufs.len() {
            self.lent_bufs.resize(w + 1, 0);
        }
        self.lent_bufs[w] |= m;
        self.order.push_back(bid);
        Some(bid)
    }

    /// The kernel gave back `bid`. `None` for an id that is not lent (a kernel/driver bug or a
    /// corrupt completion): the caller reports it instead of trusting it.
    pub fn take(&mut self, bid: u16) -> Option<BufIdx> {
        let mut out = Vec::with_capacity(1);
        self.take_run(bid, 1, &mut out).then(|| out[0])
    }

    /// The kernel gave back `n` buffers in ring order starting at `first` (a bundle). Appends
    /// them to `out`; `false` (and nothing taken) when `first` is not lent or fewer than `n`
    /// ids follow it.
    pub fn take_run(&mut self, first: u16, n: usize, out: &mut Vec<BufIdx>) -> bool {
        let p = match self.order.front() {
            Some(&f) if f == first => 0,
            _ => match self.order.iter().position(|&b| b == first) {
                Some(p) => p,
                None => return false,
            },
        };
        if n == 0 || p + n > self.order.len() {
            return false;
        }
        for bid in self.order.drain(p..p + n) {
            let buf = self.lent[bid as usize]
                .take()
                .expect("ids in the order are lent");
            self.free.push(bid);
            let (w, m) = bit(buf.0);
            self.lent_bufs[w] &= !m;
            out.push(buf);
        }
        true
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
        self.order.clear();
        self.lent_bufs.fill(0);
        out
    }

    /// Whether `buf` is lent to the kernel right now (it may write it at the next enter).
    pub fn is_lent(&self, buf: BufIdx) -> bool {
        let (w, m) = bit(buf.0);
        self.lent_bufs.get(w).is_some_and(|x| x & m != 0)
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
        assert!(t.is_lent(BufIdx(70_000)) && t.is_lent(BufIdx(5)));
        assert!(!t.is_lent(BufIdx(6)) && !t.is_lent(BufIdx(1 << 30)));
        assert_eq!(t.lend(BufIdx(6)), None);
        assert_eq!(t.take(a), Some(BufIdx(70_000)));
        assert!(!t.is_lent(BufIdx(70_000)) && t.is_lent(BufIdx(5)));
        assert_eq!(t.take(a), None, "double completion of one id is refused");
        assert_eq!(t.take(999), None);
        assert_eq!(t.lend(BufIdx(6)), Some(a));
        assert_eq!(t.lent(), 2);
        let mut d = t.drain();
        d.sort();
        assert_eq!(d, vec![BufIdx(5), BufIdx(6)]);
        assert_eq!(t.lent(), 0);
        assert!(!t.is_lent(BufIdx(5)) && !t.is_lent(BufIdx(6)));
    }

    #[test]
    fn bundles_take_ring_order_runs() {
        let mut t = BidTable::new(8);
        let ids: Vec<u16> = (0..6).map(|i| t.lend(BufIdx(100 + i)).unwrap()).collect();
        let mut out = Vec::new();
        assert!(t.take_run(ids[0], 3, &mut out));
        assert_eq!(out, vec![BufIdx(100), BufIdx(101), BufIdx(102)]);
        assert!(!t.take_run(ids[3], 4, &mut out), "only three follow");
        assert!(!t.take_run(ids[0], 1, &mut out), "already taken");
        assert_eq!(out.len(), 3, "a refused run takes nothing");
        assert_eq!(
            t.take(ids[4]),
            Some(BufIdx(104)),
            "out of order is tolerated"
        );
        out.clear();
        assert!(t.take_run(ids[3], 2, &mut out));
        assert_eq!(
            out,
            vec![BufIdx(103), BufIdx(105)],
            "runs skip what was taken"
        );
        assert_eq!(t.lent(), 0);
    }
}
