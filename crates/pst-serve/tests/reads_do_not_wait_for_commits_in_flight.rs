//! The uring engine's pipelined group commit, with the commit held in flight
//! (`SharedStore::hold_commits`) so that nothing depends on timing: `pst kv` on a pool file in
//! fsync mode answers a `GET` of committed data while a commit is in flight, holds the reply of
//! the write being committed and of a `GET` of that write (on another connection), keeps a
//! connection's replies in order (a read pipelined behind a held write waits), and lets them
//! all go once the commit finishes. With two workers, the connections spread over both ports:
//! the held replies of one are released by the other's commit (woken through `MSG_RING`).
//!
//! "Not answered" is checked without a clock: the server counts a request before the round that
//! handled it ends, and a reply is sent by the next round's `io_uring_enter` — so once the count
//! shows the request handled and a later request on another connection of the same worker has
//! been answered, a reply that was not held would already sit in the socket.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst_serve::kv::KvService;
use pst_serve::{Protocol, Retention};

/// Generous bound on anything that must happen (a hang is a failure, not a measurement).
const LIVENESS: Duration = Duration::from_secs(30);

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Length of the first complete RESP reply in `b` (simple strings, errors, integers, bulk).
fn reply_len(b: &[u8]) -> Option<usize> {
    let line = b.windows(2).position(|w| w == b"\r\n")? + 2;
    match b.first()? {
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..line - 2]).ok()?.parse().ok()?;
            if n < 0 {
                return Some(line);
            }
            let end = line + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        _ => Some(line),
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let deadline = Instant::now() + LIVENESS;
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(LIVENESS)).unwrap();
                    return Client { s, buf: Vec::new() };
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting: {e}"),
            }
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.s.write_all(&cmd(args)).unwrap();
    }

    /// The next reply (blocking, bounded by `LIVENESS`).
    fn reply(&mut self) -> Vec<u8> {
        loop {
            if let Some(n) = reply_len(&self.buf) {
                return self.buf.drain(..n).collect();
            }
            let mut b = [0u8; 4096];
            let n = self
                .s
                .read(&mut b)
                .expect("a reply within the liveness bound");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(args);
        self.reply()
    }

    /// True when no reply byte has arrived (non-blocking look).
    fn silent(&mut self) -> bool {
        self.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4096];
        let r = self.s.read(&mut b);
        self.s.set_nonblocking(false).unwrap();
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.buf.is_empty(),
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                false
            }
            Err(e) => panic!("{e}"),
        }
    }
}

type Server = common::InProcess<KvService>;

/// What these tests ask of the server.
trait Probe {
    fn requests(&self) -> u64;
    fn wait_requests(&self, n: u64);
    fn wait_commit_in_flight(&self);
}

impl Probe for Server {
    fn requests(&self) -> u64 {
        self.proto.metrics().totals().requests
    }

