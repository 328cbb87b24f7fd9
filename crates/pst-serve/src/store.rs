//! The store every worker shares: recovery at start, one lock per batch, released buffers
//! routed back to the partition (thread) that owns them, and the end-of-batch work (space
//! reclamation, group commit — inline, or begun here and finished when the port's background
//! `fdatasync` completes; see the [`uring`](crate::uring) module docs).

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use pst::{BufIdx, Extent, Pool};
use pst_pool::PoolMedia;
use pst_store::Store;

use crate::error::ServeError;

/// The store type the servers use.
pub type PoolStore = Store<PoolMedia>;

/// Recover the pool's store (the whole log region) for `threads` workers. With `salvage`, a
/// damaged log is cut at the damage instead of refused.
pub fn open_store(
    pool: &Arc<Pool>,
    threads: usize,
    salvage: bool,
) -> Result<Arc<SharedStore>, ServeError> {
    let media = pool.claim_log().ok_or(ServeError::LogInUse)?;
    let h = *pool.header();
    let t0 = Instant::now();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let opened = if salvage {
        Store::open_salvage(media, log)
    } else {
        Store::open(media, log)
    };
    let (store, report) = opened.map_err(|source| ServeError::Recover {
        path: pool.path().unwrap_or(Path::new("(anonymous)")).to_owned(),
        source,
    })?;
    tracing::info!(
        records = report.records,
        keys = report.live_keys,
        torn_tail = %report.torn.as_ref().map_or("none".to_owned(), ToString::to_string),
        last_stop = match (report.sealed, report.records) {
            (true, _) => "clean",
            (false, 0) => "none (empty log)",
            (false, _) => "not clean (a crash or kill, or a build without seals)",
        },
        ms = t0.elapsed().as_millis() as u64,
        "store recovered"
    );
    let parts = pool.geometry().partitions(threads.max(1) as u32);
    Ok(SharedStore::new(store, parts))
}

/// Whether the store is a WAL (retention by dropping the oldest segment) or a KV (compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Drop the oldest records when space runs low.
    Wal,
    /// Compact the oldest segment when space runs low.
    Compact,
}

/// Space reclamation at the end of a batch, before its commit: WAL retention drops the oldest
/// segment when segments run low (or the pool is short of buffers), a KV compacts one.
pub fn maintain(g: &mut SharedInner, retention: Retention, pressure: bool) {
    let res = match retention {
        Retention::Wal => {
            // Segments low: a small log (a 1 MiB pool's has four) is never below a quarter
            // free, and without this refused every append once the free segments were down
            // to the two deletes keep.
            if g.store.segments_low() || pressure {
                g.store.drop_oldest_segment();
            }
            Ok(true)
        }
        Retention::Compact => g.store.maintain(pressure),
    };
    if let Err(e) = res {
        tracing::error!(error = %e, "store maintenance failed");
    }
}

/// End-of-batch store work, inline: reclaim space if needed, group commit with the barrier run
/// right here (the epoll baseline, and the port's `none`/`pmem` modes), route released buffers.
/// Returns whether the commit succeeded (else the store is poisoned) and how many persist
/// barriers it issued (each an `fdatasync` in Fsync mode). A commit that issued one is timed
/// into `metrics`.
pub fn end_batch(
    shared: &SharedStore,
    g: &mut SharedInner,
    retention: Retention,
    pressure: bool,
    metrics: &crate::metrics::Metrics,
) -> (bool, u64) {
    let commits_before = g.store.stats().commits;
    maintain(g, retention, pressure);
    let t0 = Instant::now();
    let committed = g.store.commit();
    if g.store.stats().commits != commits_before {
        metrics.commit(t0.elapsed());
    }
    let ok = match committed {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "group commit failed: replies withheld, connections closed");
            false
        }
    };
    shared.route_released(g);
    (ok, g.store.stats().commits - commits_before)
}

