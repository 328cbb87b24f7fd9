//! The durable log as a stream (issue 13): one client POSTs 100,000 records to `pst httpd
//! --store wal` while another follows the log with long polls (`GET /log?from=SEQ&wait=MS`).
//! Halfway the server is killed with SIGKILL and restarted on the same pool; both clients
//! reconnect and resume (the producer re-sends what was not acknowledged, the consumer reads
//! from its next sequence number). Checked, on both engines: the consumer sees a gap-free,
//! strictly ascending run of sequence numbers, and every acknowledged record exactly once, at
//! the sequence number its acknowledgement named.
mod common;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECORDS: u64 = 100_000;
/// Requests the producer keeps in flight on its connection.
const WINDOW: u64 = 64;

/// Connect, retrying while the server restarts (up to 30 s).
fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            return (s, r);
        }
        assert!(Instant::now() < deadline, "server did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parse a `GET /log` body: `SEQ LEN\r\n` payload `\r\n`, repeated.
fn parse_records(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("record line");
        let line = std::str::from_utf8(&b[..nl]).unwrap();
        let (seq, len) = line.split_once(' ').expect("SEQ LEN");
        let (seq, len): (u64, usize) = (seq.parse().unwrap(), len.parse().unwrap());
        let payload = b[nl + 2..nl + 2 + len].to_vec();
        assert_eq!(
            &b[nl + 2 + len..nl + 4 + len],
            b"\r\n",
            "record ends in CRLF"
        );
        out.push((seq, payload));
        b = &b[nl + 4 + len..];
    }
    out
}

/// The producer: records `rec-I-tT` (T counts attempts, so a re-sent record is distinct from
/// an unacknowledged copy that may have persisted). Returns payload → acknowledged seq.
fn produce(addr: SocketAddr, acked: Arc<AtomicU64>) -> HashMap<Vec<u8>, u64> {
    let mut got = HashMap::new();
    let mut next = 0u64; // first record not yet acknowledged
    let mut attempt = 0u32;
    'conn: loop {
        attempt += 1;
        let (mut s, mut r) = connect(addr);
        while next < RECORDS {
            let end = (next + WINDOW).min(RECORDS);
            let mut batch = Vec::new();
            let mut payloads = Vec::new();
            for i in next..end {
                let p = format!("rec-{i}-t{attempt}");
                let _ = write!(
                    batch,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{p}",
                    p.len()
                );
                payloads.push(p.into_bytes());
            }
            if s.write_all(&batch).is_err() {
                continue 'conn;
            }
            for p in payloads {
                match common::read_http(&mut r, false) {
                    Ok(resp) if resp.status == 200 => {
                        let seq: u64 = resp.header("pst-seq").expect("Pst-Seq").parse().unwrap();
                        got.insert(p, seq);
                        next += 1;
                        acked.store(next, Ordering::Relaxed);
                    }
                    Ok(resp) => panic!(
                        "POST refused: {} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ),
                    Err(_) => continue 'conn,
                }
            }
        }
        return got;
    }
}

/// The consumer: follows the log from seq 1 with long polls until it has seen `last`.
fn consume(addr: SocketAddr, done: Arc<AtomicBool>, last: Arc<AtomicU64>) -> Vec<(u64, Vec<u8>)> {
    let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut from = 1u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    'conn: loop {
        let (mut s, mut r) = connect(addr);
        loop {
            if Instant::now() > deadline {
                panic!(
                    "consumer did not catch up: from {from}, last acked {}, producer done {}",
                    last.load(Ordering::Acquire),
                    done.load(Ordering::Acquire)
                );
            }
            if done.load(Ordering::Acquire) && from > last.load(Ordering::Acquire) {
                return seen;
            }
            let req = format!("GET /log?from={from}&max=5000&wait=500 HTTP/1.1\r\nHost: x\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                continue 'conn;
            }
            let Ok(resp) = common::read_http(&mut r, false) else {
                continue 'conn; // the server is restarting: reconnect, resume from `from`
            };
            assert_eq!(resp.status, 200);
            let recs = parse_records(&resp.body);
            let h = |n: &str| -> u64 { resp.header(n).expect(n).parse().unwrap() };
            assert_eq!(h("pst-records") as usize, recs.len());
            let first = h("pst-first-seq");
            assert!(first <= from, "records before {first} were dropped unread");
            let next = h("pst-next-seq");
            if let Some((s, _)) = recs.last() {
                assert_eq!(next, s + 1);
            }
            seen.extend(recs);
            from = next;
        }
    }
}

