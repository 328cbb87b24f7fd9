//! What the HTTP and Redis-protocol services share across engines: the request-handling
//! contract ([`Protocol`]), the byte access each engine provides ([`Io`]), reply pieces, and the
//! store shared by all worker threads.
//!
//! A service is written once; the uring engine gives it zero-copy access (stream ranges map to
//! extents of the pool buffers the bytes landed in), the epoll engine gives it copies (bytes
//! read into a private buffer, copied into pool buffers when stored). Same parsing, same store,
//! same persistence: the baseline differs only in how bytes move.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use pst::{BufIdx, Extent};
use pst_pool::PoolMedia;
use pst_store::Store;

/// The store type the servers use.
pub type PoolStore = Store<PoolMedia>;

/// One piece of a reply, in order.
#[derive(Debug)]
pub enum Piece {
    /// Bytes to copy out.
    Bytes(Vec<u8>),
    /// A pool extent to send without copying (a stored value).
    Ext(Extent),
}

/// Byte access the engine gives a service for one connection.
pub trait Io {
    /// Call `f` on the stream bytes `r`, piece by piece, in order.
    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8]));
    /// Extents in pool buffers holding the stream bytes `r`, each one buffer reference, for a
    /// store (zero copy on the port; a copy into pool buffers on epoll). `None` when the pool
    /// is exhausted.
    fn extents(&mut self, r: Range<u64>) -> Option<Vec<Extent>>;
    /// Copy `bytes` into fresh pool buffers (values the service computes, e.g. INCR).
    fn copy_in(&mut self, bytes: &[u8]) -> Option<Vec<Extent>>;
    /// New references on a stored value's extents for a zero-copy reply; `None` where that is
    /// not possible (epoll, or buffers of another thread's partition): copy instead.
    fn zero_copy(&mut self, extents: &[(u32, u32, u32)]) -> Option<Vec<Extent>>;

    /// Copy the stream bytes `r` into `out` (small things: keys, commands).
    fn gather(&self, r: Range<u64>, out: &mut Vec<u8>) {
        out.clear();
        self.with_bytes(r, &mut |b| out.extend_from_slice(b));
    }
}

/// A request/response protocol served over a byte stream.
pub trait Protocol: Send + Sync + 'static {
    /// Per-connection framing state.
    type Conn: Send;
    /// State for a new connection.
    fn conn(&self) -> Self::Conn;
    /// Stream position before which the connection's bytes are no longer needed.
    fn needed_from(&self, c: &Self::Conn) -> u64;
    /// Handle the next chunk of a connection's stream, the stream positions `chunk` (already
    /// readable through `io`): frame requests, act on the store, append replies. Returns false
    /// when the connection must be closed after its replies.
    fn on_chunk(
        &self,
        c: &mut Self::Conn,
        chunk: Range<u64>,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool;
    /// Requests handled (for the stats file).
    fn requests(&self) -> u64;
    /// What a connection beyond `--max-conns` is told before it is closed.
    fn busy_reply(&self) -> &'static [u8];
}

/// Connection limits shared by both engines.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections beyond this are told the server is busy and closed.
    pub max_conns: usize,
    /// A connection with no received bytes for this long is closed.
    pub idle: std::time::Duration,
    /// A request whose first bytes arrived this long ago and that is still incomplete is
    /// dropped with its connection (slow-client / slowloris protection).
    pub request: std::time::Duration,
}

/// The store shared by every worker thread, with per-partition queues of released extents
/// (a buffer goes back to the allocator of the thread that owns its partition).
#[derive(Debug)]
pub struct SharedStore {
    inner: Mutex<SharedInner>,
    parts: Vec<Range<u32>>,
}

#[derive(Debug)]
pub struct SharedInner {
    /// The store.
    pub store: PoolStore,
    returns: Vec<Vec<Extent>>,
}

impl SharedStore {
    /// Wrap a recovered store for workers owning `parts`.
    pub fn new(store: PoolStore, parts: Vec<Range<u32>>) -> Arc<SharedStore> {
        let returns = parts.iter().map(|_| Vec::new()).collect();
        Arc::new(SharedStore {
            inner: Mutex::new(SharedInner { store, returns }),
            parts,
        })
    }

    /// Lock for one batch.
    pub fn lock(&self) -> MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route the store's released extents to their partitions' queues.
    pub fn route_released(&self, g: &mut SharedInner) {
        for e in g.store.take_released() {
            let b = e.buf().0;
            match self.parts.iter().position(|p| p.contains(&b)) {
                Some(i) => g.returns[i].push(e),
                None => tracing::error!(buf = b, "released buffer outside every partition"),
            }
        }
    }

    /// Extents partition `i` must release.
    pub fn take_returns(g: &mut SharedInner, i: usize) -> Vec<Extent> {
        std::mem::take(&mut g.returns[i])
    }

    /// True when the store references buffer `b` (recovery → port allocator).
    pub fn holds(&self, b: BufIdx) -> bool {
        self.lock().store.holds(b)
    }
}

/// Whether a batch should compact or truncate: true when a partition is short of buffers.
pub fn pool_pressure(free: usize, capacity: usize) -> bool {
    free * 8 < capacity
}
