//! `MULTI`/`EXEC`/`WATCH` with a real client library (issue 12): the Rust `redis` crate's
//! atomic pipeline (what `redis-py`'s default pipeline does too), an optimistic-locking retry
//! loop against a second client writing the watched key, and a transaction whose commands are
//! split over many TCP segments. Both engines.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("kv-tx-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let _s = common::ServerProc::start(
        &common::kv_args(engine, &pool, "64MiB", &["--persist", "fsync"]),
        addr,
    );
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut a = client.get_connection().unwrap();
    let mut b = client.get_connection().unwrap();

    // An atomic pipeline: MULTI, the commands, EXEC; the replies come back as one array.
    let (set, n, v): (String, i64, String) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("counter")
        .arg(10)
        .cmd("INCRBY")
        .arg("counter")
        .arg(5)
        .cmd("GET")
        .arg("counter")
        .query(&mut a)
        .unwrap();
    assert_eq!((set.as_str(), n, v.as_str()), ("OK", 15, "15"));

    // Optimistic locking: WATCH, read, another client writes, EXEC fails (nil), retry wins.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let _: () = redis::cmd("WATCH").arg("counter").query(&mut a).unwrap();
        let cur: i64 = redis::cmd("GET").arg("counter").query(&mut a).unwrap();
        if attempts == 1 {
            let _: () = redis::cmd("SET")
                .arg("counter")
                .arg(100)
                .query(&mut b)
                .unwrap();
        }
        let r: Option<(String,)> = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg("counter")
            .arg(cur * 2)
            .query(&mut a)
            .unwrap();
        if r.is_some() {
            break;
        }
        assert!(attempts < 3, "EXEC keeps failing");
    }
    assert_eq!(attempts, 2, "the first EXEC saw the other client's write");
    let v: i64 = redis::cmd("GET").arg("counter").query(&mut b).unwrap();
    assert_eq!(v, 200);

    // A transaction cut into one-byte TCP segments still runs as one.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let req = b"MULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\nEXEC\r\n";
    for byte in req {
        s.write_all(&[*byte]).unwrap();
    }
    let want = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$5\r\nhello\r\n";
    let mut got = vec![0u8; want.len()];
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[test]
fn transactions_uring() {
    scenario("uring");
}

#[test]
fn transactions_epoll() {
    scenario("epoll");
}
