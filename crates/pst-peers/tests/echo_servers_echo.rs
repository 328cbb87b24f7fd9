//! Each peer echo server, started as `pst bench` starts it, echoes what it is sent — small
//! messages and one larger than its read buffer — on several connections at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &str) -> (Server, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(bin)
        .args(["--addr", &addr.to_string(), "--threads", "2", "--cpu", "0"])
        .args(["--buf-size", "4096"])
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(server.0.try_wait().unwrap().is_none(), "{bin} exited");
        assert!(Instant::now() < deadline, "{bin} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, addr)
}

/// One server at a time: both listen with `SO_REUSEPORT`, so two tests that drew the same
/// free port would share it, and the first to finish would kill the other's connections (a
/// reset seen once in CI).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn echoes(bin: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start(bin);
    let mut conns: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for size in [1, 1024, 100_000] {
            let msg: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            c.write_all(&msg).unwrap();
            let mut back = vec![0; size];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg, "{bin}: {size} bytes on connection {i}");
        }
    }
}

#[test]
fn tokio_echoes() {
    echoes(env!("CARGO_BIN_EXE_pst-peer-echo-tokio"));
}

#[test]
fn monoio_echoes() {
    echoes(env!("CARGO_BIN_EXE_pst-peer-echo-monoio"));
}
