//! A server out of file descriptors neither spins nor stops: connections it cannot accept
//! wait in the backlog (the port backs off instead of polling a listener that stays ready),
//! and once descriptors are free again they are served.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The server, killed and reaped however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_once(addr: std::net::SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"ping"
}

#[test]
fn out_of_fds_backs_off_and_recovers() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("nofds-{engine}"));
        let pool = dir.join("pool");
        let addr = common::free_addr();
        // RLIMIT_NOFILE 64 (soft and hard, so the server cannot raise it).
        let script = format!(
            "ulimit -n 64 && exec {} echo --engine {engine} --pool {} --pool-size 8MiB --addr {addr}",
            env!("CARGO_BIN_EXE_pst"),
            pool.display()
        );
        let child = Reaped(
            std::process::Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .unwrap(),
        );
        let mut up = false;
        for _ in 0..250 {
            if echo_once(addr) {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(up, "{engine}: server did not come up");
        // More connections than descriptors: the rest wait in the backlog.
        let held: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu_secs(child.0.id());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_secs(child.0.id()) - before;
        assert!(
            used < 0.5,
            "{engine}: {used:.2} CPU s in 1 s while out of fds: spinning"
        );
        drop(held);
        let mut served = false;
        for _ in 0..100 {
            if echo_once(addr) {
                served = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            served,
            "{engine}: not serving again once descriptors were freed"
        );
        drop(child);
        let _ = std::fs::remove_dir_all(dir);
    }
}
