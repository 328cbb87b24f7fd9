//! Dense packing of small byte strings into pool buffers: a bump allocator over whole buffers.
//!
//! A received message occupies at least one whole pool buffer, and a store that keeps a value
//! in place keeps that buffer for as long as the value lives: a 100-byte value held 2 KiB of
//! pool. A [`Packer`] copies small values one after another into an *open* buffer and hands
//! each out as its own [`Extent`] (one reference on the buffer each), so twenty 100-byte
//! values share one 2 KiB buffer. Copying 100 bytes costs less than the pool space it saves;
//! values above the caller's threshold stay zero copy, where they landed.
//!
//! **The one exception to "a shared buffer is never written".** The open buffer is shared as
//! soon as its first value is handed out (the store holds it), yet the packer writes the next
//! value into it. That is sound because the packer writes only past every byte it has handed
//! out, and it is the only holder that knows where that is: no extent, store record or send
//! covers those bytes, and the kernel never has the buffer (it was allocated, not lent). The
//! targets' write method therefore takes a [`PackToken`], which only this module can make.
//!
//! A buffer returns to the free list when its last value dies and the packer has moved on:
//! never worse than one buffer per live value, as before. Buffers kept by a few long-lived
//! values among dead ones are reclaimed by the store's cleaner, which relocates the values of
//! mostly dead buffers into spares as it moves their records forward (`pst_store`, `maintain`).
//!
//! **Why a copy here, and not the kernel packing receives (`IOU_PBUF_RING_INC`).** Incremental
//! provided buffers let the kernel land the bytes of every connection one after another in a
//! large chunk, which would make small values dense without this copy. It was weighed and not
//! taken, for now:
//! - the unit of reclamation gets worse, not better: a chunk goes back to the kernel only when
//!   every byte of it is consumed, so one kept 100-byte value pins a whole chunk of other
//!   connections' requests, replies' headers and framing (a kept value is a small fraction of
//!   what is received) — the cleaner would have to relocate out of nearly every chunk, which is
//!   this copy, later and under pressure;
//! - commands, keys and framing bytes would share chunks with kept values, so a chunk's dirty
//!   pages hold mostly bytes nobody keeps: more to write back at each `fdatasync`;
//! - incremental consumption combined with bundles hands buffers back out of order on some
//!   6.13+ kernels (the known bug), and the ring core's "one slot, one buffer" rule,
//!   on which its ownership checks rest, would become "one slot, a range of a shared chunk";
//! - the copy of a value of at most half a buffer (1 KiB) costs tens of nanoseconds against
//!   about 9 µs of server time per request (`pst bench kv`), and the epoll engine, which reads
//!   into its own buffers, packs with the same code.
//!
//! Values above half a buffer stay zero copy, where the kernel landed them.

use pst_pool::BufIdx;

use crate::slot::Extent;

/// Proof that the caller is the [`Packer`] writing past everything it handed out.
#[derive(Debug)]
pub struct PackToken(());

/// Buffers a [`Packer`] packs into: a port (uring) or a partition's [`crate::Buffers`] (epoll).
pub trait PackTarget {
    /// A whole free buffer (one reference, the packer's); `None` when exhausted.
    fn pack_alloc(&mut self) -> Option<Extent>;
    /// Write `bytes` at `off` of buffer `b`, which the packer holds and whose bytes from `off`
    /// on nobody else references (the [`PackToken`] says so).
    fn pack_write(&mut self, token: &PackToken, b: BufIdx, off: u32, bytes: &[u8]);
    /// One more reference on `len` bytes at `off` of buffer `b` (held by the packer).
    fn pack_retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent>;
    /// Give a reference back.
    fn pack_release(&mut self, e: Extent);
}

/// Packs small values densely (module docs). One per worker; [`Packer::close`] it when done.
#[derive(Debug, Default)]
pub struct Packer {
    /// The open buffer (the packer's own reference) and the bytes of it handed out.
    open: Option<(Extent, u32)>,
    /// A reusable staging buffer for callers that gather a value before packing it.
    scratch: Vec<u8>,
}

impl Packer {
    /// A packer with no open buffer.
    pub fn new() -> Packer {
        Packer::default()
    }

    /// Copy `bytes` (at most one buffer) into the open buffer, or a fresh one, and return an
    /// extent of them. `None` when a fresh buffer was needed and there is none (nothing held),
    /// or `bytes` is empty or larger than a buffer.
    pub fn pack(&mut self, t: &mut impl PackTarget, bytes: &[u8]) -> Option<Extent> {
        let len = u32::try_from(bytes.len()).ok().filter(|&l| l > 0)?;
        let fits = self
            .open
            .as_ref()
            .is_some_and(|(e, used)| used + len <= e.len());
        if !fits {
            let fresh = t.pack_alloc()?;
            if len > fresh.len() {
                t.pack_release(fresh);
                return None;
            }
            if let Some((old, _)) = self.open.replace((fresh, 0)) {
                t.pack_release(old);
            }
        }
        let (open, used) = self.open.as_mut().expect("an open buffer");
        let (b, at) = (open.buf(), open.off() + *used);
        t.pack_write(&PackToken(()), b, at, bytes);
        let e = t.pack_retain(b, at, len)?;
        *used += len;
        Some(e)
    }

    /// Give the open buffer back (its values keep it alive as long as they live).
    pub fn close(&mut self, t: &mut impl PackTarget) {
        if let Some((e, _)) = self.open.take() {
            t.pack_release(e);
        }
    }

    /// A reusable, empty staging buffer for a value the caller must gather before packing it
    /// (no allocation per value); give it back with [`Packer::put_scratch`].
    pub fn take_scratch(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        v
    }

    /// Return the staging buffer taken with [`Packer::take_scratch`].
    pub fn put_scratch(&mut self, v: Vec<u8>) {
        self.scratch = v;
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        if self.open.is_some() {
            // The open buffer's reference is lost with it: the buffer leaks until restart.
            tracing::warn!("a packer was dropped without close(): its open buffer leaks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Buffers;
    use pst_pool::{Geometry, PersistMode, Pool};
    use std::sync::Arc;

    #[test]
    fn small_values_share_buffers_and_free_them_when_dead() {
        let pool = Arc::new(
            Pool::anonymous(
                Geometry::for_size(1 << 20, 2048).unwrap(),
                PersistMode::None,
            )
            .unwrap(),
        );
        let part = pool
            .claim(pool.geometry().partitions(1)[0].clone())
            .unwrap();
        let mut bufs = Buffers::new(part, |_| 0);
        let free0 = bufs.free_count();
        let mut p = Packer::new();
        let vals: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100]).collect();
        let exts: Vec<Extent> = vals.iter().map(|v| p.pack(&mut bufs, v).unwrap()).collect();
        // 40 × 100 bytes in 2 KiB buffers: 20 per buffer, two buffers.
        assert_eq!(free0 - bufs.free_count(), 2);
        for (e, v) in exts.iter().zip(&vals) {
            assert_eq!(
                bufs.bytes(e),
                &v[..],
                "a later value never overwrote an earlier one"
            );
        }
        assert!(p.pack(&mut bufs, &vec![0; 2049]).is_none());
        assert!(p.pack(&mut bufs, &[]).is_none());
        p.close(&mut bufs);
        for e in exts {
            bufs.release(e);
        }
        assert_eq!(
            bufs.free_count(),
            free0,
            "every buffer back once its values died"
        );
    }
}