/// Begin a group commit whose barrier worker `worker` runs in the background (its port's
/// `FSYNC`). `Ok(true)`: begun, the caller must start the barrier; `Ok(false)`: nothing to
/// commit, or a commit is already in flight (it or the next one covers what is pending);
/// `Err(())`: the store is poisoned.
#[allow(clippy::result_unit_err)]
pub fn begin_commit(g: &mut SharedInner, worker: usize) -> Result<bool, ()> {
    if g.store.commit_in_flight().is_some() {
        return Ok(false);
    }
    match g.store.begin_commit() {
        Ok(Some(_)) => {
            g.commit_owner = Some((worker, Instant::now()));
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "group commit refused: replies withheld");
            Err(())
        }
    }
}

/// Finish the commit in flight with its barrier's outcome (timed into `metrics`), route the
/// buffers it released, and collect the wakers of other workers whose held replies it
/// released (or that must learn of a failure). Returns whether it succeeded.
pub fn finish_commit(
    shared: &SharedStore,
    g: &mut SharedInner,
    barrier: Result<(), pst::PersistError>,
    metrics: &crate::metrics::Metrics,
    wake: &mut Vec<pst::Waker>,
) -> bool {
    let owner = g.commit_owner.take();
    let ok = match g.store.finish_commit(barrier) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "group commit failed: replies withheld, connections closed");
            false
        }
    };
    if let Some((_, t0)) = owner {
        metrics.commit(t0.elapsed());
    }
    shared.route_released(g);
    let durable = g.store.durable_seq();
    let me = owner.map(|(w, _)| w);
    for (i, w) in g.waits.iter_mut().enumerate() {
        if Some(i) != me && *w != 0 && (*w <= durable || !ok) {
            *w = 0;
            if let Some(k) = g.wakers.get(i).and_then(|k| k.clone()) {
                wake.push(k);
            }
        }
    }
    ok
}

/// The store shared by every worker thread, with per-partition queues of released extents
/// (a buffer goes back to the allocator of the thread that owns its partition).
#[derive(Debug)]
pub struct SharedStore {
    inner: Mutex<SharedInner>,
    parts: Vec<Range<u32>>,
    /// Tests: completed background commits are not finished while set.
    hold: AtomicBool,
}

/// The store and the per-partition queues of released extents, behind the lock.
#[derive(Debug)]
pub struct SharedInner {
    /// The store.
    pub store: PoolStore,
    returns: Vec<Vec<Extent>>,
    /// The worker whose port runs the barrier of the commit in flight, and since when.
    commit_owner: Option<(usize, Instant)>,
    /// Per worker: the durable bound its oldest held reply waits for (0: none), and the waker
    /// of its port (uring engine), so that whoever finishes that commit wakes it.
    waits: Vec<u64>,
    wakers: Vec<Option<pst::Waker>>,
}

impl SharedInner {
    /// Worker `i` holds replies until `durable_seq` reaches `bound` (0: none): whoever
    /// finishes the commit that gets it there wakes it.
    pub fn wait_for(&mut self, i: usize, bound: u64) {
        if let Some(w) = self.waits.get_mut(i) {
            *w = bound;
        }
    }

    /// Register (or, with `None`, withdraw) worker `i`'s waker.
    pub fn set_waker(&mut self, i: usize, w: Option<pst::Waker>) {
        if let Some(k) = self.wakers.get_mut(i) {
            *k = w;
        }
    }

    /// Every registered waker of a worker other than `me` that waits for something.
    pub fn waiting_wakers(&mut self, me: usize, out: &mut Vec<pst::Waker>) {
        for (i, w) in self.waits.iter_mut().enumerate() {
            if i != me && *w != 0 {
                *w = 0;
                if let Some(k) = self.wakers.get(i).and_then(|k| k.clone()) {
                    out.push(k);
                }
            }
        }
    }

    /// The worker whose port runs the barrier of the commit in flight.
    pub fn commit_owner(&self) -> Option<usize> {
        self.commit_owner.map(|(w, _)| w)
    }
}

