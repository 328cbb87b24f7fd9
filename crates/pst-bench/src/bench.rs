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

use crate::loadgen::{self, Framer, LoadSpec};
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
    /// Redis `SET key:<conn> <--size bytes>` (`pst kv`; peers: redis-server with and without
    /// `appendfsync always`).
    Kv,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Rpc => "rpc",
            Workload::Wal => "wal",
            Workload::Kv => "kv",
        }
    }

    /// The server command line for pst.
    fn server_args(self) -> &'static [&'static str] {
        match self {
            Workload::Echo => &["echo"],
            Workload::Rpc => &["httpd", "--store", "none"],
            Workload::Wal => &["httpd", "--store", "wal"],
            Workload::Kv => &["kv"],
        }
    }

    fn framer(self, size: usize) -> Framer {
        match self {
            Workload::Echo => Framer::Fixed(size),
            Workload::Rpc | Workload::Wal => Framer::Http,
            Workload::Kv => Framer::Resp,
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
            Workload::Kv => |conn, size| {
                let key = format!("key:{conn:06}");
                let mut r = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${size}\r\n", key.len())
                    .into_bytes();
                r.extend((0..size).map(|i| b'a' + (i % 26) as u8));
                r.extend_from_slice(b"\r\n");
                r
            },
        }
    }
}

/// Real peer servers the bench can run beside pst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// nginx, one worker, a 64-byte static file, keep-alive (for `rpc`).
    Nginx,
    /// redis-server with `appendonly yes` + `appendfsync always`, and without persistence (for `kv`).
    Redis,
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
    /// Connection counts to run (comma list).
    #[arg(long, value_delimiter = ',', default_value = "1,50,100")]
    pub conns: Vec<usize>,
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
    /// Persist modes to run (comma list).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub persist: Vec<PersistMode>,
    /// Directory for the servers' pool files (default: a fresh directory under /dev/shm,
    /// removed afterwards).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Requests outstanding per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Run each configuration this many times and report the run with the median requests/s
    /// (this machine is shared and noisy; `rps_min`/`rps_max` show the spread).
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
    /// Pool buffer size for the pst servers (bytes; default: the servers' default).
    #[arg(long)]
    pub buf_size: Option<u32>,
}

/// One result row (the DESIGN §4 contract, plus `depth` and `batch_wait_us`).
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
fn pinned(cpu: usize, program: &str) -> Command {
    if which("taskset") {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpu.to_string(), program]);
        c
    } else {
        Command::new(program)
    }
}

fn which(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join(program).is_file())
}

/// Start a peer server ("nginx", "redis-always", "redis-none").
fn start_peer(
    kind: &str,
    pool_dir: Option<&Path>,
    server_cpu: usize,
) -> anyhow::Result<(Server, SocketAddr)> {
    let (base, _) = bench_dir(pool_dir);
    let dir = base.join(format!("peer-{kind}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let addr = free_port()?;
    let mut cmd = match kind {
        "nginx" => {
            let root = dir.join("www");
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("index.html"), pst_serve::http::RPC_BODY)?;
            let conf = format!(
                "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {dir};\n  server {{ listen {addr}; location / {{ root {root}; }} }}\n}}\n",
                dir = dir.display(),
                root = root.display(),
            );
            std::fs::write(dir.join("nginx.conf"), conf)?;
            let nginx = if std::path::Path::new("/usr/sbin/nginx").is_file() {
                "/usr/sbin/nginx"
            } else {
                "nginx"
            };
            let mut c = pinned(server_cpu, nginx);
            c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
            c
        }
        "redis-always" | "redis-none" => {
            let mut c = pinned(server_cpu, "redis-server");
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
            if kind == "redis-always" {
                c.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                c.args(["--appendonly", "no"]);
            }
            c
        }
        _ => anyhow::bail!("unknown peer {kind}"),
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {kind}"))?;
    let stats = wait_ready(&mut child, addr, None)?;
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
) -> anyhow::Result<(Server, SocketAddr)> {
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
        .args(["--pool-size", "256MiB", "--cpu", &server_cpu.to_string()])
        .args(
            buf_size
                .map(|b| vec!["--buf-size".to_string(), b.to_string()])
                .unwrap_or_default(),
        )
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

/// One system under test: its name, the pst engine, batch-wait bound and zero-copy threshold
/// (`None` for a peer), and the persist mode.
type System = (String, Option<(Engine, Option<u32>, u64)>, PersistMode);

/// Run the benchmark matrix.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, client_cpu) = if cpus >= 2 { (0, 1) } else { (0, 0) };
    pin_to(client_cpu);
    let mut rows = Vec::new();
    if !a.json {
        println!(
            "{:<6} {:<10} {:<7} {:>5} {:>6} {:>10} {:>8} {:>8} {:>9} {:>12} {:>8}",
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
            "cli cpu"
        );
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
                systems.push((engine.to_string(), Some((engine, w, z)), persist));
            }
        }
    }
    for peer in &a.peers {
        let kinds: &[&str] = match (peer, a.workload) {
            (Peer::Nginx, Workload::Rpc) => &["nginx"],
            (Peer::Redis, Workload::Kv) => &["redis-always", "redis-none"],
            _ => {
                eprintln!(
                    "pst bench: peer {peer:?} does not serve the {} workload; skipped",
                    a.workload.name()
                );
                &[]
            }
        };
        for k in kinds {
            let prog = if k.starts_with("redis") {
                "redis-server"
            } else {
                "nginx"
            };
            if !which(prog) {
                eprintln!("pst bench: {prog} is not installed; {k} skipped");
                continue;
            }
            systems.push((
                k.to_string(),
                None,
                if *k == "redis-always" {
                    PersistMode::Fsync
                } else {
                    PersistMode::None
                },
            ));
        }
    }
    for (name, pst, persist) in systems {
        for &conns in &a.conns {
            let mut runs = Vec::new();
            for _ in 0..a.repeat.max(1) {
                runs.push(match pst {
                    Some((engine, wait, zc)) => {
                        run_one(&a, engine, persist, wait, zc, conns, server_cpu)?
                    }
                    None => run_peer(&a, &name, persist, conns, server_cpu)?,
                });
            }
            runs.sort_by(|x, y| x.rps.total_cmp(&y.rps));
            let (min, max, n) = (runs[0].rps, runs[runs.len() - 1].rps, runs.len());
            let mut row = runs.swap_remove(n / 2);
            (row.runs, row.rps_min, row.rps_max) = (n, min, max);
            print_row(&a, &row)?;
            rows.push(row);
        }
    }
    if let Some(path) = &a.plot {
        plot(path, &a, &rows)?;
        eprintln!("pst bench: wrote {}", path.display());
    }
    Ok(())
}

