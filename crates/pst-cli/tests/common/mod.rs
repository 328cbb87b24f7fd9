//! Helpers for driving the `pst` binary in tests.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn pst() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pst"))
}

/// A free loopback port, never the same twice in this process: our servers listen with
/// SO_REUSEPORT, so two tests handed the same just-released port would share it.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let a = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&a.port()) {
            given.push(a.port());
            return a;
        }
    }
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pst-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A server child process, SIGTERMed and reaped on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProc {
    pub fn start(args: &[&str], addr: SocketAddr) -> ServerProc {
        let child = pst()
            .args(args)
            .arg("--addr")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = ServerProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("server exited early: {st}");
            }
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn term(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pst inspect` on the pool verifies clean (exit 0).
pub fn assert_inspect_ok(pool: &str) {
    let out = pst().args(["inspect", pool]).output().unwrap();
    assert!(
        out.status.success(),
        "pst inspect {pool} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
