//! Heap allocations per request at steady state, counted by a global allocator in this test
//! binary: `pst kv` (and `pst httpd --store wal`) on the uring engine (in-process, `--persist fsync` on a pool file), one
//! client doing `SET` or `GET` round trips with a pre-built request and a fixed reply buffer.
//! Only the server's threads are counted (the client's thread is excluded by a thread-local
//! flag). Steady state allocates nothing: reply bytes are recycled per thread, the key is read
//! into a kept buffer, extent lists of one or two extents live inline, the framer's argument
//! lists and the connection's queues are reused. `PST_ALLOC_TRACE=1` prints where any
//! allocation comes from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::InProcess;
use pst_serve::http::{HttpService, StoreMode};
use pst_serve::kv::KvService;
use pst_serve::Retention;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

static TRACE: AtomicBool = AtomicBool::new(false);
static SITES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// One test at a time: the count is process-wide, so another test's server threads would be
/// counted in this one's window.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static EXCLUDED: Cell<bool> = const { Cell::new(false) };
}

/// With `PST_ALLOC_TRACE` set: remember where a counted allocation came from (the backtrace
/// allocates, so the thread is excluded meanwhile).
fn trace() {
    if TRACE.load(Ordering::Relaxed) {
        EXCLUDED.with(|e| e.set(true));
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = bt
            .lines()
            .filter(|l| {
                l.trim_start().starts_with(|c: char| c.is_ascii_digit())
                    && !l.contains("allocations_per_request")
                    && !l.contains("backtrace")
                    && !l.contains("alloc::")
            })
            .take(6)
            .collect();
        SITES.lock().unwrap().push(frames.join(" <- "));
        EXCLUDED.with(|e| e.set(false));
    }
}

// SAFETY: defers to the system allocator; the counter is a relaxed atomic add, and the
// thread-local read cannot allocate (a const-initialised `Cell<bool>`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !EXCLUDED.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            trace();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if !EXCLUDED.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            trace();
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// `n` round trips of `req`, each reply read whole (`reply_len` bytes) into a fixed buffer.
fn round_trips(s: &mut TcpStream, req: &[u8], reply_len: usize, n: usize) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(req).unwrap();
        let mut got = 0;
        while got < reply_len {
            let k = s.read(&mut buf[got..]).unwrap();
            assert!(k > 0, "server closed");
            got += k;
        }
        assert_eq!(got, reply_len, "{:?}", String::from_utf8_lossy(&buf[..got]));
    }
}

#[test]
fn uring_kv_allocations_per_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    EXCLUDED.with(|e| e.set(true));
    let proto = Arc::new(KvService::new(1 << 20, None));
    let srv = InProcess::start("allocs-kv", 1, proto, Retention::Compact);
    let mut s = srv.connect();
    let value = vec![b'v'; 1024];
    let set = cmd(&[b"SET", b"key:000042", &value]);
    let get = cmd(&[b"GET", b"key:000042"]);
    let get_reply = format!("${}\r\n", value.len()).len() + value.len() + 2;
    const N: usize = 5000;
    let mut figures = Vec::new();
    for (what, req, reply_len) in [("SET", &set, 5), ("GET", &get, get_reply)] {
        round_trips(&mut s, req, reply_len, N); // warm-up: tables and buffers at size
        let before = ALLOCS.load(Ordering::Relaxed);
        round_trips(&mut s, req, reply_len, N);
        let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64;
        println!("uring kv {what} 1 KiB, persist fsync: {per:.3} allocations per request");
        if std::env::var_os("PST_ALLOC_TRACE").is_some() {
            TRACE.store(true, Ordering::Relaxed);
            round_trips(&mut s, req, reply_len, 100);
            TRACE.store(false, Ordering::Relaxed);
            let mut sites = std::mem::take(&mut *SITES.lock().unwrap());
            sites.sort();
            let mut counted: Vec<(usize, String)> = Vec::new();
            for site in sites {
                match counted.last_mut() {
                    Some((n, s)) if *s == site => *n += 1,
                    _ => counted.push((1, site)),
                }
            }
            counted.sort_by_key(|b| std::cmp::Reverse(b.0));
            for (n, site) in counted {
                println!("  {:>5.2}/req  {site}", n as f64 / 100.0);
            }
        }
        figures.push((what, per));
    }
    drop(s);
    srv.stop();
    for (what, per) in figures {
        // None per request at steady state (the target): 0.000 over 40,000 requests.
        // The slack is for growth still going on in this shorter window (the log's record
        // queue, recycled lists filling up: 0.002-0.009). One allocation per request reads
        // 1.0, and so does one per commit (this client waits for each reply).
        let bound = 0.05;
        assert!(
            per <= bound,
            "{what}: {per:.2} allocations per request (bound {bound})"
        );
    }
}

/// One HTTP response (head and `Content-Length` body) read from `s`, into `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .unwrap()
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                assert!(head.starts_with("http/1.1 2"), "{head}");
                return;
            }
        }
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0, "server closed");
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// The `wal` path: `pst httpd --store wal`, `POST /` of a 1 KiB body appended to the log.
#[test]
fn uring_wal_allocations_per_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let proto = Arc::new(HttpService::new(StoreMode::Wal, 1 << 20, None));
    EXCLUDED.with(|e| e.set(true));
    let srv = InProcess::start("allocs-wal", 1, proto, Retention::Wal);
    let mut s = srv.connect();
    let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'v'; 1024]);
    let mut buf = Vec::with_capacity(8192);
    let mut posts = |n: usize| {
        for _ in 0..n {
            s.write_all(&req).unwrap();
            read_response(&mut s, &mut buf);
        }
    };
    const N: usize = 5000;
    posts(N); // warm-up
    let before = ALLOCS.load(Ordering::Relaxed);
    posts(N);
    let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64;
    println!("uring wal POST 1 KiB, persist fsync: {per:.3} allocations per request");
    if std::env::var_os("PST_ALLOC_TRACE").is_some() {
        TRACE.store(true, Ordering::Relaxed);
        posts(100);
        TRACE.store(false, Ordering::Relaxed);
        let mut sites = std::mem::take(&mut *SITES.lock().unwrap());
        sites.sort();
        sites.dedup();
        for site in sites {
            println!("  {site}");
        }
    }
    drop(s);
    srv.stop();
    // 5.0 in session 8 (reply bytes, head parse twice, the framed-events vector, the
    // `Pst-Seq` header's string); 0.001 once those reuse memory (session 9). Same bound as
    // the kv path: a stray allocation per request fails it.
    let bound = 0.05;
    assert!(
        per <= bound,
        "{per:.2} allocations per POST (bound {bound})"
    );
}
