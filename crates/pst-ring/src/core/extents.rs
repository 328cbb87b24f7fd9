//! Buffer references the application holds: keep, split, share, retain, allocate, release.

use super::*;

impl Core {
    /// The allocator owning buffer `b`.
    /// References held on buffer `b` (pool or TX scratch); 0 for a buffer not of this core.
    pub fn refs(&self, b: BufIdx) -> u16 {
        let a = match &self.tx_alloc {
            Some(t) if t.range().contains(&b.0) => t,
            _ => &self.alloc,
        };
        a.refs(b).unwrap_or(0)
    }

    pub(super) fn owner(&mut self, b: BufIdx) -> &mut BufAlloc {
        match &mut self.tx_alloc {
            Some(t) if t.range().contains(&b.0) => t,
            _ => &mut self.alloc,
        }
    }

    /// A whole buffer for transient TX data (a reply copy): from the TX buffers when the port
    /// has them, else from the pool. `None` when exhausted.
    pub fn alloc_tx_extent(&mut self) -> Option<Extent> {
        // From the top of the partition: a reply copy comes back once sent, and should not
        // sit between the buffers of kept data (see `pst_pool::alloc`).
        match self.tx_alloc.as_mut().and_then(|t| t.alloc_high()) {
            Some(b) => Some(Extent::owned(b, 0, self.cfg.buf_size)),
            None => self
                .alloc
                .alloc_high()
                .map(|b| Extent::owned(b, 0, self.cfg.buf_size)),
        }
    }

    /// Split `ext` at `at` bytes: both halves share the buffer (one more reference).
    pub fn split(&mut self, ext: Extent, at: u32) -> (Extent, Extent) {
        let (b, off, len) = ext.into_raw();
        assert!(at <= len, "split beyond the extent");
        self.owner(b)
            .retain(b)
            .expect("an extent holds a reference");
        (
            Extent::owned(b, off, at),
            Extent::owned(b, off + at, len - at),
        )
    }

    /// Add a reference to an extent's buffer and return a second handle on `skip..skip+len` of it.
    pub fn share(&mut self, ext: &Extent, skip: u32, len: u32) -> Extent {
        self.owner(ext.buf())
            .retain(ext.buf())
            .expect("an extent holds a reference");
        let mut e = Extent::owned(ext.buf(), ext.off(), ext.len());
        e.narrow(skip, len);
        e
    }

    /// A new reference on part of an already referenced buffer of this partition.
    pub fn retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent> {
        // A buffer lent to the kernel has a reference too (the core's, for the kernel), but
        // it is no one's to read: the kernel may write it at the next enter.
        if off as u64 + len as u64 > self.cfg.buf_size as u64 || self.bids.is_lent(b) {
            return None;
        }
        self.owner(b).retain(b).ok()?;
        Some(Extent::owned(b, off, len))
    }

    /// A whole free buffer for the application to fill (e.g. a reply). `None` when the pool is
    /// exhausted: back-pressure, try again after the next sync.
    pub fn alloc_extent(&mut self) -> Option<Extent> {
        self.alloc
            .alloc()
            .map(|b| Extent::owned(b, 0, self.cfg.buf_size))
    }

    /// A whole free slot of `k` buffers (see [`BufAlloc::alloc_run`]), one extent per
    /// buffer: for a store's log to borrow. `None` when no such slot is free.
    pub fn alloc_run(&mut self, k: u32) -> Option<Vec<Extent>> {
        Extent::owned_run(&mut self.alloc, k, self.cfg.buf_size)
    }

    /// Give an extent's reference back.
    pub fn release(&mut self, ext: Extent) {
        let (b, _, _) = ext.into_raw();
        self.owner(b)
            .release(b)
            .expect("an extent holds a reference");
    }
}
