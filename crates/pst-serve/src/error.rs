//! Why a server could not start or stopped with an error.

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
