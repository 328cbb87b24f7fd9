//! Server metrics: counters and gauges every worker updates with relaxed atomic stores (no lock,
//! no allocation on the hot path), rendered on demand — as Prometheus text by `GET /metrics`
//! (`pst httpd`) and as `INFO` fields by `pst kv`.
//!
//! Per-worker figures (system calls, requests, bytes, connections, free buffers) live in the
//! worker's own cache-line-sized slot and are summed when rendered; the HTTP per-method/status
//! counters and the commit-latency histogram are shared (one relaxed `fetch_add` each).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most workers one server runs (as the stats file).
pub const MAX_WORKERS: usize = 64;

/// One worker's figures, on a cache line of its own so that workers do not share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    syscalls: AtomicU64,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    conns: AtomicU64,
    free_bufs: AtomicU64,
    capacity_bufs: AtomicU64,
    ring_empty: AtomicU64,
}

impl WorkerMetrics {
    /// Publish the worker's monotonic counters (totals so far, not increments).
    pub fn publish(&self, syscalls: u64, requests: u64) {
        self.syscalls.store(syscalls, Ordering::Relaxed);
        self.requests.store(requests, Ordering::Relaxed);
    }

    /// Publish the worker's gauges: open connections and its buffers (free of capacity).
    pub fn gauges(&self, conns: usize, free: usize, capacity: usize) {
        self.conns.store(conns as u64, Ordering::Relaxed);
        self.free_bufs.store(free as u64, Ordering::Relaxed);
        self.capacity_bufs.store(capacity as u64, Ordering::Relaxed);
    }

    /// Publish how many receives so far found the provided-buffer ring empty (uring engine:
    /// multishot receives ended by `ENOBUFS`, re-armed once buffers were lent again).
    pub fn ring_empty(&self, total: u64) {
        self.ring_empty.store(total, Ordering::Relaxed);
    }

    /// Count bytes received from clients.
    pub fn received(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Count bytes queued to clients.
    pub fn sent(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

/// HTTP methods counted separately.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OTHER"];
/// HTTP statuses counted separately (anything else counts as the last, 0 = "other").
pub const STATUSES: [u16; 18] = [
    200, 201, 204, 400, 401, 404, 405, 411, 413, 417, 431, 500, 503, 505, 507, 408, 100, 0,
];

/// Upper bounds of the commit-latency histogram buckets, seconds (`+Inf` is implicit).
pub const COMMIT_BUCKETS: [f64; 12] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 1.0,
];

/// A server's metrics.
#[derive(Debug)]
pub struct Metrics {
    workers: Box<[WorkerMetrics]>,
    http: Box<[AtomicU64]>,
    /// Per bucket (not cumulative), the last is `+Inf`.
    commit_buckets: Box<[AtomicU64]>,
    commit_ns: AtomicU64,
    commits: AtomicU64,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let atomics = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            workers: (0..MAX_WORKERS).map(|_| WorkerMetrics::default()).collect(),
            http: atomics(METHODS.len() * STATUSES.len()),
            commit_buckets: atomics(COMMIT_BUCKETS.len() + 1),
            commit_ns: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}

/// Totals over workers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// System calls made by the workers.
    pub syscalls: u64,
    /// Requests handled.
    pub requests: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes queued to clients.
    pub bytes_out: u64,
    /// Open client connections.
    pub conns: u64,
    /// Free pool buffers (over the workers' partitions).
    pub free_bufs: u64,
    /// Pool buffers the workers serve from.
    pub capacity_bufs: u64,
    /// Group commits that issued a persist barrier.
    pub commits: u64,
    /// Their summed latency, nanoseconds.
    pub commit_ns: u64,
    /// Receives that found the provided-buffer ring empty ([`WorkerMetrics::ring_empty`]).
    pub ring_empty: u64,
}

impl Metrics {
    /// Worker `i`'s slot (indices past [`MAX_WORKERS`] share the last slot).
    pub fn worker(&self, i: usize) -> &WorkerMetrics {
        &self.workers[i.min(MAX_WORKERS - 1)]
    }

    /// Count one HTTP response.
    pub fn http_response(&self, method: usize, status: u16) {
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len() - 1);
        let m = method.min(METHODS.len() - 1);
        self.http[m * STATUSES.len() + s].fetch_add(1, Ordering::Relaxed);
    }

    /// Record one group commit that took `d` (a persist barrier: `fdatasync` or flush+fence).
    pub fn commit(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let b = COMMIT_BUCKETS
            .iter()
            .position(|&ub| secs <= ub)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.commit_buckets[b].fetch_add(1, Ordering::Relaxed);
        self.commit_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Sums over workers.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in self.workers.iter() {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.syscalls += get(&w.syscalls);
            t.requests += get(&w.requests);
            t.bytes_in += get(&w.bytes_in);
            t.bytes_out += get(&w.bytes_out);
            t.conns += get(&w.conns);
            t.free_bufs += get(&w.free_bufs);
            t.capacity_bufs += get(&w.capacity_bufs);
            t.ring_empty += get(&w.ring_empty);
        }
        t.commits = self.commits.load(Ordering::Relaxed);
        t.commit_ns = self.commit_ns.load(Ordering::Relaxed);
        t
    }

