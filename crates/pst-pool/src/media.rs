//! Byte-addressed persistent media under a store: the real pool mapping, or a simulated
//! persistent memory for deterministic crash tests.
//!
//! Offsets are pool-file offsets (header, log region and data region alike). The contract a
//! store relies on: bytes written with [`Media::write`] and covered by [`Media::flush`] (Pmem) or
//! anything written at all (Fsync) are durable once [`Media::barrier`] returns `Ok`.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::header::Header;
use crate::persist::PersistMode;
use crate::persist::LINE;
use crate::pool::{PersistError, Pool};

/// Persistent byte storage with flush + barrier semantics.
pub trait Media {
    /// The pool layout.
    fn header(&self) -> Header;
    /// The persist mode barriers implement.
    fn persist_mode(&self) -> PersistMode;
    /// Copy `len` bytes at `off` into a vector (the current, volatile content).
    fn read(&self, off: u64, out: &mut [u8]);
    /// Feed the current bytes at `off..off+len` to `f` without copying where possible.
    fn with_bytes<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Write bytes at `off`.
    fn write(&self, off: u64, data: &[u8]);
    /// Start persisting `off..off+len` (Pmem: write back its cache lines).
    fn flush(&self, off: u64, len: u64);
    /// Persist barrier: afterwards everything flushed (Pmem) / written (Fsync) is durable.
    fn barrier(&self) -> Result<(), PersistError>;
}

/// The real pool as media for one store.
#[derive(Debug, Clone)]
pub struct PoolMedia {
    pool: Arc<Pool>,
    writable: std::ops::Range<u64>,
}

impl PoolMedia {
    /// Media over `pool` for a store that may write the file range `writable` (its part of the
    /// log region).
    ///
    /// # Safety
    /// At most one `PoolMedia` may write a given range at a time, and its user may read only
    /// ranges nobody writes concurrently: its own log range, and pool buffers it holds a
    /// reference on (which the kernel does not own while referenced).
    pub unsafe fn new(pool: Arc<Pool>, writable: std::ops::Range<u64>) -> PoolMedia {
        PoolMedia { pool, writable }
    }

    /// The pool this media is part of.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn ptr(&self, off: u64, len: usize) -> *mut u8 {
        assert!(
            off + len as u64 <= self.pool.header.total_len,
            "range outside the pool"
        );
        self.pool.map.ptr_at(off)
    }
}

impl Media for PoolMedia {
    fn header(&self) -> Header {
        self.pool.header
    }

    fn persist_mode(&self) -> PersistMode {
        self.pool.persist_mode()
    }

    fn read(&self, off: u64, out: &mut [u8]) {
        self.with_bytes(off, out.len(), |b| out.copy_from_slice(b))
    }

    fn with_bytes<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let p = self.ptr(off, len);
        // SAFETY: in bounds (checked by `ptr`); no concurrent writer per `PoolMedia::new`'s
        // contract.
        f(unsafe { std::slice::from_raw_parts(p, len) })
    }

    fn write(&self, off: u64, data: &[u8]) {
        assert!(
            off >= self.writable.start && off + data.len() as u64 <= self.writable.end,
            "store write outside its log range"
        );
        let p = self.ptr(off, data.len());
        // SAFETY: in bounds, inside this media's exclusive writable range (contract of `new`);
        // `data` cannot overlap the mapping range we own exclusively.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    fn flush(&self, off: u64, len: u64) {
        // SAFETY: `ptr` checks that the range lies inside the pool's mapping.
        unsafe { self.pool.flush(self.ptr(off, len as usize), len as usize) }
    }

    fn barrier(&self) -> Result<(), PersistError> {
        self.pool.barrier()
    }
}

/// Simulated persistent memory: a volatile image (what the CPU sees) and a durable image (what
/// survives a crash). A cache line reaches the durable image only when flushed and fenced
/// (`Pmem`) or at a barrier (`Fsync`, which syncs every dirty line; `None` persists nothing).
#[derive(Debug, Clone)]
pub struct SimPm {
    inner: Arc<Mutex<SimInner>>,
}

