//! Server options shared by `pst httpd`, `pst kv` and `pst echo`, and what they become: a
//! pool, a store, a [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pst::{Geometry, PersistMode, Pool, PoolOptions, PortConfig};
use pst_bench::parse_bytes;
use pst_serve::{Engine, Limits, ServeConfig, SharedStore};

/// Options shared by the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (loopback by default; bind 0.0.0.0 deliberately).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// I/O engine.
    /// (uring or epoll)
    #[arg(long, default_value_t = Engine::Uring)]
    pub engine: Engine,
    /// Pool file (created with its parent directories if absent; refused if foreign or corrupt).
    #[arg(long, default_value = "./pst-data/pool")]
    pub pool: PathBuf,
    /// Pool size for a new pool, e.g. 256MiB, 1GiB. An existing pool must match if given.
    #[arg(long, value_parser = parse_bytes)]
    pub pool_size: Option<u64>,
    /// Buffer size in bytes (power of two, 512..=65536, e.g. 2048 or 16KiB). Larger buffers
    /// suit large messages: each buffer a message spans costs its own slot, reference and send
    /// entry (echoing 64 KiB messages took about a fifth more CPU with 2 KiB buffers than with
    /// 16 KiB ones). Values up to half a buffer are packed densely whatever the size.
    /// A new pool's default is 2048; an existing pool keeps its own, and must match if given.
    #[arg(long, value_parser = pst_bench::parse_buf_size)]
    pub buf_size: Option<u32>,
    /// Percent of a new pool given to the log's own region (the rest holds values). Each
    /// stored key costs a log record of ~80 bytes besides its value; a kv log that outgrows
    /// its region borrows slots of the buffers (and gives them back when the cleaner empties
    /// them), so the default suits small and large values alike. An existing pool keeps its
    /// layout (with --pool-size it must match, as the size must).
    #[arg(long, default_value_t = 6.25, value_parser = parse_log_share)]
    pub log_share: f64,
    /// Persistence per batch: none, pmem (clwb + sfence), fsync (fdatasync).
    #[arg(long, default_value_t = PersistMode::None)]
    pub persist: PersistMode,
    /// Emulated extra persistent-memory write latency per persist barrier (ns).
    #[arg(long, default_value_t = 0)]
    pub pm_write_latency_ns: u64,
    /// Worker threads, each with its own io_uring ring (or epoll set) and pool partition; they
    /// share the listening address.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub threads: usize,
    /// Upper bound (µs) a blocking sync waits to gather a batch of completions (io_uring
    /// min-wait; the batch adapts to the load). 0 returns on the first completion.
    #[arg(long, default_value_t = 20)]
    pub batch_wait_us: u32,
    /// Completions a sync waits for when --batch-wait-us is set.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Send replies of at least this many bytes with zero-copy SEND_ZC (e.g. 16KiB); 0 = plain
    /// SEND always (uring engine). On loopback and veth the kernel still copies.
    #[arg(long, value_parser = parse_bytes, default_value = "0")]
    pub send_zc_min: u64,
    /// Pin worker threads to these CPUs (comma list), round robin.
    #[arg(long, value_delimiter = ',')]
    pub cpu: Vec<usize>,
    /// Most concurrent connections per worker thread; beyond, new ones are told the server is
    /// busy and closed.
    #[arg(long, default_value_t = 10_000)]
    pub max_conns: usize,
    /// Close connections that send nothing for this many seconds; 0 never closes them (as
    /// Redis's `timeout 0`).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Drop a connection whose request has been incomplete for this many seconds (slow
    /// clients, slowloris).
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Start even if the log is damaged, from the last intact record (records after the damage
    /// are lost). Without it, a damaged log makes the server refuse to start.
    #[arg(long)]
    pub salvage_damaged_log: bool,
    /// Publish counters to this file (used by `pst bench`).
    #[arg(long, hide = true)]
    pub stats_file: Option<PathBuf>,
}

