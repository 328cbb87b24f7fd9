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
//! - [`echo`], [`http`], [`kv`]: the services (each unit-tested without sockets);
//!   [`expiry`], [`hashes`], [`owned`]: parts of `kv` (deadlines, hash fields, inline
//!   arguments).
#![deny(unsafe_code)]

pub mod echo;
pub mod epoll;
pub mod error;
pub mod expiry;
pub mod hashes;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod owned;
pub mod protocol;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod uring;
pub mod worker;

pub use error::ServeError;
pub use protocol::{Io, Limits, Piece, Protocol};
pub use runtime::{serve, serve_until, Engine, ServeConfig};
pub use store::{open_store, Retention, SharedStore};
pub use worker::WorkerCtx;