#[derive(Debug)]
struct SimInner {
    header: Header,
    mode: PersistMode,
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Lines written since they were last made durable.
    dirty: BTreeSet<usize>,
    /// Lines flushed but not yet fenced, with their content at flush time: that content is
    /// what the write-back carries even if the line is written again before the fence.
    flushed: BTreeMap<usize, Vec<u8>>,
    barriers: u64,
    /// Barriers still to fail (fault injection), persisting nothing.
    failing: u32,
}

impl SimPm {
    /// A zeroed simulated pool with this layout.
    pub fn new(header: Header, mode: PersistMode) -> SimPm {
        let n = header.total_len as usize;
        SimPm {
            inner: Arc::new(Mutex::new(SimInner {
                header,
                mode,
                volatile: vec![0; n],
                durable: vec![0; n],
                dirty: BTreeSet::new(),
                flushed: BTreeMap::new(),
                barriers: 0,
                failing: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulate a crash (process or power): the new media holds the durable image plus, for
    /// each line that was dirty, its volatile content with probability 1/2 (a torn write: the
    /// CPU may have written back any subset of dirty lines on its own). `rand` supplies
    /// randomness (deterministic in tests).
    pub fn crash(&self, mut rand: impl FnMut() -> u64) -> SimPm {
        let s = self.lock();
        let mut image = s.durable.clone();
        for &line in &s.dirty {
            if rand() & 1 == 1 {
                let a = line * LINE;
                let b = (a + LINE).min(image.len());
                image[a..b].copy_from_slice(&s.volatile[a..b]);
            }
        }
        SimPm {
            inner: Arc::new(Mutex::new(SimInner {
                header: s.header,
                mode: s.mode,
                volatile: image.clone(),
                durable: image,
                dirty: BTreeSet::new(),
                flushed: BTreeMap::new(),
                barriers: 0,
                failing: 0,
            })),
        }
    }

    /// Barriers issued so far.
    pub fn barriers(&self) -> u64 {
        self.lock().barriers
    }

    /// Make the next `n` barriers fail (fault injection for tests); they persist nothing.
    pub fn fail_barriers(&self, n: u32) {
        self.lock().failing = n;
    }

    /// Lines written but not yet durable.
    pub fn dirty_lines(&self) -> usize {
        self.lock().dirty.len()
    }
}

impl Media for SimPm {
    fn header(&self) -> Header {
        self.lock().header
    }

    fn persist_mode(&self) -> PersistMode {
        self.lock().mode
    }

    fn read(&self, off: u64, out: &mut [u8]) {
        let s = self.lock();
        out.copy_from_slice(&s.volatile[off as usize..off as usize + out.len()]);
    }

    fn with_bytes<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let s = self.lock();
        f(&s.volatile[off as usize..off as usize + len])
    }

    fn write(&self, off: u64, data: &[u8]) {
        let mut s = self.lock();
        let a = off as usize;
        s.volatile[a..a + data.len()].copy_from_slice(data);
        if !data.is_empty() {
            for line in a / LINE..=(a + data.len() - 1) / LINE {
                s.dirty.insert(line);
            }
        }
    }

    fn flush(&self, off: u64, len: u64) {
        let mut s = self.lock();
        if s.mode != PersistMode::Pmem || len == 0 {
            return;
        }
        let a = off as usize;
        for line in a / LINE..=(a + len as usize - 1) / LINE {
            if s.dirty.contains(&line) {
                let b = (line * LINE + LINE).min(s.volatile.len());
                let snap = s.volatile[line * LINE..b].to_vec();
                s.flushed.insert(line, snap);
            }
        }
    }

    fn barrier(&self) -> Result<(), PersistError> {
        let mut s = self.lock();
        s.barriers += 1;
        if s.failing > 0 {
            // Like a failed fdatasync: nothing is known to have reached the media.
            s.failing -= 1;
            return Err(PersistError::Sync("injected barrier failure".into()));
        }
        let lines: Vec<(usize, Vec<u8>)> = match s.mode {
            PersistMode::None => Vec::new(),
            PersistMode::Pmem => std::mem::take(&mut s.flushed).into_iter().collect(),
            PersistMode::Fsync => {
                let dirty = std::mem::take(&mut s.dirty);
                dirty
                    .into_iter()
                    .map(|l| {
                        let b = (l * LINE + LINE).min(s.volatile.len());
                        (l, s.volatile[l * LINE..b].to_vec())
                    })
                    .collect()
            }
        };
        for (line, snap) in lines {
            let a = line * LINE;
            let SimInner {
                volatile,
                durable,
                dirty,
                ..
            } = &mut *s;
            durable[a..a + snap.len()].copy_from_slice(&snap);
            if volatile[a..a + snap.len()] == snap[..] {
                dirty.remove(&line);
            }
        }
        Ok(())
    }
}

impl Pool {
    /// Media for the one store of this pool, which owns the whole log region. Returns `None`
    /// if it was already claimed: there is never a second writer of the log.
    ///
    /// The store reads pool buffers only while it holds references on them (so the kernel is
    /// not writing them), which is what makes its reads through the media race-free; recovery,
    /// which runs before any port lends buffers to the kernel, also reads the data region's
    /// segment slots. In a version 2 pool the store may also write the data region: only the
    /// slots it borrowed for its log, whose buffers it holds the only reference on.
    pub fn claim_log(self: &std::sync::Arc<Self>) -> Option<PoolMedia> {
        // AcqRel: the claim is a one-shot latch between threads; nothing else is ordered by it.
        if self
            .log_claimed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return None;
        }
        let h = self.header;
        let end = match h.log_may_grow() {
            true => h.total_len,
            false => h.log_off + h.geometry.log_len,
        };
        #[allow(unsafe_code)]
        // SAFETY: the latch above makes this the only media that writes the log region; the
        // reading discipline is documented on this method and upheld by pst-store, which reads
        // only its log region and buffers it holds references on, and writes the data region
        // (version 2) only in slots whose buffers it holds alone.
        Some(unsafe { PoolMedia::new(self.clone(), h.log_off..end) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Geometry;

    fn header() -> Header {
        Header::layout(Geometry {
            buf_size: 512,
            buf_count: 8,
            log_len: 4096,
        })
        .unwrap()
    }

    #[test]
    fn pmem_needs_flush_and_fence() {
        let m = SimPm::new(header(), PersistMode::Pmem);
        m.write(100, b"abc");
        m.write(1000, b"xyz");
        m.flush(100, 3);
        m.barrier().unwrap();
        let c = m.crash(|| 0); // no unflushed line survives
        let mut b = [0u8; 3];
        c.read(100, &mut b);
        assert_eq!(&b, b"abc");
        c.read(1000, &mut b);
        assert_eq!(b, [0; 3]);
        let c = m.crash(|| 1); // every dirty line happened to be written back
        c.read(1000, &mut b);
        assert_eq!(&b, b"xyz");
    }

    #[test]
    fn flush_without_fence_is_not_durable_and_fence_persists_flushed_content() {
        let m = SimPm::new(header(), PersistMode::Pmem);
        m.write(0, b"one");
        m.flush(0, 3);
        let mut b = [0u8; 3];
        m.crash(|| 0).read(0, &mut b);
        assert_eq!(b, [0; 3]);
        m.write(1, b"XY");
        m.barrier().unwrap();
        m.crash(|| 0).read(0, &mut b);
        assert_eq!(&b, b"one", "the fence persists the line as it was flushed");
        m.crash(|| 1).read(0, &mut b);
        assert_eq!(
            &b, b"oXY",
            "the later write may or may not have reached media"
        );
    }

    #[test]
    fn fsync_barrier_persists_all_dirty() {
        let m = SimPm::new(header(), PersistMode::Fsync);
        m.write(5000, b"data");
        m.barrier().unwrap();
        let mut b = [0u8; 4];
        m.crash(|| 0).read(5000, &mut b);
        assert_eq!(&b, b"data");
    }
}
