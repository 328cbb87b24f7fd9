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
use crate::server::{parse_bytes, Engine};
use crate::stats::StatsFile;

/// Workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Raw TCP: each request is --size bytes, echoed back.
    Echo,
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
    /// Drive an already running server at this address instead of starting one (server-side
    /// figures are then not measured and reported as null/0).
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// io_uring batch-wait bounds to try for the uring engine (µs, comma list).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub batch_wait_us: Vec<u32>,
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
    errors: u64,
}

struct Server {
    child: Child,
    stats: StatsFile,
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

fn start_server(
    workload: Workload,
    engine: Engine,
    persist: PersistMode,
    batch_wait_us: u32,
    pool_dir: Option<&Path>,
    server_cpu: usize,
) -> anyhow::Result<(Server, SocketAddr)> {
    let (dir, owns_dir) = match pool_dir {
        Some(d) => (d.to_owned(), false),
        None => {
            let base = if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            (base.join(format!("pst-bench-{}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&dir)?;
    let pool = dir.join("bench-pool");
    let _ = std::fs::remove_file(&pool);
    let stats_path = dir.join("bench-stats");
    let _ = std::fs::remove_file(&stats_path);
    let addr = free_port()?;
    let cmd = match workload {
        Workload::Echo => "echo",
    };
    let child = Command::new(std::env::current_exe()?)
        .arg(cmd)
        .args(["--addr", &addr.to_string(), "--engine", &engine.to_string()])
        .args([
            "--persist",
            &persist.to_string(),
            "--batch-wait-us",
            &batch_wait_us.to_string(),
        ])
        .args(["--pool-size", "128MiB", "--cpu", &server_cpu.to_string()])
        .arg("--pool")
        .arg(&pool)
        .arg("--stats-file")
        .arg(&stats_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting the server")?;
    let mut server = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut child = Some(child);
    while Instant::now() < deadline {
        if let Some(Some(st)) = child.as_mut().map(|c| c.try_wait()).transpose()? {
            anyhow::bail!("server exited during start-up: {st}");
        }
        if let Ok(stats) = StatsFile::open(&stats_path) {
            if stats.totals().is_some() && TcpStream::connect(addr).is_ok() {
                server = Some(Server {
                    child: child.take().expect("present"),
                    stats,
                    pool_dir: dir.clone(),
                    owns_dir,
                });
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = server.ok_or_else(|| anyhow::anyhow!("server did not come up on {addr}"))?;
    Ok((server, addr))
}

/// Run the benchmark matrix.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, client_cpu) = if cpus >= 2 { (0, 1) } else { (0, 0) };
    crate::server::pin_to(client_cpu);
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
    for &persist in &a.persist {
        for &engine in &a.engine {
            let waits: Vec<Option<u32>> = match engine {
                Engine::Uring => a.batch_wait_us.iter().map(|&w| Some(w)).collect(),
                Engine::Epoll => vec![None],
            };
            for wait in waits {
                for &conns in &a.conns {
                    let row = run_one(&a, engine, persist, wait, conns, server_cpu)?;
                    if a.json {
                        println!("{}", serde_json::to_string(&row)?);
                    } else {
                        println!(
                            "{:<6} {:<10} {:<7} {:>5} {:>6} {:>10.0} {:>8} {:>8} {:>9.3} {:>12.2} {:>7.0}%",
                            row.workload,
                            match row.batch_wait_us { Some(w) if w > 0 => format!("{}/{}us", row.engine, w), _ => row.engine.clone() },
                            row.persist, row.conns, row.size, row.rps, row.p50_us, row.p99_us,
                            row.syscalls_per_req.unwrap_or(f64::NAN), row.server_cpu_us_per_req, row.client_cpu_pct
                        );
                    }
                    rows.push(row);
                }
            }
        }
    }
    Ok(())
}

fn run_one(
    a: &BenchArgs,
    engine: Engine,
    persist: PersistMode,
    wait: Option<u32>,
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
                a.pool.as_deref(),
                server_cpu,
            )?;
            (Some(s), addr)
        }
    };
    let size = a.size as usize;
    let (request, framer, name) = match a.workload {
        Workload::Echo => (
            (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
            Framer::Fixed(size),
            "echo",
        ),
    };
    let label = format!("{name} {engine} conns={conns}");
    let spec = LoadSpec {
        addr,
        conns,
        depth: a.depth.max(1),
        request,
        framer,
        warmup: Duration::from_secs_f64(a.warmup),
        secs: Duration::from_secs_f64(a.secs),
        progress: (a.secs > 3.0).then_some(label),
    };
    let mut snap = [(0u64, Duration::ZERO); 2];
    let r = loadgen::run(&spec, |start| {
        if let Some(server) = &server {
            let sys = server.stats.totals().map(|t| t.0).unwrap_or(0);
            snap[if start { 0 } else { 1 }] = (sys, process_cpu(server.child.id()));
        }
    })?;
    let measured_server = server.is_some();
    drop(server);
    let req = r.requests.max(1) as f64;
    Ok(Row {
        workload: name,
        engine: engine.to_string(),
        persist: persist.to_string(),
        conns,
        size: a.size,
        requests: r.requests,
        secs: r.secs,
        rps: r.requests as f64 / r.secs.max(1e-9),
        p50_us: r.hist.value_at_quantile(0.5),
        p99_us: r.hist.value_at_quantile(0.99),
        syscalls_per_req: measured_server.then(|| (snap[1].0 - snap[0].0) as f64 / req),
        server_cpu_us_per_req: (snap[1].1 - snap[0].1).as_secs_f64() * 1e6 / req,
        client_cpu_pct: r.cpu.as_secs_f64() / r.secs.max(1e-9) * 100.0,
        depth: a.depth.max(1),
        batch_wait_us: wait,
        errors: r.errors,
    })
}
