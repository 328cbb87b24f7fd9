//! A pool full of live data refuses writes and keeps serving (DESIGN §4): `pst kv` answers
//! `-OOM …` to a write it cannot hold, while PING, GET, DBSIZE, DEL, INFO and FLUSHALL keep
//! working on new connections, and deleted space is writable again; a restart on the full pool
//! serves too. `pst httpd --store kv` answers 507, keeps answering GET and DELETE (also after
//! `kill -9` on the full pool) and takes writes again once half is deleted. Both engines.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

fn con(addr: std::net::SocketAddr) -> redis::Connection {
    let c = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let con = c.get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

/// SET 3,000-byte values until the server refuses; returns how many were stored.
fn fill(c: &mut redis::Connection) -> usize {
    let v = vec![b'x'; 3000];
    for i in 0..20_000 {
        let r: redis::RedisResult<String> = redis::cmd("SET").arg(format!("k{i}")).arg(&v).query(c);
        match r {
            Ok(ok) => assert_eq!(ok, "OK"),
            Err(e) => {
                assert!(e.to_string().contains("OOM"), "refused with {e}");
                return i;
            }
        }
    }
    panic!("a 16 MiB pool took 20,000 values of 3,000 bytes");
}

/// `SET <prefix><n> <value>`, pipelined 100 per round trip, until the first refusal (which must
/// be the OOM error); returns how many were stored.
fn fill_pipelined(c: &mut redis::Connection, prefix: &str, value: &[u8], engine: &str) -> usize {
    let mut stored = 0;
    for batch in 0..10_000 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for i in 0..100 {
            pipe.cmd("SET")
                .arg(format!("{prefix}{}", batch * 100 + i))
                .arg(value);
        }
        let replies: Vec<redis::Value> = pipe.query(c).unwrap();
        let mut refused = false;
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                redis::Value::Okay if !refused => stored += 1,
                // At the edge of a full pool, free buffers come and go with the receive ring
                // and replies in flight: a write after the first refusal may still fit. Keep
                // the stored keys the prefix counted.
                redis::Value::Okay => {
                    let k = format!("{prefix}{}", batch * 100 + i);
                    let _: i64 = redis::cmd("DEL").arg(k).query(c).unwrap();
                }
                redis::Value::ServerError(e) => {
                    assert!(format!("{e:?}").contains("OOM"), "{engine}: {e:?}");
                    refused = true;
                }
                other => panic!("{engine}: {other:?}"),
            }
        }
        if refused {
            return stored;
        }
    }
    panic!("{engine}: a 16 MiB pool took a million values");
}

fn still_serves(addr: std::net::SocketAddr, stored: usize) {
    let mut c = con(addr);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let v: Vec<u8> = redis::cmd("GET").arg("k0").query(&mut c).unwrap();
    assert_eq!(v.len(), 3000);
    let n: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, stored);
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("# Keyspace"));
}