    /// Wait until the server has handled `n` requests in all.
    fn wait_requests(&self, n: u64) {
        let deadline = Instant::now() + LIVENESS;
        while self.requests() < n {
            assert!(Instant::now() < deadline, "server stuck below {n} requests");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Wait until a commit covering everything written so far is in flight.
    fn wait_commit_in_flight(&self) {
        let deadline = Instant::now() + LIVENESS;
        loop {
            {
                let g = self.store.lock();
                if g.store.commit_in_flight() == Some(g.store.next_seq()) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no commit begun");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn scenario(threads: usize, check_silence: bool) {
    let srv = Server::start(
        "commit-in-flight",
        threads,
        Arc::new(KvService::new(1 << 20, None)),
        Retention::Compact,
    );
    let mut a = Client::connect(srv.addr);
    assert_eq!(a.call(&[b"SET", b"old", b"v0"]), b"+OK\r\n");
    // Everything before this point is committed: +OK left after its commit.
    let mut b = Client::connect(srv.addr);
    let mut c = Client::connect(srv.addr);
    let mut d = Client::connect(srv.addr);
    assert_eq!(b.call(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.call(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(d.call(&[b"PING"]), b"+PONG\r\n");

    srv.store.hold_commits(true);
    let base = srv.requests();
    a.send(&[b"SET", b"new", b"v1"]);
    srv.wait_requests(base + 1);
    srv.wait_commit_in_flight();

    // Committed data is answered while the commit is in flight, on any connection.
    assert_eq!(b.call(&[b"GET", b"old"]), b"$2\r\nv0\r\n");
    // A read of the write being committed waits for it; so does a read pipelined behind a
    // write on the same connection.
    // (The read is sent once the write was handled: a separate request, not one chunk.)
    c.send(&[b"GET", b"new"]);
    d.send(&[b"SET", b"other", b"v2"]);
    srv.wait_requests(base + 4);
    d.send(&[b"GET", b"old"]);
    srv.wait_requests(base + 5);
    assert_eq!(b.call(&[b"GET", b"old"]), b"$2\r\nv0\r\n");
    if check_silence {
        assert!(
            a.silent(),
            "a write was acknowledged before its commit completed"
        );
        assert!(c.silent(), "a read of uncommitted data was answered");
        assert!(d.silent(), "a read overtook a held write on its connection");
    }

    srv.store.hold_commits(false);
    assert_eq!(a.reply(), b"+OK\r\n");
    assert_eq!(c.reply(), b"$2\r\nv1\r\n");
    assert_eq!(d.reply(), b"+OK\r\n");
    assert_eq!(d.reply(), b"$2\r\nv0\r\n");
    // And everything keeps working afterwards, on every connection.
    for (cl, v) in [
        (&mut a, &b"a"[..]),
        (&mut b, b"b"),
        (&mut c, b"c"),
        (&mut d, b"d"),
    ] {
        assert_eq!(cl.call(&[b"SET", b"k", v]), b"+OK\r\n");
        assert_eq!(cl.call(&[b"GET", b"k"]), [b"$1\r\n", v, b"\r\n"].concat());
    }
}

#[test]
fn one_worker_reads_of_committed_data_do_not_wait() {
    scenario(1, true);
}

#[test]
fn two_workers_release_each_others_held_replies() {
    // Connections spread over both ports: silence cannot be checked across workers (their
    // rounds are not ordered), but every held reply must be released by whichever worker's
    // port completes the commit.
    for _ in 0..5 {
        scenario(2, false);
    }
}

/// Answers from the service's in-memory tables (hash fields, set members, deadlines) have no
/// record of their own to depend on: they too wait for the commit of what they show — here a
/// new field of a hash and a deadline of a key that were both committed before.
#[test]
fn reads_of_fields_members_and_deadlines_wait_for_their_commit() {
    let srv = Server::start(
        "commit-in-flight",
        1,
        Arc::new(KvService::new(1 << 20, None)),
        Retention::Compact,
    );
    let mut a = Client::connect(srv.addr);
    let mut b = Client::connect(srv.addr);
    let mut c = Client::connect(srv.addr);
    assert_eq!(a.call(&[b"SET", b"old", b"v0"]), b"+OK\r\n");
    assert_eq!(a.call(&[b"HSET", b"h", b"f1", b"v"]), b":1\r\n");
    assert_eq!(a.call(&[b"SADD", b"s", b"m1"]), b":1\r\n");
    assert_eq!(b.call(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.call(&[b"PING"]), b"+PONG\r\n");

    // The three writes in one EXEC: one round, so one commit covers them all.
    assert_eq!(a.call(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&[b"HSET", b"h", b"f2", b"v"]), b"+QUEUED\r\n");
    assert_eq!(a.call(&[b"SADD", b"s", b"m2"]), b"+QUEUED\r\n");
    assert_eq!(a.call(&[b"EXPIRE", b"old", b"1000"]), b"+QUEUED\r\n");
    srv.store.hold_commits(true);
    let base = srv.requests();
    a.send(&[b"EXEC"]);
    srv.wait_requests(base + 1);
    srv.wait_commit_in_flight();
    let queries: [&[&[u8]]; 4] = [
        &[b"HLEN", b"h"],
        &[b"SCARD", b"s"],
        &[b"SISMEMBER", b"s", b"m2"],
        &[b"TTL", b"old"],
    ];
    for (i, q) in queries.iter().enumerate() {
        c.send(q);
        srv.wait_requests(base + 2 + i as u64);
    }
    // A later request on another connection of the same worker is answered: the held
    // replies would be in the socket by now if they had not been held.
    assert_eq!(b.call(&[b"GET", b"old"]), b"$2\r\nv0\r\n");
    assert!(a.silent(), "writes acknowledged before their commit");
    assert!(
        c.silent(),
        "a field, member or deadline was shown before its commit"
    );

    srv.store.hold_commits(false);
    assert_eq!(a.reply(), b"*3\r\n");
    assert_eq!(a.reply(), b":1\r\n");
    assert_eq!(a.reply(), b":1\r\n");
    assert_eq!(a.reply(), b":1\r\n");
    assert_eq!(c.reply(), b":2\r\n");
    assert_eq!(c.reply(), b":2\r\n");
    assert_eq!(c.reply(), b":1\r\n");
    let ttl = String::from_utf8(c.reply()).unwrap();
    assert!(ttl.starts_with(":99") || ttl == ":1000\r\n", "{ttl}");
}
