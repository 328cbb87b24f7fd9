//! The pst server library: write a request/response service once ([`Protocol`]), serve it on
//! the io_uring port (zero copy: requests framed in the pool buffers they landed in, stored
//! values sent from the pool) or on the epoll baseline (the same code over copies), with a
//! durable store shared by every worker thread and group-committed once per batch.
//!
//! Modules, leaves first — none imports a module that imports it:
//! - [`protocol`]: the service contract ([`Protocol`], [`Io`], [`Piece`], [`Limits`]);
//! - [`store`]: the shared store — recovery, per-partition buffer returns, group commit;
//! - [`stats`], [`worker`]: counters for `pst bench`, a worker's identity and stop flag;
//! - [`uring`] and [`epoll`]: the two engines, each a loop over one worker's connections;
//! - [`runtime`]: the listener, the worker threads, signals, shutdown;
//! - [`echo`], [`http`], [`kv`]: the services (each unit-tested without sockets).
#![deny(unsafe_code)]

pub mod echo;
pub mod epoll;
pub mod http;
pub mod kv;
pub mod protocol;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod uring;
pub mod worker;

pub use protocol::{Io, Limits, Piece, Protocol};
pub use runtime::{serve, serve_until, Engine, ServeConfig};
pub use store::{open_store, Retention, SharedStore};
pub use worker::WorkerCtx;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listening socket could not be bound (after retrying while the address was in use).
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The pool's log region is already claimed by a store in this process.
    #[error("the pool's log is already in use")]
    LogInUse,
    /// Recovery refused the log (damaged acknowledged data); the pool was left untouched.
    #[error("recovering the store in {}: {source} (left untouched; `pst inspect` shows the damage, --salvage-damaged-log starts anyway)", path.display())]
    Recover {
        /// The pool path.
        path: PathBuf,
        /// What recovery found.
        source: pst_store::StoreError,
    },
    /// A worker thread panicked.
    #[error("a worker thread panicked")]
    WorkerPanicked,
}