fn follow(engine: &str) {
    let dir = common::tmpdir(&format!("log-follow-{engine}"));
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap();
    let addr = common::free_addr();
    let args = [
        "httpd",
        "--engine",
        engine,
        "--store",
        "wal",
        "--pool",
        p,
        "--pool-size",
        "512MiB",
        "--persist",
        "fsync",
    ];
    let mut s = common::ServerProc::start(&args, addr);
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let producer = {
        let acked = acked.clone();
        std::thread::spawn(move || produce(addr, acked))
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let (done, last, seen) = (done.clone(), last.clone(), seen.clone());
        std::thread::spawn(move || {
            let v = consume(addr, done, last);
            *seen.lock().unwrap() = v;
        })
    };
    // Kill the server halfway, restart it on the same pool.
    let t0 = Instant::now();
    while acked.load(Ordering::Relaxed) < RECORDS / 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "producer stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let _s = common::ServerProc::start(&args, addr);
    let produced = producer.join().expect("producer");
    last.store(produced.values().copied().max().unwrap(), Ordering::Release);
    done.store(true, Ordering::Release);
    consumer.join().expect("consumer");
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    assert_eq!(produced.len() as u64, RECORDS);
    for w in seen.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "sequence numbers ascend without gaps");
    }
    let mut at: HashMap<&[u8], Vec<u64>> = HashMap::new();
    for (seq, p) in &seen {
        at.entry(p.as_slice()).or_default().push(*seq);
    }
    for (p, seq) in &produced {
        assert_eq!(
            at.get(p.as_slice()),
            Some(&vec![*seq]),
            "acknowledged record {} seen exactly once, at its seq",
            String::from_utf8_lossy(p)
        );
    }
}

#[test]
fn producer_and_long_polling_consumer_across_kill9_uring() {
    follow("uring");
}

#[test]
fn producer_and_long_polling_consumer_across_kill9_epoll() {
    follow("epoll");
}

/// Found by review: a client that half-closes after its long poll (`shutdown(SHUT_WR)`) gets
/// the answer at once, and the requests pipelined behind it too, instead of a silent close.
fn half_closed_poll(engine: &str) {
    use std::io::Read;
    let dir = common::tmpdir(&format!("log-halfclose-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let _s = common::ServerProc::start(
        &[
            "httpd",
            "--engine",
            engine,
            "--store",
            "wal",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "32MiB",
        ],
        addr,
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /log?from=1&wait=20000 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100)); // parked by now
    let t0 = Instant::now();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered at the half-close, not at the deadline"
    );
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("Pst-Records: 0"),
        "{out}"
    );
    assert_eq!(
        out.matches("HTTP/1.1 200").count(),
        2,
        "the request behind it too: {out}"
    );
}

#[test]
fn half_closed_long_poll_is_answered_uring() {
    half_closed_poll("uring");
}

#[test]
fn half_closed_long_poll_is_answered_epoll() {
    half_closed_poll("epoll");
}

/// A WAL on a small pool is a bounded log (phttpd's circular one): appends never stop, the
/// oldest records go. On a 1 MiB pool (four log segments) every append after the 510th got
/// 507 on both engines: retention dropped the oldest segment only below a quarter of the
/// segments free, which four segments never reach before appends (which keep three free)
/// are refused.
fn small_pool_keeps_appending(engine: &str) {
    let dir = common::tmpdir(&format!("log-small-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let _s = common::ServerProc::start(
        &[
            "httpd",
            "--engine",
            engine,
            "--store",
            "wal",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "1MiB",
        ],
        addr,
    );
    let (mut s, mut r) = connect(addr);
    const N: usize = 3000;
    for i in 0..N {
        let body = format!("{i:06}{}", "x".repeat(1018));
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let resp = common::read_http(&mut r, false).unwrap();
        assert_eq!(resp.status, 200, "{engine}: POST {i}");
    }
    write!(s, "GET /log?from=0&max=10000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = common::read_http(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    let recs = parse_records(&resp.body);
    assert!(recs.len() > 50, "{engine}: {} records kept", recs.len());
    // The newest ones, gap-free up to the last.
    let last = recs.last().unwrap();
    assert_eq!(last.0, N as u64, "{engine}");
    assert!(last.1.starts_with(format!("{:06}", N - 1).as_bytes()));
    assert!(recs.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{engine}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn small_pool_keeps_appending_uring() {
    small_pool_keeps_appending("uring");
}

#[test]
fn small_pool_keeps_appending_epoll() {
    small_pool_keeps_appending("epoll");
}
