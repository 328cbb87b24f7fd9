//! What every server command shares: options, the pool, threads (one port per thread on
//! `SO_REUSEPORT` listeners), CPU pinning, signals and clean shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pst::{Geometry, PersistMode, Pool, PoolOptions, Port, PortConfig};

use crate::stats::StatsFile;

/// I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The pst port: io_uring, provided buffers in the pool, one enter per batch.
    Uring,
    /// Baseline: epoll_wait + read + write per connection.
    Epoll,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        })
    }
}

/// Options shared by the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (loopback by default; bind 0.0.0.0 deliberately).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// I/O engine.
    #[arg(long, value_enum, default_value_t = Engine::Uring)]
    pub engine: Engine,
    /// Pool file (created with its parent directories if absent; refused if foreign or corrupt).
    #[arg(long, default_value = "./pst-data/pool")]
    pub pool: PathBuf,
    /// Pool size for a new pool, e.g. 256MiB, 1GiB. An existing pool must match if given.
    #[arg(long, value_parser = parse_bytes)]
    pub pool_size: Option<u64>,
    /// Buffer size in bytes (power of two, 512..=65536).
    #[arg(long, default_value_t = pst_pool::DEFAULT_BUF_SIZE)]
    pub buf_size: u32,
    /// Persistence per batch: none, pmem (clwb + sfence), fsync (fdatasync).
    #[arg(long, default_value_t = PersistMode::None)]
    pub persist: PersistMode,
    /// Emulated extra persistent-memory write latency per persist barrier (ns).
    #[arg(long, default_value_t = 0)]
    pub pm_write_latency_ns: u64,
    /// Worker threads, each with its own port and pool partition.
    #[arg(long, default_value_t = 1)]
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
    /// Close connections that send nothing for this many seconds.
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

/// Parse "1048576", "64KiB", "256MiB", "1GiB" (also K/M/G, KB/MB/GB as binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

impl ServerArgs {
    /// Open (or create) the pool these options name.
    pub fn open_pool(&self) -> anyhow::Result<Arc<Pool>> {
        let size = self.pool_size.unwrap_or(pst_pool::DEFAULT_POOL_SIZE);
        let geometry = Geometry::for_size(size, self.buf_size).map_err(anyhow::Error::msg)?;
        let opts = PoolOptions {
            geometry,
            require_geometry: self.pool_size.is_some(),
            persist: self.persist,
            pm_write_latency_ns: self.pm_write_latency_ns,
            read_only: false,
            scratch_buffers: None,
        };
        let pool = Pool::open(&self.pool, &opts)?;
        if self.persist == PersistMode::Pmem && !pool.is_dax() {
            tracing::warn!("--persist pmem on a non-DAX pool: persistent memory is emulated (flushes reach the page cache)");
        }
        Ok(Arc::new(pool))
    }

    /// Connection limits from these options.
    pub fn limits(&self) -> crate::service::Limits {
        crate::service::Limits {
            max_conns: self.max_conns.max(1),
            idle: Duration::from_secs(self.idle_timeout_secs.max(1)),
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
}

/// Recover the pool's store (the whole log region) and share it between the workers.
pub fn open_store(
    pool: &Arc<Pool>,
    args: &ServerArgs,
) -> anyhow::Result<Arc<crate::service::SharedStore>> {
    let media = pool
        .claim_log()
        .context("the pool's log is already in use")?;
    let h = *pool.header();
    let t0 = Instant::now();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let opened = if args.salvage_damaged_log {
        pst_store::Store::open_salvage(media, log)
    } else {
        pst_store::Store::open(media, log)
    };
    let (store, report) = opened.with_context(|| {
        format!(
            "recovering the store in {} (left untouched; `pst inspect` shows the damage, --salvage-damaged-log starts anyway)",
            args.pool.display()
        )
    })?;
    tracing::info!(
        records = report.records,
        keys = report.live_keys,
        torn_tail = report.torn.as_deref().unwrap_or("none"),
        ms = t0.elapsed().as_millis() as u64,
        "store recovered"
    );
    let parts = pool.geometry().partitions(args.threads.max(1) as u32);
    Ok(crate::service::SharedStore::new(store, parts))
}

/// Serve a protocol on every worker with the chosen engine.
pub fn serve_protocol<P: crate::service::Protocol>(
    args: &ServerArgs,
    default_addr: &str,
    pool: Arc<Pool>,
    proto: Arc<P>,
    store: Option<Arc<crate::service::SharedStore>>,
    retention: crate::engine::Retention,
) -> anyhow::Result<()> {
    let engine = args.engine;
    let parts = pool.geometry().partitions(args.threads.max(1) as u32);
    let fsync = args.persist == PersistMode::Fsync;
    let limits = args.limits();
    let pool2 = pool.clone();
    let live: Live = match &store {
        Some(s) => {
            let s = s.clone();
            Arc::new(move |b| s.holds(b))
        }
        None => Arc::new(|_| false),
    };
    run_workers(args, default_addr, pool, live, move |mut w| match engine {
        Engine::Uring => crate::engine::uring(w, proto.clone(), store.clone(), retention, limits),
        Engine::Epoll => {
            let part = parts[w.index].clone();
            let bufs = match &store {
                Some(s) => pst::Buffers::new(pool2.clone(), part, |b| s.holds(b) as u16),
                None => pst::Buffers::new(pool2.clone(), part, |_| 0),
            };
            let app = crate::engine::EpollService::new(
                proto.clone(),
                bufs,
                store.clone(),
                w.index,
                retention,
                fsync,
            );
            let l = w.take_listener()?;
            crate::epoll::serve(
                l,
                app,
                &w.stop,
                w.stats.as_deref().map(|s| (s, w.index)),
                limits,
            )?;
            Ok(())
        }
    })
}

/// SIGINT/SIGTERM set the returned flag; a second signal exits at once.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Pin the calling thread to `cpu`.
pub fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(cpu, error = %e, "could not pin thread");
    }
}