impl SharedStore {
    /// Wrap a recovered store for workers owning `parts`.
    pub fn new(store: PoolStore, parts: Vec<Range<u32>>) -> Arc<SharedStore> {
        let returns = parts.iter().map(|_| Vec::new()).collect();
        let n = parts.len();
        Arc::new(SharedStore {
            inner: Mutex::new(SharedInner {
                store,
                returns,
                commit_owner: None,
                waits: vec![0; n],
                wakers: vec![None; n],
            }),
            parts,
            hold: AtomicBool::new(false),
        })
    }

    /// For tests of the commit pipeline: while `true`, a worker whose background commit has
    /// completed does not finish it, so the commit stays in flight as far as replies are
    /// concerned (they stay held; reads of committed data still leave). Setting it back to
    /// `false` lets the commit finish at the worker's next round (within a few milliseconds).
    pub fn hold_commits(&self, hold: bool) {
        // Relaxed: a test switch; the store lock orders everything it guards.
        self.hold.store(hold, Ordering::Relaxed);
    }

    /// Whether [`SharedStore::hold_commits`] is on.
    pub fn commits_held(&self) -> bool {
        self.hold.load(Ordering::Relaxed)
    }

    /// Lock for one batch.
    pub fn lock(&self) -> MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route the store's released extents to their partitions' queues.
    pub fn route_released(&self, g: &mut SharedInner) {
        let SharedInner { store, returns, .. } = g;
        for e in store.drain_released() {
            route_one(&self.parts, returns, e);
        }
    }

    /// Queue extents for the partitions that own their buffers.
    fn route(&self, g: &mut SharedInner, extents: Vec<Extent>) {
        for e in extents {
            route_one(&self.parts, &mut g.returns, e);
        }
    }

    /// Lend a KV store what its space management asks for, from this worker's partition:
    /// whole slots of buffers while its log wants to grow ([`pst_store::Store::segment_wanted`]),
    /// and spare buffers to pack the values its cleaner relocates out of mostly dead buffers
    /// ([`pst_store::Store::spare_wanted`]). A slot is lent only when the buffers left after
    /// it (and after a second one) keep the write reserve ([`has_room`]): the
    /// log never takes what receiving and admitted writes need. Spares come out of half that
    /// reserve: relocation is what gives buffers back when the pool is full of sparse ones.
    /// The log gives slots back itself when it has plenty free ([`pst_store::Store::lend_back`],
    /// from `maintain`). At most two slots per batch. Returns how many slots were lent.
    pub fn grow(&self, g: &mut SharedInner, retention: Retention, src: &mut impl Lender) -> usize {
        // What `maintain` gave back (a slot, a filled spare) goes to its partition now, even
        // when no commit ran this batch to route it.
        self.route_released(g);
        if retention != Retention::Compact {
            return 0; // a WAL keeps to its log region: its retention drops the oldest records
        }
        let capacity = src.capacity();
        let mut granted = 0;
        while granted < 2 {
            match lend_segment(&mut g.store, src) {
                Ok(true) => granted += 1,
                Ok(false) => break,
                Err(back) => {
                    self.route(g, back);
                    break;
                }
            }
        }
        while g.store.spare_wanted() && src.free() * 32 > capacity {
            let Some(e) = src.one() else {
                break;
            };
            g.store.grant_spare(e);
        }
        granted
    }

    /// Extents partition `i` must release (the queue keeps its memory). Exhaust it: extents
    /// left in a dropped `Drain` are lost until a restart.
    pub fn drain_returns(g: &mut SharedInner, i: usize) -> std::vec::Drain<'_, Extent> {
        g.returns[i].drain(..)
    }

    /// True when the store references buffer `b` (recovery → port allocator).
    pub fn holds(&self, b: BufIdx) -> bool {
        self.lock().store.holds(b)
    }
}

