//! `pst` with no arguments (what `cargo run --release --bin pst` runs on a fresh clone) serves HTTP on
//! 127.0.0.1:60000 with the pool ./pst-data/pool, created in the working directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn no_arguments_serve_httpd_on_60000_with_embedded_pool() {
    let dir = common::tmpdir("default-run");
    if TcpStream::connect("127.0.0.1:60000").is_ok() {
        eprintln!("port 60000 is taken by another process on this machine; cannot run the default-port check");
        return;
    }
    let mut child = common::pst()
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            // 60000 (phttpd's port, the contract's default) lies in Linux's ephemeral range:
            // a client socket of another test, or one in TIME_WAIT, can hold it for a while.
            if err.contains("Address in use") {
                eprintln!("port 60000 is held by another socket; cannot run the default-port check: {err}");
                return;
            }
            panic!("default server exited: {err}");
        }
        match TcpStream::connect("127.0.0.1:60000") {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("default server did not come up: {e}"),
        }
    };
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = Vec::new();
    c.read_to_end(&mut r).unwrap();
    let r = String::from_utf8(r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("Content-Length: 64\r\n"), "{r}");
    assert!(
        dir.join("pst-data/pool").is_file(),
        "pool created under ./pst-data/"
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    assert!(child.wait().unwrap().success(), "clean exit on SIGINT");
    let _ = std::fs::remove_dir_all(dir);
}
