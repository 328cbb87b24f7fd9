//! `pst echo` on both engines: real sockets, clean exit on SIGTERM.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

fn echo_roundtrips(engine: &str) {
    let dir = common::tmpdir(&format!("echo-{engine}"));
    let pool = dir.join("sub/pool");
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(
        &[
            "echo",
            "--engine",
            engine,
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "16MiB",
        ],
        addr,
    );
    let mut conns: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for round in 0..20 {
        for (i, c) in conns.iter_mut().enumerate() {
            let msg = format!("conn {i} round {round} ").repeat(round * 37 + 1);
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes());
        }
    }
    assert!(pool.exists(), "pool created with its parent directories");
    let st = s.term();
    assert!(st.success(), "clean shutdown on SIGTERM: {st}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn echo_uring() {
    echo_roundtrips("uring");
}

#[test]
fn echo_epoll() {
    echo_roundtrips("epoll");
}

#[test]
fn threads_share_the_address() {
    let dir = common::tmpdir("threads");
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(
        &[
            "echo",
            "--threads",
            "2",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "16MiB",
        ],
        addr,
    );
    for i in 0..32 {
        let mut c = TcpStream::connect(addr).unwrap();
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}
