//! The store every worker shares: recovery at start, one lock per batch, released buffers
//! routed back to the partition (thread) that owns them, and the end-of-batch work (space
//! reclamation, group commit).

use std::ops::Range;
use std::path::Path;
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

/// End-of-batch store work: reclaim space if needed, group commit, route released buffers.
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
    let (free, total) = g.store.segment_space();
    let low = free * 4 < total;
    let res = match retention {
        Retention::Wal => {
            if low || pressure {
                g.store.drop_oldest_segment();
            }
            Ok(true)
        }
        Retention::Compact => g.store.maintain(pressure),
    };
    if let Err(e) = res {
        tracing::error!(error = %e, "store maintenance failed");
    }
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

/// The store shared by every worker thread, with per-partition queues of released extents
/// (a buffer goes back to the allocator of the thread that owns its partition).
#[derive(Debug)]
pub struct SharedStore {
    inner: Mutex<SharedInner>,
    parts: Vec<Range<u32>>,
}

/// The store and the per-partition queues of released extents, behind the lock.
#[derive(Debug)]
pub struct SharedInner {
    /// The store.
    pub store: PoolStore,
    returns: Vec<Vec<Extent>>,
}

impl SharedStore {
    /// Wrap a recovered store for workers owning `parts`.
    pub fn new(store: PoolStore, parts: Vec<Range<u32>>) -> Arc<SharedStore> {
        let returns = parts.iter().map(|_| Vec::new()).collect();
        Arc::new(SharedStore {
            inner: Mutex::new(SharedInner { store, returns }),
            parts,
        })
    }

    /// Lock for one batch.
    pub fn lock(&self) -> MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route the store's released extents to their partitions' queues.
    pub fn route_released(&self, g: &mut SharedInner) {
        for e in g.store.take_released() {
            let b = e.buf().0;
            match self.parts.iter().position(|p| p.contains(&b)) {
                Some(i) => g.returns[i].push(e),
                None => tracing::error!(buf = b, "released buffer outside every partition"),
            }
        }
    }

    /// Extents partition `i` must release.
    pub fn take_returns(g: &mut SharedInner, i: usize) -> Vec<Extent> {
        std::mem::take(&mut g.returns[i])
    }

    /// True when the store references buffer `b` (recovery → port allocator).
    pub fn holds(&self, b: BufIdx) -> bool {
        self.lock().store.holds(b)
    }
}

/// Whether a batch should compact or truncate: true when a partition is short of buffers.
pub fn pool_pressure(free: usize, capacity: usize) -> bool {
    free * 8 < capacity
}
