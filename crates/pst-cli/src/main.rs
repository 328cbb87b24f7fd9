//! `pst`: the servers, the benchmark and the pool inspector.
#![deny(unsafe_code)]

mod bench;
mod echo;
mod epoll;
mod inspect;
mod loadgen;
mod server;
mod stats;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use server::{Engine, ServerArgs};

/// pst — PASTE for Rust: many TCP connections per system call, received data kept in place in a
/// (persistent) buffer pool.
///
/// Run with no command to serve echo on 127.0.0.1:60000 with the pool ./pst-data/pool.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Server options when no command is given.
    #[command(flatten)]
    serve: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Raw TCP echo server (every byte sent back), default 127.0.0.1:60000.
    Echo(ServerArgs),
    /// Benchmark the servers side by side with the built-in load generator.
    Bench(bench::BenchArgs),
    /// Print a pool's geometry and verify its checksums (non-zero exit if corrupt).
    Inspect(inspect::InspectArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => serve_echo(cli.serve),
        Some(Cmd::Echo(a)) => serve_echo(a),
        Some(Cmd::Bench(a)) => bench::run(a),
        Some(Cmd::Inspect(a)) => return inspect::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pst: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_echo(args: ServerArgs) -> anyhow::Result<()> {
    let pool = args.open_pool()?;
    let engine = args.engine;
    server::run_workers(&args, "127.0.0.1:60000", pool, move |w| match engine {
        Engine::Uring => echo::uring(w),
        Engine::Epoll => echo::epoll(w),
    })
}