/// Lend `store` one whole free slot of `src` as a log segment when its log wants one
/// ([`pst_store::Store::segment_wanted`]) and the write reserve stays whole after it and
/// another ([`has_room`] for two slots). `Ok(true)`: lent; `Err`: the store refused the slot
/// (logged; the caller gives the buffers back).
pub fn lend_segment(store: &mut PoolStore, src: &mut impl Lender) -> Result<bool, Vec<Extent>> {
    let Some(k) = store.segment_wanted() else {
        return Ok(false);
    };
    let (capacity, buf_size) = (src.capacity(), src.buf_size());
    if !has_room(
        src.free(),
        capacity,
        buf_size,
        2 * k as u64 * buf_size as u64,
    ) {
        return Ok(false);
    }
    let Some(slot) = src.slot(k) else {
        return Ok(false);
    };
    store
        .grant_segment(slot)
        .map(|()| true)
        .inspect_err(|back| {
            tracing::error!(buffers = back.len(), "the log refused a slot it asked for");
        })
}

/// Queue `e` for the partition of `parts` that owns its buffer.
fn route_one(parts: &[Range<u32>], returns: &mut [Vec<Extent>], e: Extent) {
    let b = e.buf().0;
    match parts.iter().position(|p| p.contains(&b)) {
        Some(i) => returns[i].push(e),
        None => tracing::error!(buf = b, "released buffer outside every partition"),
    }
}

/// A worker's buffers, as [`SharedStore::grow`] lends them to the store.
pub trait Lender {
    /// Free buffers.
    fn free(&self) -> usize;
    /// Buffers in the partition.
    fn capacity(&self) -> usize;
    /// Bytes per buffer.
    fn buf_size(&self) -> u32;
    /// A whole free aligned slot of `k` buffers (the highest).
    fn slot(&mut self, k: u32) -> Option<Vec<Extent>>;
    /// One free buffer (the lowest: relocated values are kept data).
    fn one(&mut self) -> Option<Extent>;
}

impl Lender for pst::Port {
    fn free(&self) -> usize {
        self.free_buffers()
    }
    fn capacity(&self) -> usize {
        pst::Port::capacity(self)
    }
    fn buf_size(&self) -> u32 {
        self.pool().buf_size()
    }
    fn slot(&mut self, k: u32) -> Option<Vec<Extent>> {
        self.alloc_run(k)
    }
    fn one(&mut self) -> Option<Extent> {
        self.alloc()
    }
}

impl Lender for pst::Buffers {
    fn free(&self) -> usize {
        self.free_count()
    }
    fn capacity(&self) -> usize {
        pst::Buffers::capacity(self)
    }
    fn buf_size(&self) -> u32 {
        pst::Buffers::buf_size(self)
    }
    fn slot(&mut self, k: u32) -> Option<Vec<Extent>> {
        self.alloc_run(k)
    }
    fn one(&mut self) -> Option<Extent> {
        self.alloc()
    }
}

/// Whether `free` of `capacity` buffers of `buf_size` bytes leave room for a write of
/// `bytes`: at least a sixteenth of the buffers stay free after it (the write reserve, which
/// receiving and replies draw on; the log borrows slots only above it too). In a small pool
/// that is more: the port lends the kernel receive buffers only above its own reserve (64, or
/// an eighth of a small partition), so the write reserve exceeds that by 16 — else a 1 MiB
/// pool filled with values left nothing to receive the next request into, and hung.
pub fn has_room(free: usize, capacity: usize, buf_size: u32, bytes: u64) -> bool {
    let need = bytes.div_ceil(buf_size.max(1) as u64) as usize;
    let keep = (capacity / 16).max((capacity / 8).min(64) + 16);
    free.saturating_sub(need) >= keep
}

/// Whether a batch should compact or truncate: true when a partition is short of buffers.
pub fn pool_pressure(free: usize, capacity: usize) -> bool {
    free * 8 < capacity
}