/// The buffer size in the header of an existing pool file, read before the pool is opened
/// (opening allocates a sparse pool's missing blocks); `None` when there is no file or no
/// valid header, which `Pool::open` then reports.
fn existing_buf_size(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; pst_pool::header::HEADER_LEN];
    let n = file.read_at(&mut buf, 0).ok()?;
    let header = pst_pool::Header::decode(&buf[..n], file.metadata().ok()?.len()).ok()?;
    Some(header.geometry.buf_size)
}

impl ServerArgs {
    /// Open (or create) the pool these options name.
    pub fn open_pool(&self) -> anyhow::Result<Arc<Pool>> {
        let size = self.pool_size.unwrap_or(pst_pool::DEFAULT_POOL_SIZE);
        let buf_size = self.buf_size.unwrap_or(pst_pool::DEFAULT_BUF_SIZE);
        let geometry = Geometry::for_size_with_log(size, buf_size, self.log_share / 100.0)
            .map_err(anyhow::Error::msg)?;
        // A server keeps buffers back for receiving and replies (64, or an eighth of a small
        // pool, then a sixteenth more for writes): below this it could refuse every write and,
        // on the io_uring engine, stop answering (an 86,016-byte pool did).
        const MIN_BUFFERS: u32 = 256;
        if geometry.buf_count < MIN_BUFFERS {
            anyhow::bail!(
                "--pool-size {size} is too small: it leaves {} buffers of {buf_size} bytes, and a \
                 server needs at least {MIN_BUFFERS} (try --pool-size 1MiB or more)",
                geometry.buf_count
            );
        }
        let opts = PoolOptions {
            geometry,
            require_geometry: self.pool_size.is_some(),
            persist: self.persist,
            pm_write_latency_ns: self.pm_write_latency_ns,
            read_only: false,
            scratch_buffers: None,
        };
        if let (Some(want), Some(have)) = (self.buf_size, existing_buf_size(&self.pool)) {
            if want != have {
                anyhow::bail!(
                    "{}: existing pool has {have}-byte buffers, but --buf-size {want} was given; the buffer size is fixed when a pool is created (left untouched; omit --buf-size or choose another --pool)",
                    self.pool.display()
                );
            }
        }
        let pool = Pool::open(&self.pool, &opts)?;
        if self.persist == PersistMode::Pmem && !pool.is_dax() {
            tracing::warn!("--persist pmem on a non-DAX pool: persistent memory is emulated (flushes reach the page cache)");
        }
        Ok(Arc::new(pool))
    }

    /// Connection limits from these options.
    pub fn limits(&self) -> Limits {
        Limits {
            max_conns: self.max_conns.max(1),
            idle: match self.idle_timeout_secs {
                0 => Duration::MAX, // compared against elapsed time only
                s => Duration::from_secs(s),
            },
            request: Duration::from_secs(self.request_timeout_secs.max(1)),
        }
    }

    /// Port configuration from these options.
    pub fn port_config(&self) -> PortConfig {
        let mut c = PortConfig::default();
        c.driver.min_wait_us = self.batch_wait_us;
        c.driver.batch = self.batch;
        c.driver.zc_min = u32::try_from(self.send_zc_min).unwrap_or(u32::MAX);
        c
    }

    /// What to serve with, listening on `addr` unless `--addr` says otherwise.
    pub fn serve_config(&self, default_addr: &str) -> ServeConfig {
        ServeConfig {
            addr: self
                .addr
                .unwrap_or_else(|| default_addr.parse().expect("valid default address")),
            engine: self.engine,
            threads: self.threads,
            cpu: self.cpu.clone(),
            port: self.port_config(),
            limits: self.limits(),
            stats_file: self.stats_file.clone(),
        }
    }

    /// Recover the pool's store for this server's threads.
    pub fn open_store(&self, pool: &Arc<Pool>) -> anyhow::Result<Arc<SharedStore>> {
        Ok(pst_serve::open_store(
            pool,
            self.threads,
            self.salvage_damaged_log,
        )?)
    }
}

/// `--log-share`: a percentage strictly between 0 and 100.
fn parse_log_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v < 100.0 {
        Ok(v)
    } else {
        Err("the log share is a percentage between 0 and 100 (exclusive)".into())
    }
}

/// A count that must be positive (`--threads`).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