    /// Seconds since the server started.
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The metrics in the Prometheus text exposition format (version 0.0.4). `store` adds the
    /// store's figures; `buf_size` is the pool's buffer size.
    pub fn prometheus(&self, store: Option<&pst_store::StoreStats>, buf_size: u32) -> String {
        let t = self.totals();
        let mut o = String::with_capacity(4096);
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "pst_http_requests_total",
            "counter",
            "HTTP responses sent, by request method and status code.",
        );
        for (m, method) in METHODS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.http[m * STATUSES.len() + s].load(Ordering::Relaxed);
                if n > 0 {
                    let code = if *status == 0 {
                        "other".to_owned()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        o,
                        "pst_http_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let counters = [
            (
                "pst_requests_total",
                "Requests handled (all protocols).",
                t.requests,
            ),
            (
                "pst_received_bytes_total",
                "Bytes received from clients.",
                t.bytes_in,
            ),
            (
                "pst_sent_bytes_total",
                "Bytes queued to clients.",
                t.bytes_out,
            ),
            (
                "pst_syscalls_total",
                "System calls made by the worker threads (io_uring_enter, epoll_wait, read, write, fdatasync, ...).",
                t.syscalls,
            ),
            (
                "pst_recv_ring_empty_total",
                "Receives that found the provided-buffer ring empty (uring engine; back-pressure: the connection's receive was re-armed once buffers were lent again).",
                t.ring_empty,
            ),
        ];
        for (name, help, v) in counters {
            family(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        let per_req = if t.requests > 0 {
            t.syscalls as f64 / t.requests as f64
        } else {
            0.0
        };
        let live = store.map_or(t.capacity_bufs.saturating_sub(t.free_bufs), |s| {
            s.buffers_held
        });
        let gauges = [
            (
                "pst_syscalls_per_request",
                "System calls per request since the start.",
                per_req,
            ),
            (
                "pst_connections",
                "Open client connections.",
                t.conns as f64,
            ),
            (
                "pst_pool_capacity_buffers",
                "Pool buffers the workers serve from.",
                t.capacity_bufs as f64,
            ),
            (
                "pst_pool_free_buffers",
                "Pool buffers free to receive into.",
                t.free_bufs as f64,
            ),
            (
                "pst_pool_live_buffers",
                "Pool buffers holding stored data.",
                live as f64,
            ),
            (
                "pst_pool_buffer_size_bytes",
                "Size of one pool buffer.",
                buf_size as f64,
            ),
            (
                "pst_uptime_seconds",
                "Seconds since the server started.",
                self.uptime(),
            ),
        ];
        for (name, help, v) in gauges {
            family(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        if let Some(s) = store {
            let store_gauges = [
                ("pst_store_records", "Records in the log.", s.records as f64),
                (
                    "pst_store_live_bytes",
                    "Bytes of live values.",
                    s.live_bytes as f64,
                ),
                (
                    "pst_store_segments_free",
                    "Free log segments.",
                    s.free_segments as f64,
                ),
                ("pst_store_segments", "Log segments.", s.segments as f64),
            ];
            for (name, help, v) in store_gauges {
                family(&mut o, name, "gauge", help);
                let _ = writeln!(o, "{name} {v}");
            }
            family(
                &mut o,
                "pst_store_compactions_total",
                "counter",
                "Log segments compacted.",
            );
            let _ = writeln!(o, "pst_store_compactions_total {}", s.compactions);
        }
        family(
            &mut o,
            "pst_commit_duration_seconds",
            "histogram",
            "Latency of group commits that issued a persist barrier (fdatasync, or flush and fence).",
        );
        let mut cum = 0u64;
        for (i, ub) in COMMIT_BUCKETS.iter().enumerate() {
            cum += self.commit_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "pst_commit_duration_seconds_bucket{{le=\"{ub}\"}} {cum}");
        }
        cum += self.commit_buckets[COMMIT_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(o, "pst_commit_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "pst_commit_duration_seconds_sum {}",
            t.commit_ns as f64 / 1e9
        );
        let _ = writeln!(o, "pst_commit_duration_seconds_count {cum}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_workers_and_histogram_is_cumulative() {
        let m = Metrics::default();
        m.worker(0).publish(10, 4);
        m.worker(1).publish(6, 4);
        m.worker(1).gauges(3, 90, 100);
        m.worker(0).received(100);
        m.worker(0).ring_empty(5);
        m.worker(1).ring_empty(2);
        m.commit(Duration::from_micros(70));
        m.commit(Duration::from_secs(3));
        m.http_response(0, 200);
        m.http_response(2, 299);
        let t = m.totals();
        assert_eq!(
            (t.syscalls, t.requests, t.conns, t.bytes_in),
            (16, 8, 3, 100)
        );
        let text = m.prometheus(None, 2048);
        assert!(text.contains("pst_syscalls_per_request 2\n"), "{text}");
        assert!(text.contains("pst_recv_ring_empty_total 7\n"), "{text}");
        assert!(text.contains("pst_http_requests_total{method=\"GET\",code=\"200\"} 1"));
        assert!(text.contains("pst_http_requests_total{method=\"POST\",code=\"other\"} 1"));
        assert!(text.contains("pst_commit_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("pst_commit_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("pst_commit_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("pst_commit_duration_seconds_count 2\n"));
        assert!(text.contains("pst_pool_live_buffers 10\n"));
    }
}