#[test]
fn kv_full_pool() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("full-kv-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let args = [
            "kv",
            "--engine",
            engine,
            "--pool",
            p,
            "--pool-size",
            "16MiB",
        ];
        let addr = common::free_addr();
        let mut s = common::ServerProc::start(&args, addr);
        let mut c = con(addr);
        let stored = fill(&mut c);
        assert!(stored > 1000, "{engine}: only {stored} values fit");
        // The refusal is the Redis OOM error, verbatim.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(format!("SET extra {}\r\n", "y".repeat(3000)).as_bytes())
            .unwrap();
        let mut buf = [0u8; 128];
        let n = raw.read(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("-{OOM}\r\n"),
            "{engine}"
        );
        // Hash fields and deadlines take space too: they reach the same OOM refusal (without
        // the check they would keep eating the buffers kept for receiving).
        for what in ["HSET", "EXPIRE"] {
            let mut refused = false;
            for i in 0..10_000 {
                let r: redis::RedisResult<i64> = match what {
                    "HSET" => redis::cmd("HSET")
                        .arg("h")
                        .arg(format!("f{i}"))
                        .arg("v")
                        .query(&mut c),
                    _ => redis::cmd("EXPIRE")
                        .arg(format!("k{i}"))
                        .arg(1000)
                        .query(&mut c),
                };
                if let Err(e) = r {
                    assert!(e.to_string().contains("OOM"), "{engine} {what}: {e}");
                    refused = true;
                    break;
                }
            }
            assert!(refused, "{engine}: {what} never refused on a full pool");
        }
        let hash: usize = redis::cmd("EXISTS").arg("h").query(&mut c).unwrap();
        still_serves(addr, stored + hash);

        // Restart on the full pool: it comes up and serves.
        assert!(s.term().success());
        let addr = common::free_addr();
        let mut s = common::ServerProc::start(&args, addr);
        // The hash, if a field of it fitted before the refusal, was acknowledged: it is back.
        still_serves(addr, stored + hash);

        // Deleting makes room again at once: a deleted value's buffers come back when its
        // delete commits, not when the cleaner retires the record (before, it took about a
        // thousand deletes on a full pool). Ten values make room for one more.
        let mut c = con(addr);
        for i in 0..10 {
            let _: i64 = redis::cmd("DEL")
                .arg(format!("k{i}"))
                .query(&mut c)
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let r: redis::RedisResult<String> = redis::cmd("SET")
                .arg("again")
                .arg(vec![b'z'; 3000])
                .query(&mut c);
            match r {
                Ok(ok) => {
                    assert_eq!(ok, "OK");
                    break;
                }
                Err(e) => {
                    assert!(e.to_string().contains("OOM"), "{e}");
                    assert!(
                        Instant::now() < deadline,
                        "{engine}: deleted space never came back"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let ok: String = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        assert_eq!(ok, "OK");
        // FLUSHALL gave every buffer back: the pool takes about as many values again.
        let again = fill(&mut c);
        assert!(
            again + 10 >= stored,
            "{engine}: {again} after FLUSHALL, {stored} before"
        );
        assert!(s.term().success());
        common::assert_inspect_ok(p);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn httpd_full_pool_is_507() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("full-http-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let addr = common::free_addr();
        let args = [
            "httpd",
            "--engine",
            engine,
            "--store",
            "kv",
            "--pool",
            p,
            "--pool-size",
            "16MiB",
        ];
        let mut s = common::ServerProc::start(&args, addr);
        let body = "b".repeat(3000);
        let agent = ureq::Agent::new_with_defaults();
        let status = |method: &str, path: &str| -> u16 {
            let url = format!("http://{addr}{path}");
            let r = match method {
                "POST" => agent
                    .post(&url)
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .send(&body),
                "DELETE" => agent
                    .delete(&url)
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .call(),
                _ => agent
                    .get(&url)
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .call(),
            };
            r.unwrap().status().as_u16()
        };
        let mut stored = None;
        for i in 0..20_000 {
            match status("POST", &format!("/k{i}")) {
                201 => {}
                507 => {
                    stored = Some(i);
                    break;
                }
                s => panic!("{engine}: unexpected status {s}"),
            }
        }
        let stored = stored.unwrap_or_else(|| panic!("{engine}: never refused"));
        assert_eq!(status("GET", "/k0"), 200, "{engine}: reads keep working");
        // kill -9 and a restart on the full pool: reads, deletes, and after deleting half the
        // keys, writes again.
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        drop(s);
        let _s = common::ServerProc::start(&args, addr);
        assert_eq!(
            status("GET", "/k1"),
            200,
            "{engine}: reads after the restart"
        );
        // A restart may give back a few buffers (receive space of the old connections): top
        // up until refused again.
        let mut topped = 0;
        while status("POST", &format!("/top{topped}")) == 201 {
            topped += 1;
            assert!(
                topped < 200,
                "{engine}: a full pool took {topped} more after a restart"
            );
        }
        for i in 0..stored / 2 {
            let st = status("DELETE", &format!("/k{i}"));
            assert!(matches!(st, 200 | 204), "{engine}: DELETE /k{i}: {st}");
        }
        assert_eq!(status("GET", "/k0"), 404, "{engine}: deleted");
        let deadline = Instant::now() + Duration::from_secs(10);
        while status("POST", "/again") != 201 {
            assert!(
                Instant::now() < deadline,
                "{engine}: deleted space never came back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn kv_full_log_still_deletes() {
    // Small values, pipelined: the log fills before the buffers (uring packs them).
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("full-log-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let addr = common::free_addr();
        let _s = common::ServerProc::start(
            &[
                "kv",
                "--engine",
                engine,
                "--pool",
                p,
                "--pool-size",
                "16MiB",
            ],
            addr,
        );
        let mut c = con(addr);
        let stored = fill_pipelined(&mut c, "k", b"v", engine);
        assert!(stored > 1000, "{engine}: {stored}");
        // Refused writes, but deletes go through and space comes back.
        let n: i64 = redis::cmd("DEL")
            .arg("k0")
            .arg("k1")
            .arg("k2")
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 3, "{engine}: DEL on a full store");
        let pong: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(pong, "PONG");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A `DEL` of more keys than a full log has room to record is refused whole after its wait
/// (`-OOM …`, nothing deleted), like any Redis command: before, it ran at the deadline and
/// deleted about half its keys before failing. Smaller deletes then go through.
#[test]
fn kv_delete_too_big_for_a_full_log_deletes_nothing() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("big-del-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let addr = common::free_addr();
        let _s = common::ServerProc::start(
            &["kv", "--engine", engine, "--pool", p, "--pool-size", "8MiB"],
            addr,
        );
        let mut c = con(addr);
        // 100-byte values: the buffers and the log fill together, so the log cannot grow.
        let stored = fill_pipelined(&mut c, "k", &[b'v'; 100], engine);
        assert!(stored > 10_000, "{engine}: {stored}");
        // The refusal comes after the wait for space (5 s).
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut del = redis::cmd("DEL");
        for i in 0..stored {
            del.arg(format!("k{i}"));
        }
        let r: redis::RedisResult<i64> = del.query(&mut c);
        let e = r.expect_err("a full log recorded a tombstone for every key");
        assert!(
            e.to_string().contains("nothing was deleted"),
            "{engine}: {e}"
        );
        let n: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, stored, "{engine}: a refused DEL deleted keys");
        let n: i64 = redis::cmd("DEL").arg("k0").arg("k1").query(&mut c).unwrap();
        assert_eq!(n, 2, "{engine}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A log full of small values, after `kill -9` and a restart on it: deleting half the keys in
/// the order they were written (the oldest log segments empty first while the tombstones fill
/// the head), a quarter in pipelines of 1,000 and a quarter one request at a time, is never
/// refused, and writes are accepted again afterwards; filled again, `FLUSHALL` empties it (one clear record) and stays done after
/// `kill -9`. Before the cleaner's cost-benefit rule, `DEL` was refused from the second
/// delete on (it rotated the oldest segment at the first dead record and used up the free
/// segment deletes need) and the store could never be emptied.
#[test]
fn kv_full_log_empties_by_half_after_kill_9() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("full-log-half-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let args = [
            "kv",
            "--engine",
            engine,
            "--pool",
            p,
            "--pool-size",
            "16MiB",
            "--persist",
            "fsync",
        ];
        let addr = common::free_addr();
        let mut s = common::ServerProc::start(&args, addr);
        let mut c = con(addr);
        let value = vec![b'x'; 100];
        let stored = fill_pipelined(&mut c, "k", &value, engine);
        assert!(
            stored > 5000,
            "{engine}: only {stored} keys before the refusal"
        );
        drop(c);
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        drop(s);
        let s2 = common::ServerProc::start(&args, addr);
        let mut c = con(addr);
        let n: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, stored, "{engine}: keys after the restart");
        // The first quarter pipelined, 1,000 deletes at a time (about a segment of tombstones
        // per pipeline, on a log with two free segments): a delete the log has no room for
        // yet waits for the cleaner instead of being refused. Then a quarter one at a time.
        let keys: Vec<usize> = (0..stored / 4).collect();
        for part in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for k in part {
                pipe.cmd("DEL").arg(format!("k{k}"));
            }
            let replies: Vec<redis::Value> = pipe.query(&mut c).unwrap();
            for (k, r) in part.iter().zip(replies) {
                assert_eq!(r, redis::Value::Int(1), "{engine}: pipelined DEL k{k}");
            }
        }
        for k in stored / 4..stored / 2 {
            let r: redis::RedisResult<i64> = redis::cmd("DEL").arg(format!("k{k}")).query(&mut c);
            assert_eq!(
                r.ok(),
                Some(1),
                "{engine}: DEL k{k} of {stored} on a full log"
            );
        }
        for k in 0..100 {
            let r: redis::RedisResult<String> = redis::cmd("SET")
                .arg(format!("new{k}"))
                .arg(&value)
                .query(&mut c);
            assert_eq!(
                r.ok().as_deref(),
                Some("OK"),
                "{engine}: SET after deleting half"
            );
        }
        let v: Vec<u8> = redis::cmd("GET")
            .arg(format!("k{}", stored - 1))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, value, "{engine}: a kept key");
        // Full again, then FLUSHALL: one record, whatever the number of keys, and it survives
        // kill -9.
        fill_pipelined(&mut c, "r", &value, engine);
        let ok: String = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        assert_eq!(ok, "OK", "{engine}: FLUSHALL on a full log");
        drop(c);
        let mut s2 = s2;
        s2.child.kill().unwrap();
        s2.child.wait().unwrap();
        drop(s2);
        let _s = common::ServerProc::start(&args, addr);
        let mut c = con(addr);
        let n: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, 0, "{engine}: keys after FLUSHALL and kill -9");
        let ok: String = redis::cmd("SET")
            .arg("after")
            .arg(&value)
            .query(&mut c)
            .unwrap();
        assert_eq!(ok, "OK", "{engine}: SET after FLUSHALL");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A 1 MiB pool (a few hundred buffers) filled with 1 KiB values: writes are refused while
/// enough buffers stay free for the port to go on receiving. The write reserve was a sixteenth
/// of the buffers, below the port's own receive reserve in so small a pool: the uring engine
/// stopped receiving at about the 700th value and answered nobody, PING included.
#[test]
fn tiny_pool_filled_still_answers() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("tiny-full-{engine}"));
        let pool = dir.join("pool");
        let args = common::kv_args(engine, &pool, "1MiB", &[]);
        let addr = common::free_addr();
        let _s = common::ServerProc::start(&args, addr);
        let mut c = con(addr); // 5 s read timeout: a hang fails
        let mut stored = 0usize;
        for i in 0..5000 {
            let r: redis::RedisResult<String> = redis::cmd("SET")
                .arg(format!("t{i}"))
                .arg(vec![b'v'; 1024])
                .query(&mut c);
            match r {
                Ok(_) => stored += 1,
                Err(e) => {
                    assert!(e.to_string().contains("OOM"), "{engine}: {e}");
                    break;
                }
            }
        }
        assert!(stored > 100, "{engine}: only {stored} values fit");
        let mut other = con(addr);
        let pong: String = redis::cmd("PING").query(&mut other).unwrap();
        assert_eq!(pong, "PONG", "{engine}");
        let n: usize = redis::cmd("DBSIZE").query(&mut other).unwrap();
        assert_eq!(n, stored, "{engine}");
    }
}

/// A request larger than what a full pool has left — within `--max-value`/`--max-body`, so only
/// room refuses it — gets the refusal at once, and every other client goes on being served
/// meanwhile. On the io_uring engine such a request used to hold the receive buffers every
/// connection needs: `PING` got no answer and the sender got nothing until the request
/// timeout (30 s) closed it. Then deleted space is writable again. Both engines, kv and httpd.
/// Builds the `n`th 1,000-byte write request.
type Writer = fn(usize) -> Vec<u8>;

#[test]
fn a_request_bigger_than_the_room_left_is_refused_at_once() {
    for engine in ["uring", "epoll"] {
        for proto in ["kv", "httpd"] {
            let dir = common::tmpdir(&format!("full-big-{proto}-{engine}"));
            let pool = dir.join("pool");
            let p = pool.to_str().unwrap();
            let mut args = vec![
                proto,
                "--engine",
                engine,
                "--pool",
                p,
                "--pool-size",
                "8MiB",
            ];
            if proto == "httpd" {
                args.extend(["--store", "kv"]);
            }
            let addr = common::free_addr();
            let mut s = common::ServerProc::start(&args, addr);
            // Fill with 1,000-byte values until refused.
            let (big_request, refusal, write): (Vec<u8>, &str, Writer) = if proto == "kv" {
                let mut r = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1000000\r\n".to_vec();
                r.extend(std::iter::repeat_n(b'y', 1_000_000));
                r.extend(b"\r\n");
                (r, "-OOM", |i| {
                    format!("SET k{i} {}\r\n", "x".repeat(1000)).into_bytes()
                })
            } else {
                let mut r =
                    b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".to_vec();
                r.extend(std::iter::repeat_n(b'y', 1_000_000));
                (r, "HTTP/1.1 507", |i| {
                    format!(
                        "POST /k{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{}",
                        "x".repeat(1000)
                    )
                    .into_bytes()
                })
            };
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut filled = 0;
            for i in 0..20_000 {
                c.write_all(&write(i)).unwrap();
                let mut buf = [0u8; 512];
                let n = c.read(&mut buf).unwrap();
                let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                if r.starts_with(refusal) {
                    filled = i;
                    break;
                }
                assert!(r.starts_with("+OK") || r.starts_with("HTTP/1.1 20"), "{r}");
            }
            assert!(filled > 1000, "{proto} {engine}: only {filled} values fit");
            if proto == "httpd" {
                // The 507 said `Connection: close` or not; start afresh either way.
                c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            // The big request, from a thread (it may block on a full socket buffer).
            let t0 = Instant::now();
            let sender = std::thread::spawn(move || {
                let mut b = TcpStream::connect(addr).unwrap();
                b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = b.write_all(&big_request);
                let mut buf = [0u8; 256];
                let n = b.read(&mut buf).unwrap_or(0);
                (
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                    t0.elapsed(),
                )
            });
            // Meanwhile other clients are answered.
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..5 {
                let mut o = TcpStream::connect(addr).unwrap();
                o.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let probe: &[u8] = if proto == "kv" {
                    b"PING\r\n"
                } else {
                    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                };
                o.write_all(probe).unwrap();
                let mut buf = [0u8; 64];
                let n = o.read(&mut buf).unwrap_or(0);
                let r = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    r.starts_with("+PONG") || r.starts_with("HTTP/1.1 200"),
                    "{proto} {engine}: another client got {r:?} while a big request came in"
                );
            }
            let (reply, took) = sender.join().unwrap();
            assert!(
                reply.starts_with(refusal),
                "{proto} {engine}: the big request got {reply:?} after {took:?}"
            );
            assert!(
                took < Duration::from_secs(10),
                "{proto} {engine}: the refusal took {took:?}"
            );
            // Deleted space is writable again: 100 values (about 50 buffers; after the big
            // request the receive ring may hold a few dozen more buffers than before it).
            if proto == "kv" {
                let keys: Vec<String> = (1..=100).map(|i| format!("k{i}")).collect();
                c.write_all(format!("DEL {}\r\n", keys.join(" ")).as_bytes())
                    .unwrap();
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap();
                assert_eq!(&buf[..n], b":100\r\n");
            } else {
                for i in 1..=100 {
                    c.write_all(format!("DELETE /k{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                        .unwrap();
                    let mut r = std::io::BufReader::new(&c);
                    let resp = common::read_http(&mut r, false).unwrap();
                    assert_eq!(resp.status, 200, "DELETE /k{i}");
                }
            }
            c.write_all(&write(999_999)).unwrap();
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).unwrap();
            let r = String::from_utf8_lossy(&buf[..n]);
            assert!(
                r.starts_with("+OK") || r.starts_with("HTTP/1.1 201"),
                "{proto} {engine}: after deleting, a write got {r:?}"
            );
            assert!(s.term().success());
        }
    }
}
