//! 10,000 concurrent idle connections plus an active load, on both engines, without errors.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

fn scenario(engine: &str) {
    raise_nofile();
    let dir = common::tmpdir(&format!("10k-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let args = common::kv_args(engine, &pool, "64MiB", &["--max-conns", "20000"]);
    let mut s = common::ServerProc::start(&args, addr);
    let t0 = std::time::Instant::now();
    let idle: Vec<TcpStream> = (0..10_000)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    eprintln!("{engine}: 10k connected after {:?}", t0.elapsed());
    // Active load while all of them are held: every request answered correctly.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    for i in 0..2000 {
        let v = format!("v{i}");
        // One write per pipelined pair, as Redis clients do.
        let req = format!(
            "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n${}\r\n{v}\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
            v.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let want = format!("+OK\r\n${}\r\n{v}\r\n", v.len());
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
    }
    eprintln!("{engine}: load done after {:?}", t0.elapsed());
    // The idle ones are still served too.
    for i in [0usize, 4_999, 9_999] {
        let mut t = &idle[i];
        t.write_all(b"PING\r\n").unwrap();
        let mut b = [0u8; 7];
        t.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"+PONG\r\n");
    }
    drop(idle);
    eprintln!("{engine}: dropped after {:?}", t0.elapsed());
    assert!(s.term().success());
    eprintln!("{engine}: stopped after {:?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

/// One test for both engines, one after the other: 10,000 client sockets at a time is what
/// the test process's descriptor limit allows.
#[test]
fn ten_thousand_idle_plus_load_both_engines() {
    scenario("uring");
    scenario("epoll");
}
