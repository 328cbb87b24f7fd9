//! The worker runtime: one listening socket, `threads` workers (each with its own port over its
//! pool partition, or an epoll loop), CPU pinning, SIGINT/SIGTERM and clean shutdown.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{Pool, Port, PortConfig};

use crate::error::ServeError;
use crate::protocol::{Limits, Protocol};
use crate::stats::StatsFile;
use crate::store::{Retention, SharedStore};
use crate::worker::WorkerCtx;

/// I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "uring" => Ok(Engine::Uring),
            "epoll" => Ok(Engine::Epoll),
            _ => Err(format!("unknown engine {s:?} (expected uring or epoll)")),
        }
    }
}

/// How to serve: address, engine, threads and limits.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// I/O engine.
    pub engine: Engine,
    /// Worker threads, each with its own port and pool partition.
    pub threads: usize,
    /// Pin worker threads to these CPUs, round robin (empty: no pinning).
    pub cpu: Vec<usize>,
    /// Port parameters (uring engine).
    pub port: PortConfig,
    /// Connection limits.
    pub limits: Limits,
    /// Publish counters to this file (`pst bench` reads it).
    pub stats_file: Option<PathBuf>,
}

impl ServeConfig {
    /// Defaults for `addr`: the uring engine, one thread, default port and limits.
    pub fn new(addr: SocketAddr) -> ServeConfig {
        ServeConfig {
            addr,
            engine: Engine::Uring,
            threads: 1,
            cpu: Vec::new(),
            port: PortConfig::default(),
            limits: Limits::default(),
            stats_file: None,
        }
    }
}

/// SIGINT/SIGTERM set the returned flag; a second signal exits at once.
pub fn stop_flag() -> Result<Arc<AtomicBool>, ServeError> {
    let stop = Arc::new(AtomicBool::new(false));
    let io = |source| ServeError::Io {
        what: "installing signal handlers",
        source,
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone()).map_err(io)?;
        signal_hook::flag::register(sig, stop.clone()).map_err(io)?;
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

/// Bind the server's listening socket. All worker threads share this one socket (each port
/// watches it, epoll workers each poll it), so no `SO_REUSEPORT` is needed — and without it a
/// second server on the address is refused, and a restart cannot silently share the port with
/// the listener of a killed predecessor that the kernel has not torn down yet. While the
/// address is still taken, retry for a few seconds.
fn bind_listener(addr: SocketAddr) -> Result<TcpListener, ServeError> {
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
            Err(source) => return Err(ServeError::Listen { addr, source }),
        }
    }
}

/// Serve `proto` with `cfg` until SIGINT/SIGTERM: the store (if any) is shared by every worker,
/// and each batch is group-committed before its replies leave.
pub fn serve<P: Protocol>(
    cfg: &ServeConfig,
    pool: Arc<Pool>,
    proto: Arc<P>,
    store: Option<Arc<SharedStore>>,
    retention: Retention,
) -> Result<(), ServeError> {
    let stop = stop_flag()?;
    serve_until(cfg, pool, proto, store, retention, stop)
}

/// [`serve`] until `stop` is set.
pub fn serve_until<P: Protocol>(
    cfg: &ServeConfig,
    pool: Arc<Pool>,
    proto: Arc<P>,
    store: Option<Arc<SharedStore>>,
    retention: Retention,
    stop: Arc<AtomicBool>,
) -> Result<(), ServeError> {
    let stats = match &cfg.stats_file {
        Some(p) => Some(Arc::new(StatsFile::create(p, cfg.threads).map_err(
            |source| ServeError::Io {
                what: "creating the stats file",
                source,
            },
        )?)),
        None => None,
    };
    let threads = cfg.threads.max(1);
    let listener = bind_listener(cfg.addr)?;
    let parts = pool.geometry().partitions(threads as u32);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (t, part) in parts.into_iter().enumerate() {
        let cpu = (!cfg.cpu.is_empty()).then(|| cfg.cpu[t % cfg.cpu.len()]);
        let ready_tx = ready_tx.clone();
        let (engine, port_cfg, limits, pool) = (cfg.engine, cfg.port, cfg.limits, pool.clone());
        let fsync = pool.persist_mode() == pst::PersistMode::Fsync;
        let (proto, store) = (proto.clone(), store.clone());
        let ctx = WorkerCtx {
            index: t,
            stop: stop.clone(),
            stats: stats.clone(),
            metrics: proto.metrics().clone(),
        };
        let listener = listener.try_clone().map_err(|source| ServeError::Io {
            what: "sharing the listener",
            source,
        })?;
        let spawned = std::thread::Builder::new().name(format!("pst-{t}")).spawn(
            move || -> Result<(), ServeError> {
                if let Some(c) = cpu {
                    pin_to(c);
                }
                match engine {
                    Engine::Uring => {
                        // Created on its own thread: the ring is SINGLE_ISSUER | DEFER_TASKRUN,
                        // bound to the thread that creates it.
                        let port = Port::with_live(pool, part, port_cfg, |b| {
                            store.as_ref().is_some_and(|s| s.holds(b)) as u16
                        })
                        .map_err(|source| ServeError::Io {
                            what: "creating the io_uring port",
                            source,
                        })?;
                        let _ = ready_tx.send(());
                        crate::uring::serve(port, listener, &ctx, proto, store, retention, limits)
                    }
                    Engine::Epoll => {
                        let claim = pool.claim(part).map_err(|e| ServeError::Io {
                            what: "claiming the worker's buffers",
                            source: std::io::Error::other(e),
                        })?;
                        let bufs = pst::Buffers::new(claim, |b| {
                            store.as_ref().is_some_and(|s| s.holds(b)) as u16
                        });
                        let _ = ready_tx.send(());
                        crate::epoll::serve(
                            listener, &ctx, proto, bufs, store, retention, limits, fsync,
                        )
                    }
                }
            },
        );
        handles.push(spawned.map_err(|source| ServeError::Io {
            what: "spawning a worker thread",
            source,
        })?);
    }
    drop(ready_tx);
    for _ in 0..threads {
        let _ = ready_rx.recv();
    }
    tracing::info!(addr = %cfg.addr, engine = %cfg.engine, threads, pool = %pool.path().map_or("(anonymous)".into(), |p| p.display().to_string()), persist = %pool.persist_mode(), "serving; Ctrl-C to stop");
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
                result = Err(ServeError::WorkerPanicked);
            }
        }
    }
    // Every worker stopped cleanly: seal the log, so that damage to its last records is
    // refused at the next start instead of passing for a torn tail (pst_store's format docs).
    if let (Ok(()), Some(store)) = (&result, &store) {
        match store.lock().store.seal() {
            Ok(sealed) => tracing::debug!(sealed, "log sealed for a clean shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "could not seal the log (the next start treats its end as a possible torn tail)")
            }
        }
    }
    if let Err(e) = pool.barrier() {
        tracing::error!(error = %e, "final pool sync failed");
    }
    tracing::info!("stopped");
    result
}
