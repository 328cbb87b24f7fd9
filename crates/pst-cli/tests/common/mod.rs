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

/// Remove what test processes that have exited left in the temp directory (`pst-cli-<pid>-…`;
/// pools are allocated in full, so leftovers hold real disk space). Once per test process;
/// the directories of live ones, this one's included, are kept.
fn sweep_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("pst-cli-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

pub fn tmpdir(name: &str) -> PathBuf {
    sweep_stale_dirs();
    let d = std::env::temp_dir().join(format!("pst-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One request in the server's protocol gets its kind of answer.
fn answers(cmd: &str, addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let (req, ok): (&[u8], &[&[u8]]) = match cmd {
        "echo" => (b"ping\n", &[b"ping\n"]),
        "kv" => (b"PING\r\n", &[b"+PONG", b"-NOAUTH"]),
        _ => (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[b"HTTP/1.1 "]),
    };
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    if c.write_all(req).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while got.len() < 5 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    ok.iter()
        .any(|p| got.starts_with(&p[..p.len().min(got.len())]))
}

/// The arguments most KV tests start `pst` with: `kv --engine ENGINE --pool POOL --pool-size
/// SIZE`, then `extra`.
pub fn kv_args(engine: &str, pool: &std::path::Path, size: &str, extra: &[&str]) -> Vec<String> {
    let pool = pool.to_str().expect("a UTF-8 temporary path");
    [
        "kv",
        "--engine",
        engine,
        "--pool",
        pool,
        "--pool-size",
        size,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// A server child process, SIGTERMed and reaped on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProc {
    pub fn start<S: AsRef<str>>(args: &[S], addr: SocketAddr) -> ServerProc {
        let child = pst()
            .args(args.iter().map(AsRef::as_ref))
            .arg("--addr")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = ServerProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready means *our* server answers a request, not merely that something accepts on
        // the port: a listener of a killed server can outlive its process for a moment
        // (io_uring tears rings down asynchronously) and would accept, then reset.
        while !answers(args.first().map_or("httpd", AsRef::as_ref), addr) {
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

/// `redis-cli -p PORT ARGS…`, its output without the trailing newline.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// One HTTP response as read off a connection.
pub struct HttpResp {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read one `Content-Length`-framed response (`head`: the answer to a HEAD, no body).
pub fn read_http(r: &mut impl std::io::BufRead, head: bool) -> std::io::Result<HttpResp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut resp = HttpResp {
        status,
        headers,
        body: Vec::new(),
    };
    if status >= 200 && !head {
        let len: usize = resp
            .header("content-length")
            .unwrap_or("0")
            .parse()
            .map_err(std::io::Error::other)?;
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body)?;
    }
    Ok(resp)
}
