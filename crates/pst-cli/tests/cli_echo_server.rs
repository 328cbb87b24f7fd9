//! `pst echo` on both engines: real sockets, clean exit on SIGTERM.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

fn echo_roundtrips(engine: &str, extra: &[&str]) {
    let dir = common::tmpdir(&format!("echo-{engine}{}", extra.len()));
    let pool = dir.join("sub/pool");
    let addr = common::free_addr();
    let mut args = vec![
        "echo",
        "--engine",
        engine,
        "--pool",
        pool.to_str().unwrap(),
        "--pool-size",
        "16MiB",
    ];
    args.extend_from_slice(extra);
    let mut s = common::ServerProc::start(&args, addr);
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
    echo_roundtrips("uring", &[]);
}

#[test]
fn echo_epoll() {
    echo_roundtrips("epoll", &[]);
}

/// Messages up to ~13 KB, sends of 4 KiB and more zero-copy (SEND_ZC / SENDMSG_ZC).
#[test]
fn echo_uring_send_zc() {
    echo_roundtrips("uring", &["--send-zc-min", "4KiB"]);
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

#[test]
fn kv_with_two_threads_shares_one_store() {
    let dir = common::tmpdir("kv-threads");
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let args = [
        "kv",
        "--threads",
        "2",
        "--pool",
        pool.to_str().unwrap(),
        "--pool-size",
        "32MiB",
        "--persist",
        "fsync",
    ];
    let mut s = common::ServerProc::start(&args, addr);
    // Many connections: SO_REUSEPORT spreads them over both threads; every value written on
    // one connection is read back on another.
    for i in 0..40 {
        let mut w = TcpStream::connect(addr).unwrap();
        let v = format!("value-{i}-").repeat(i * 50 + 1);
        write!(
            w,
            "*3\r\n$3\r\nSET\r\n${}\r\nk{i}\r\n${}\r\n{v}\r\n",
            format!("k{i}").len(),
            v.len()
        )
        .unwrap();
        let mut ok = [0u8; 5];
        w.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
    for i in 0..40 {
        let mut r = TcpStream::connect(addr).unwrap();
        let v = format!("value-{i}-").repeat(i * 50 + 1);
        write!(
            r,
            "*2\r\n$3\r\nGET\r\n${}\r\nk{i}\r\n",
            format!("k{i}").len()
        )
        .unwrap();
        let head = format!("${}\r\n", v.len());
        let mut got = vec![0u8; head.len() + v.len() + 2];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, format!("{head}{v}\r\n").into_bytes(), "k{i}");
    }
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}
