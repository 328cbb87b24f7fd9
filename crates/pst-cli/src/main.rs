//! `pst`: the servers, the benchmark and the pool inspector.
#![deny(unsafe_code)]

mod args;
mod inspect;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use args::ServerArgs;
use pst_bench::parse_bytes;
use pst_serve::http::StoreMode;
use pst_serve::Retention;

/// pst — PASTE for Rust: many TCP connections per system call, received data kept in place in a
/// (persistent) buffer pool.
///
/// Run with no command to serve HTTP (`pst httpd`) on 127.0.0.1:60000 with the pool
/// ./pst-data/pool: `POST /key` stores a value durably, `GET /key` returns it, `GET /` returns a
/// fixed 64-byte body.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Server options when no command is given (`pst httpd`).
    #[command(flatten)]
    serve: HttpArgs,
}

/// Options of `pst httpd`.
#[derive(Debug, Clone, clap::Args)]
struct HttpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Where POST bodies go: none, wal (write-ahead log), kv (POST/GET/DELETE `/<key>`).
    #[arg(long, default_value_t = StoreMode::Kv)]
    store: StoreMode,
    /// Largest request body accepted (413 beyond).
    #[arg(long, value_parser = parse_bytes, default_value = "1MiB")]
    max_body: u64,
    /// Require `Authorization: Bearer <TOKEN>` for POST/PUT/DELETE.
    #[arg(long)]
    token: Option<String>,
}

/// Options of `pst kv`.
#[derive(Debug, Clone, clap::Args)]
struct KvArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Largest value (bulk argument) accepted, and most bytes one MULTI may queue; a larger
    /// value is a protocol error and closes the connection. A value is held in pool buffers
    /// while it arrives, so keep it well below the pool size divided by the clients that may
    /// send one at once (Redis's own limit is 512MB).
    #[arg(long, value_parser = parse_value_limit, default_value = "8MiB")]
    max_value: u64,
    /// Require `AUTH <password>` before other commands (Redis `requirepass`).
    #[arg(long)]
    requirepass: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// HTTP/1.1 server (phttpd): POST bodies persisted zero-copy; default 127.0.0.1:60000.
    Httpd(HttpArgs),
    /// Redis-protocol KV server over the same store; default 127.0.0.1:6380.
    Kv(KvArgs),
    /// Raw TCP echo server (every byte sent back), default 127.0.0.1:60000.
    Echo(ServerArgs),
    /// Benchmark the servers side by side with the built-in load generator.
    Bench(pst_bench::BenchArgs),
    /// Print a pool's geometry and verify its checksums (non-zero exit if corrupt).
    Inspect(inspect::InspectArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.cmd {
        None => serve_http(cli.serve),
        Some(Cmd::Httpd(a)) => serve_http(a),
        Some(Cmd::Kv(a)) => serve_kv(a),
        Some(Cmd::Echo(a)) => serve_echo(a),
        Some(Cmd::Bench(a)) => pst_bench::run(a),
        Some(Cmd::Inspect(a)) => return inspect::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pst: error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message
/// before it already ends with (errors that format their source into their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Servers hold one descriptor per connection: raise the soft RLIMIT_NOFILE to the hard limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let want = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, want) {
            tracing::debug!(error = %e, "could not raise RLIMIT_NOFILE");
        }
    }
}

fn serve_http(a: HttpArgs) -> anyhow::Result<()> {
    let fresh = !a.server.pool.exists();
    let pool = a.server.open_pool()?;
    let store = match a.store {
        StoreMode::None => None,
        _ => Some(a.server.open_store(&pool)?),
    };
    let retention = if a.store == StoreMode::Wal {
        Retention::Wal
    } else {
        Retention::Compact
    };
    let proto = Arc::new(pst_serve::http::HttpService::new(
        a.store,
        a.max_body,
        a.token.clone(),
    ));
    let cfg = a.server.serve_config("127.0.0.1:60000");
    let held = pool.clone();
    let served = pst_serve::serve(&cfg, pool, proto, store, retention);
    discard_if_never_served(fresh, &a.server.pool, held, served)
}

fn serve_kv(a: KvArgs) -> anyhow::Result<()> {
    let fresh = !a.server.pool.exists();
    let pool = a.server.open_pool()?;
    let store = a.server.open_store(&pool)?;
    let stop = pst_serve::runtime::stop_flag()?;
    let proto = Arc::new(
        pst_serve::kv::KvService::new(a.max_value, a.requirepass.clone())
            .with_persist(a.server.persist)
            .with_shutdown(stop.clone()),
    );
    let cfg = a.server.serve_config("127.0.0.1:6380");
    let held = pool.clone();
    let served = pst_serve::serve_until(&cfg, pool, proto, Some(store), Retention::Compact, stop);
    discard_if_never_served(fresh, &a.server.pool, held, served)
}

fn serve_echo(a: ServerArgs) -> anyhow::Result<()> {
    let fresh = !a.pool.exists();
    let pool = a.open_pool()?;
    let proto = Arc::new(pst_serve::echo::EchoService::default());
    let cfg = a.serve_config("127.0.0.1:60000");
    let held = pool.clone();
    let served = pst_serve::serve(&cfg, pool, proto, None, Retention::Compact);
    discard_if_never_served(fresh, &a.pool, held, served)
}

/// A server that could not listen (address taken, not ours to bind) never served anything:
/// if this run created its pool file, remove it again, so a mistyped `--addr` or a second
/// start on a busy port leaves no new file behind. An existing pool is never touched, and
/// neither is a new one that served (it may hold acknowledged data). `held` keeps the pool
/// open, and so its lock taken, until the file is gone: a second instance started meanwhile
/// on the same `--pool` must not open the file just before it is unlinked.
fn discard_if_never_served(
    fresh: bool,
    path: &std::path::Path,
    held: Arc<pst_pool::Pool>,
    served: Result<(), pst_serve::ServeError>,
) -> anyhow::Result<()> {
    if fresh && matches!(served, Err(pst_serve::ServeError::Listen { .. })) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(
                ?path,
                "removed the pool this run created (nothing was served)"
            ),
            Err(e) => {
                tracing::warn!(?path, error = %e, "could not remove the pool this run created")
            }
        }
    }
    drop(held);
    Ok(served?)
}

/// A byte limit that must be at least 1 (`--max-value 0` would refuse every value).
fn parse_value_limit(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// An error that formats its source into its own message, as the pool's errors do.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refusing the file: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn zero_threads_is_refused() {
        use clap::Parser;
        let e = super::Cli::try_parse_from(["pst", "kv", "--threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("must be at least 1"), "{e}");
        assert!(super::Cli::try_parse_from(["pst", "kv", "--threads", "2"]).is_ok());
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Outer(std::io::Error::other("bad magic bytes")));
        assert_eq!(error_chain(&e), "refusing the file: bad magic bytes");
        let e = anyhow::Error::new(std::io::Error::other("bad magic bytes")).context("opening");
        assert_eq!(error_chain(&e), "opening: bad magic bytes");
    }
}