/// Which buffers a recovered store holds (the ports must not lend them to the kernel).
pub type Live = Arc<dyn Fn(pst::BufIdx) -> bool + Send + Sync>;

/// Context handed to each worker thread.
pub struct Worker {
    /// Thread number.
    pub index: usize,
    /// Its port (uring engine) over its pool partition.
    pub port: Option<Port>,
    /// Shared stop flag.
    pub stop: Arc<AtomicBool>,
    /// Stats publication.
    pub stats: Option<Arc<StatsFile>>,
    /// This worker's handle on the server's one listening socket (taken by the worker).
    pub listener: Option<std::net::TcpListener>,
}

impl Worker {
    /// The listening socket (once).
    pub fn take_listener(&mut self) -> anyhow::Result<std::net::TcpListener> {
        self.listener
            .take()
            .ok_or_else(|| anyhow::anyhow!("listener already taken"))
    }
}

/// Bind the server's listening socket. All worker threads share this one socket (each port arms
/// its own multishot accept on it; epoll workers each poll it), so no `SO_REUSEPORT` is needed —
/// and without it a restart cannot silently share the port with the listener of a killed
/// predecessor, which lingers until the kernel tears its ring down and would reset the
/// connections handed to it. While that address is still taken, retry for a few seconds.
fn bind_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut warned = false;
    loop {
        match pst_uring::listener_with(addr, 4096, false) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(%addr, "address in use; waiting up to 5 s for it to be released");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("listening on {addr}")),
        }
    }
}

/// Run `work` on `args.threads` threads, each with a port over its pool partition (uring) or
/// none (epoll), until SIGINT/SIGTERM.
pub fn run_workers(
    args: &ServerArgs,
    default_addr: &str,
    pool: Arc<Pool>,
    live: Live,
    work: impl Fn(Worker) -> anyhow::Result<()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = args
        .addr
        .unwrap_or_else(|| default_addr.parse().expect("valid default"));
    let stop = stop_flag()?;
    let stats = match &args.stats_file {
        Some(p) => Some(Arc::new(StatsFile::create(p, args.threads)?)),
        None => None,
    };
    let threads = args.threads.max(1);
    let listener = bind_listener(addr)?;
    let parts = pool.geometry().partitions(threads as u32);
    let work = Arc::new(work);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (t, part) in parts.into_iter().enumerate() {
        let cpu = (!args.cpu.is_empty()).then(|| args.cpu[t % args.cpu.len()]);
        let work = work.clone();
        let ready_tx = ready_tx.clone();
        let (engine, cfg, pool, stop, stats) = (
            args.engine,
            args.port_config(),
            pool.clone(),
            stop.clone(),
            stats.clone(),
        );
        let live = live.clone();
        let listener = listener.try_clone().context("sharing the listener")?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("pst-{t}"))
                .spawn(move || {
                    if let Some(c) = cpu {
                        pin_to(c);
                    }
                    // The port is created on its own thread: its ring is SINGLE_ISSUER | DEFER_TASKRUN,
                    // bound to the thread that creates it.
                    let port = match engine {
                        Engine::Uring => Some(
                            Port::with_live(pool, part, cfg, |b| live(b) as u16)
                                .context("creating the io_uring port")?,
                        ),
                        Engine::Epoll => None,
                    };
                    let _ = ready_tx.send(());
                    work(Worker {
                        index: t,
                        port,
                        stop,
                        stats,
                        listener: Some(listener),
                    })
                })?,
        );
    }
    for _ in 0..threads {
        let _ = ready_rx.recv();
    }
    tracing::info!(%addr, engine = %args.engine, threads, pool = %args.pool.display(), persist = %args.persist, "serving; Ctrl-C to stop");
    let mut result = Ok(());
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                result = Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                result = Err(anyhow::anyhow!("a worker thread panicked"));
            }
        }
    }
    if let Err(e) = pool.barrier() {
        tracing::error!(error = %e, "final pool sync failed");
    }
    tracing::info!("stopped");
    result
}

/// Clean port shutdown: stop accepting, let queued replies go out, close everything.
pub fn drain_port(port: &mut Port) -> anyhow::Result<()> {
    port.stop_listening();
    port.close_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    // Zero-copy sends: wait for their notifications too (the kernel may still read the pool).
    while (port.open_conns() > 0 || port.zc_pending() > 0) && Instant::now() < deadline {
        port.sync(Some(Duration::from_millis(10)))?;
    }
    port.sync(Some(Duration::ZERO))?;
    Ok(())
}
