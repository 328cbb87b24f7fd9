//! What a worker thread is handed besides its engine's resources.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::{Metrics, WorkerMetrics};
use crate::stats::StatsFile;

/// A worker's identity, stop flag and counters.
#[derive(Debug, Clone)]
pub struct WorkerCtx {
    /// Thread number (its pool partition).
    pub index: usize,
    /// Set on SIGINT/SIGTERM: finish the batch, drain, return.
    pub stop: Arc<AtomicBool>,
    /// Counter publication for `pst bench`.
    pub stats: Option<Arc<StatsFile>>,
    /// The server's metrics (`GET /metrics`, `INFO`).
    pub metrics: Arc<Metrics>,
}

impl WorkerCtx {
    /// A context for a single worker that runs until `stop` is set.
    pub fn new(stop: Arc<AtomicBool>) -> WorkerCtx {
        WorkerCtx {
            index: 0,
            stop,
            stats: None,
            metrics: Arc::default(),
        }
    }

    /// This worker's metrics slot.
    pub fn metrics(&self) -> &WorkerMetrics {
        self.metrics.worker(self.index)
    }

    /// Whether the worker should stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Publish this worker's system calls and requests so far.
    pub fn publish(&self, syscalls: u64, requests: u64) {
        if let Some(st) = &self.stats {
            st.set(self.index, syscalls, requests);
        }
        self.metrics().publish(syscalls, requests);
    }
}
