//! An in-process server for the pst-serve tests: the uring engine over a 32 MiB pool file with
//! `--persist fsync`, in a temporary directory, on a free loopback port.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pst::{Geometry, PersistMode, Pool, PoolOptions};
use pst_serve::{open_store, Protocol, Retention, ServeConfig, SharedStore};

/// A server of `P` running on its own thread until stopped (or dropped).
pub struct InProcess<P> {
    pub addr: SocketAddr,
    pub store: Arc<SharedStore>,
    pub proto: Arc<P>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: std::path::PathBuf,
}

impl<P: Protocol> InProcess<P> {
    /// Serve `proto` with `threads` workers and `retention`; `name` names the directory.
    pub fn start(name: &str, threads: usize, proto: Arc<P>, retention: Retention) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pst-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = PoolOptions {
            geometry: Geometry::for_size(32 << 20, 2048).unwrap(),
            persist: PersistMode::Fsync,
            ..PoolOptions::default()
        };
        let pool = Arc::new(Pool::open(&dir.join("pool"), &opts).unwrap());
        let store = open_store(&pool, threads, false).unwrap();
        // One start at a time, until the server listens: the free port is found by binding
        // and dropping a listener, so a test starting meanwhile could draw the same one (seen
        // in CI: one server failed to listen and its test talked to another test's server).
        static STARTING: Mutex<()> = Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cfg = ServeConfig::new(addr);
        cfg.threads = threads;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p, st) = (store.clone(), proto.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            pst_serve::serve_until(&cfg, pool, p, Some(s), retention, st).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                !thread.is_finished(),
                "the server thread ended before listening"
            );
            assert!(Instant::now() < deadline, "the server did not listen");
            std::thread::sleep(Duration::from_millis(5));
        }
        InProcess {
            addr,
            store,
            proto,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    /// A connection to it, retried until it listens; 30 s read timeout, no Nagle.
    pub fn connect(&self) -> TcpStream {
        let s = loop {
            match TcpStream::connect(self.addr) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Stop it and check that its thread ended without a panic or an error.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().unwrap();
    }
}

impl<P> Drop for InProcess<P> {
    fn drop(&mut self) {
        self.store.hold_commits(false);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
