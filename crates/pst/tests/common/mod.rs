//! Shared helpers for the port scenario tests: a port echo server on a thread.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pst::{Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};

pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<pst::PortStats>>,
}

impl EchoServer {
    /// An echo server over an anonymous pool of `bufs` buffers of `buf_size` bytes.
    pub fn start(bufs: u32, buf_size: u32) -> EchoServer {
        let pool = Arc::new(
            Pool::anonymous(
                Geometry {
                    buf_size,
                    buf_count: bufs,
                    log_len: 0,
                },
                PersistMode::None,
            )
            .unwrap(),
        );
        Self::start_on(pool, PortConfig::default())
    }

    pub fn start_on(pool: Arc<Pool>, cfg: PortConfig) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut port = Port::whole(pool, cfg).unwrap();
            let addr = port.listen("127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send(addr).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                port.sync(Some(Duration::from_millis(5))).unwrap();
                while let Some(s) = port.next_rx() {
                    match s.kind {
                        SlotKind::Data => {
                            let e = port.keep(&s).unwrap();
                            let _ = port.send(s.conn, e);
                        }
                        SlotKind::End | SlotKind::Error(_) => port.close(s.conn),
                        SlotKind::Accepted => {}
                    }
                }
            }
            port.stats()
        });
        let addr = rx.recv().unwrap();
        EchoServer {
            addr,
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> pst::PortStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Deterministic per-connection byte pattern.
pub fn pattern(conn: usize, i: usize) -> u8 {
    (conn.wrapping_mul(131) ^ i.wrapping_mul(7) ^ (i >> 8)) as u8
}

/// Remove what test processes that have exited left in the temp directory (`pst-test-<pid>-…`;
/// pools are allocated in full, so leftovers hold real disk space). Once per test process;
/// the directories of live ones, this one's included, are kept.
fn sweep_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("pst-test-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// A fresh temp directory for test `name`; returns the pool path inside it.
pub fn tmp_pool(name: &str) -> std::path::PathBuf {
    sweep_stale_dirs();
    let d = std::env::temp_dir().join(format!("pst-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("pool")
}

/// Options for a small (1 MiB) file pool.
pub fn small_pool_opts() -> pst::PoolOptions {
    pst::PoolOptions {
        geometry: Geometry::for_size(1 << 20, 2048).unwrap(),
        ..pst::PoolOptions::default()
    }
}
