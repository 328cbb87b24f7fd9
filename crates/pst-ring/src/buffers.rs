//! Pool buffers of one partition for code that moves bytes itself (the epoll baseline
//! engine): allocate, fill, read, release — no kernel ring. Same `Extent` rules as a port.
#![allow(unsafe_code)]

use pst_pool::{BufAlloc, BufIdx, Partition};

use crate::slot::Extent;

/// The buffers of a claimed partition, with their reference counts.
#[derive(Debug)]
pub struct Buffers {
    part: Partition,
    alloc: BufAlloc,
    buf_size: u32,
}

impl Buffers {
    /// The buffers of `part`, with `live(b)` references already held (by a recovered store).
    pub fn new(part: Partition, live: impl FnMut(BufIdx) -> u16) -> Buffers {
        let r = part.range();
        let alloc = BufAlloc::with_live(r.start, r.end - r.start, live);
        let buf_size = part.pool().buf_size();
        Buffers {
            part,
            alloc,
            buf_size,
        }
    }

    /// A whole free buffer; `None` when exhausted.
    pub fn alloc(&mut self) -> Option<Extent> {
        let b = self.alloc.alloc()?;
        Some(Extent::owned(b, 0, self.buf_size))
    }

    /// A whole free slot of `k` buffers (see [`BufAlloc::alloc_run`]), one extent per
    /// buffer: for a store's log to borrow. `None` when no such slot is free.
    pub fn alloc_run(&mut self, k: u32) -> Option<Vec<Extent>> {
        Extent::owned_run(&mut self.alloc, k, self.buf_size)
    }

    /// Read an extent.
    pub fn bytes(&self, ext: &Extent) -> &[u8] {
        self.part.bytes(ext.buf(), ext.off(), ext.len())
    }

    /// Write an extent. Panics if its buffer has other references (a shared buffer — a
    /// stored value, say — is never written).
    pub fn bytes_mut(&mut self, ext: &mut Extent) -> &mut [u8] {
        let refs = self.alloc.refs(ext.buf()).unwrap_or(0);
        assert_eq!(refs, 1, "writing a buffer with {refs} references");
        // SAFETY: the extent holds the buffer's only reference (checked above).
        unsafe { self.part.bytes_mut(ext.buf(), ext.off(), ext.len()) }
    }

    /// Give a reference back.
    pub fn release(&mut self, ext: Extent) {
        let (b, _, _) = ext.into_raw();
        if let Err(e) = self.alloc.release(b) {
            tracing::error!(error = %e, "buffer release refused");
        }
    }

    /// Free buffers.
    pub fn free_count(&self) -> usize {
        self.alloc.free_count()
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Buffers in the partition.
    pub fn capacity(&self) -> usize {
        self.alloc.capacity()
    }
}

impl crate::pack::PackTarget for Buffers {
    fn pack_alloc(&mut self) -> Option<Extent> {
        self.alloc()
    }

    fn pack_write(&mut self, _: &crate::pack::PackToken, b: BufIdx, off: u32, bytes: &[u8]) {
        // SAFETY: the packer holds `b` and nobody references its bytes from `off` on (the
        // token's contract, module `pack`); `&mut self` excludes every other writer.
        unsafe { self.part.bytes_mut(b, off, bytes.len() as u32) }.copy_from_slice(bytes);
    }

    fn pack_retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent> {
        self.alloc.retain(b).ok()?;
        Some(Extent::owned(b, off, len))
    }

    fn pack_release(&mut self, e: Extent) {
        self.release(e);
    }
}