fn print_row(a: &BenchArgs, row: &Row) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(row)?);
    } else {
        println!(
            "{:<6} {:<13} {:<7} {:>5} {:>6} {:>10.0} {:>8} {:>8} {:>9} {:>12.2} {:>7.0}%",
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
            row.client_cpu_pct
        );
    }
    Ok(())
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
    let mut labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.label(), r.persist))
        .collect();
    labels.dedup();
    for (i, label) in labels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &format!("{} {}", r.label(), r.persist) == label)
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
    conns: usize,
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
    persist: PersistMode,
    conns: usize,
    server_cpu: usize,
) -> anyhow::Result<Row> {
    let (server, addr) = start_peer(kind, a.pool.as_deref(), server_cpu)?;
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

/// Drive `addr` and measure; `server` (if we started it) is stopped afterwards.
fn measure(
    a: &BenchArgs,
    server: Option<Server>,
    addr: SocketAddr,
    engine: String,
    persist: PersistMode,
    (wait, zc): (Option<u32>, Option<u64>),
    conns: usize,
) -> anyhow::Result<Row> {
    let spec = LoadSpec {
        addr,
        conns,
        depth: a.depth.max(1),
        request: a.workload.request(),
        size: a.size as usize,
        framer: a.workload.framer(a.size as usize),
        warmup: Duration::from_secs_f64(a.warmup),
        secs: Duration::from_secs_f64(a.secs),
        progress: (a.secs > 3.0).then(|| format!("{} {engine} conns={conns}", a.workload.name())),
    };
    let mut snap = [(None, Duration::ZERO); 2];
    let r = loadgen::run(&spec, |start| {
        if let Some(server) = &server {
            let sys = server.stats.as_ref().and_then(|s| s.totals()).map(|t| t.0);
            snap[if start { 0 } else { 1 }] = (sys, process_cpu(server.child.id()));
        }
    })?;
    let measured_server = server.is_some();
    drop(server);
    let req = r.requests.max(1) as f64;
    let syscalls = match (snap[0].0, snap[1].0) {
        (Some(a), Some(b)) => Some((b - a) as f64 / req),
        _ => None,
    };
    Ok(Row {
        workload: a.workload.name(),
        engine,
        persist: persist.to_string(),
        conns,
        size: a.size,
        requests: r.requests,
        secs: r.secs,
        rps: r.requests as f64 / r.secs.max(1e-9),
        p50_us: r.hist.value_at_quantile(0.5),
        p99_us: r.hist.value_at_quantile(0.99),
        syscalls_per_req: syscalls,
        server_cpu_us_per_req: if measured_server {
            (snap[1].1 - snap[0].1).as_secs_f64() * 1e6 / req
        } else {
            0.0
        },
        client_cpu_pct: r.cpu.as_secs_f64() / r.secs.max(1e-9) * 100.0,
        depth: a.depth.max(1),
        batch_wait_us: wait,
        send_zc_min: zc,
        errors: r.errors,
        runs: 1,
        rps_min: 0.0,
        rps_max: 0.0,
    })
}
