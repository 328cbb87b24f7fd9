//! Peers for `pst bench echo --peers tokio,monoio`: the echo servers a Rust programmer would
//! write instead of using pst, each in its runtime's own idiom (the examples' read → `write_all`
//! loop, one task per connection), and run the way pst's workers run: `--threads N`, each
//! thread with its own single-threaded runtime and its own `SO_REUSEPORT` listener, pinned to
//! a CPU of `--cpu` (round robin).
//!
//! This crate owns only the options and the thread/pinning scaffolding shared by the two
//! binaries; it must not depend on pst (the peers are what pst is measured against).
#![deny(unsafe_code)]

use std::net::SocketAddr;

/// Options of a peer echo server.
#[derive(Debug, Clone)]
pub struct EchoArgs {
    /// `--addr`: where to listen (default 127.0.0.1:7000).
    pub addr: SocketAddr,
    /// `--threads`: worker threads, each with its own runtime and listener (default 1).
    pub threads: usize,
    /// `--cpu`: CPUs to pin the workers to, round robin (default: not pinned).
    pub cpu: Vec<usize>,
    /// `--buf-size`: the per-connection read buffer (default 64 KiB, so a 64 KiB message is one
    /// read where the kernel has it all).
    pub buf_size: usize,
}

const USAGE: &str = "options: --addr IP:PORT  --threads N  --cpu C[,C…]  --buf-size BYTES";

impl EchoArgs {
    /// Parse the process's arguments; prints usage and exits on a bad one.
    pub fn from_env() -> Self {
        match Self::parse(std::env::args().skip(1)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    /// Parse `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut a = EchoArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            threads: 1,
            cpu: Vec::new(),
            buf_size: 64 << 10,
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let bad = |v: &str| format!("bad value for {flag}: {v:?}");
            match flag.as_str() {
                "--addr" => {
                    let v = value()?;
                    a.addr = v.parse().map_err(|_| bad(&v))?;
                }
                "--threads" => {
                    let v = value()?;
                    a.threads = v.parse().map_err(|_| bad(&v))?;
                }
                "--cpu" => {
                    let v = value()?;
                    a.cpu = v
                        .split(',')
                        .map(|c| c.trim().parse())
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad(&v))?;
                }
                "--buf-size" => {
                    let v = value()?;
                    a.buf_size = v.parse().map_err(|_| bad(&v))?;
                }
                "-h" | "--help" => return Err("an echo server for `pst bench echo --peers`".into()),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        a.threads = a.threads.max(1);
        a.buf_size = a.buf_size.max(1);
        Ok(a)
    }

    /// Run `worker(index)` on `--threads` threads, each pinned to its CPU of `--cpu`; returns
    /// when every worker has returned (the first error, if any).
    pub fn run_workers<F>(&self, worker: F) -> std::io::Result<()>
    where
        F: Fn(usize) -> std::io::Result<()> + Send + Sync + 'static,
    {
        let worker = std::sync::Arc::new(worker);
        let handles: Vec<_> = (0..self.threads)
            .map(|t| {
                let cpu = (!self.cpu.is_empty()).then(|| self.cpu[t % self.cpu.len()]);
                let worker = worker.clone();
                std::thread::Builder::new()
                    .name(format!("echo-{t}"))
                    .spawn(move || {
                        if let Some(c) = cpu {
                            pin_to(c);
                        }
                        worker(t)
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Pin the calling thread to `cpu` (as pst pins its workers with `--cpu`).
pub fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("could not pin to CPU {cpu}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EchoArgs, String> {
        EchoArgs::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn options_parse() {
        let a = parse("--addr 127.0.0.1:9 --threads 2 --cpu 0,1 --buf-size 1024").unwrap();
        assert_eq!(a.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            (a.threads, a.cpu.as_slice(), a.buf_size),
            (2, &[0, 1][..], 1024)
        );
        let d = parse("").unwrap();
        assert_eq!((d.threads, d.cpu.len(), d.buf_size), (1, 0, 65536));
        assert!(parse("--threads x").is_err());
        assert!(parse("--bogus").is_err());
        assert!(parse("--addr").is_err());
    }
}
