//! What the HTTP and Redis-protocol services share across engines: the request-handling
//! contract ([`Protocol`]), the byte access each engine provides ([`Io`]), reply pieces, and the
//! store shared by all worker threads.
//!
//! A service is written once; the uring engine gives it zero-copy access (stream ranges map to
//! extents of the pool buffers the bytes landed in), the epoll engine gives it copies (bytes
//! read into a private buffer, copied into pool buffers when stored). Same parsing, same store,
//! same persistence: the baseline differs only in how bytes move.

use std::ops::Range;

use pst::Extent;

use crate::store::PoolStore;

/// One piece of a reply, in order.
#[derive(Debug)]
pub enum Piece {
    /// Bytes to copy out.
    Bytes(Vec<u8>),
    /// A pool extent to send without copying (a stored value).
    Ext(Extent),
    /// The connection's own stream bytes in this range, sent back as they are (echo): from
    /// the pool buffers they landed in on the port, copied on epoll. The range must be part of
    /// what `on_chunk` was handed or still held (not before the `needed_from` of the call's
    /// start); the engine resolves it right after `on_chunk`, before releasing anything.
    Input(Range<u64>),
}

thread_local! {
    /// Emptied reply byte vectors of this worker thread, for the next replies.
    static SPARE_REPLIES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A vector to build reply bytes in ([`Piece::Bytes`]): one the engine gave back with
/// [`recycle_reply`] when there is one, so steady traffic allocates none.
pub fn reply_buf() -> Vec<u8> {
    SPARE_REPLIES
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_default()
}

/// Give back a [`Piece::Bytes`] vector whose bytes were copied out (engines do this).
/// Kept: at most 256 of at most 64 KiB each, per thread.
pub fn recycle_reply(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > 64 << 10 {
        return;
    }
    v.clear();
    SPARE_REPLIES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 256 {
            s.push(v);
        }
    });
}

/// Byte access the engine gives a service for one connection.
pub trait Io {
    /// Call `f` on the stream bytes `r`, piece by piece, in order.
    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8]));
    /// Extents in pool buffers holding the stream bytes `r`, each one buffer reference, for a
    /// store (zero copy on the port; a copy into pool buffers on epoll). `None` when the pool
    /// is exhausted.
    fn extents(&mut self, r: Range<u64>) -> Option<pst_store::ValueExtents>;
    /// Copy `bytes` into fresh pool buffers (values the service computes, e.g. INCR).
    fn copy_in(&mut self, bytes: &[u8]) -> Option<pst_store::ValueExtents>;
    /// New references on a stored value's extents for a zero-copy reply; `None` where that is
    /// not possible (epoll, or buffers of another thread's partition): copy instead.
    fn zero_copy(&mut self, extents: &[(u32, u32, u32)]) -> Option<pst_store::ValueExtents>;

    /// Whether a write of `bytes` may be stored: after it, at least a sixteenth of this
    /// worker's buffers would still be free ([`has_room`]). Below that, writes are refused
    /// with the protocol's "out of space" answer, so that the buffers left keep receiving
    /// requests — reads, deletes, `FLUSHALL` — instead of the whole server starving.
    fn has_room(&self, bytes: u64) -> bool;

    /// Give back an extent obtained from this `Io` that will not be stored or sent.
    fn release(&mut self, e: Extent);

    /// Lend `store`'s log a segment of this worker's free buffers if it wants one
    /// ([`crate::store::lend_segment`]). A KV service calls it before each write command, so
    /// that a pipelined flood finds the log grown within the batch rather than full while the
    /// pool still has room. An `Io` without buffers of its own lends nothing.
    fn lend_segment(&mut self, _store: &mut PoolStore) {}

    /// Count one request handled. The engine keeps the count per worker (published with its
    /// other counters), so requests on different threads never share a cache line.
    fn count_request(&mut self);

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
    /// What a connection beyond `--max-conns` is told before it is closed.
    fn busy_reply(&self) -> &'static [u8];
    /// What a connection is told before it is closed because its unfinished request cannot
    /// be received: the pool is below the write reserve, so the request could not be stored
    /// anyway, and the buffers it would still need are the ones every connection receives
    /// into (the io_uring engine). Empty: just close.
    fn full_reply(&self) -> &'static [u8] {
        b""
    }
    /// The server's metrics, which the engines update and the service may render.
    fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics>;

    /// Whether the connection is parked waiting for something other than its own bytes (a
    /// long poll for new log records). While any connection is, the engine calls
    /// [`Protocol::resume`] on it once per batch, with the store locked, and lets at most
    /// [`PARKED_TICK`] pass between batches.
    fn parked(&self, _c: &Self::Conn) -> bool {
        false
    }

    /// Give a parked connection another chance: answer it if what it waits for arrived or
    /// its deadline passed, then handle requests that queued up behind it. Same contract as
    /// [`Protocol::on_chunk`] (no new bytes).
    fn resume(
        &self,
        _c: &mut Self::Conn,
        _io: &mut dyn Io,
        _store: Option<&mut PoolStore>,
        _reply: &mut Vec<Piece>,
    ) -> bool {
        true
    }

    /// The peer finished sending (a half-close) while the connection is parked: answer the
    /// wait now with what there is, then what queued behind it — a client that half-closes
    /// after its request still gets its replies.
    fn peer_closed(
        &self,
        _c: &mut Self::Conn,
        _io: &mut dyn Io,
        _store: Option<&mut PoolStore>,
        _reply: &mut Vec<Piece>,
    ) -> bool {
        true
    }
}

/// Longest an engine sleeps while a connection is parked (how late a long poll may notice a
/// record another worker appended).
pub const PARKED_TICK: std::time::Duration = std::time::Duration::from_millis(5);

pub use crate::store::has_room;

/// Whether a value of `len` bytes is packed densely ([`pst::Packer`]: copied next to other
/// small values) rather than kept where it landed: non-empty and at most half a buffer. A
/// 100-byte value then costs about 100 bytes of pool instead of a whole buffer; larger values
/// stay zero copy, where one buffer per value wastes at most half of it.
pub fn packs(len: u64, buf_size: u32) -> bool {
    len > 0 && len <= (buf_size / 2) as u64
}

/// Connection limits shared by both engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections beyond this are told the server is busy and closed.
    pub max_conns: usize,
    /// A connection with no received bytes for this long is closed.
    pub idle: std::time::Duration,
    /// A request whose first bytes arrived this long ago and that is still incomplete is
    /// dropped with its connection (slow-client / slowloris protection).
    pub request: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_conns: 10_000,
            idle: std::time::Duration::from_secs(300),
            request: std::time::Duration::from_secs(30),
        }
    }
}

/// A socket-free harness for services: the connection's whole stream in memory, pool buffers
/// from an anonymous pool, and a store on its log region.
#[cfg(test)]
pub(crate) mod testing {
    use std::ops::Range;
    use std::sync::Arc;

    use pst::{Buffers, Extent, Geometry, PersistMode, Pool};

    use super::{Io, Piece, Protocol};
    use crate::store::PoolStore;

    /// One client connection to a service, request by request, without sockets.
    pub(crate) struct Conversation<P: Protocol> {
        pub(crate) svc: P,
        conn: P::Conn,
        io: ScriptIo,
        store: Option<PoolStore>,
        pos: u64,
    }

    impl<P: Protocol> Conversation<P> {
        /// A connection to `svc`, with a fresh store when `with_store`.
        pub(crate) fn new(svc: P, with_store: bool) -> Self {
            let io = ScriptIo::new(b"");
            let store = with_store.then(|| io.store());
            Conversation {
                conn: svc.conn(),
                svc,
                io,
                store,
                pos: 0,
            }
        }

        /// Send `bytes`; returns what the client receives and whether the connection stays.
        pub(crate) fn send(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
            self.io.data.extend_from_slice(bytes);
            let end = self.io.data.len() as u64;
            let mut pieces = Vec::new();
            let keep = self.svc.on_chunk(
                &mut self.conn,
                self.pos..end,
                &mut self.io,
                self.store.as_mut(),
                &mut pieces,
            );
            self.pos = end;
            if let Some(s) = self.store.as_mut() {
                s.commit().expect("commit");
                for e in s.take_released() {
                    self.io.bufs.release(e);
                }
            }
            let out = self.io.render(&pieces);
            for p in pieces {
                if let Piece::Ext(e) = p {
                    self.io.bufs.release(e);
                }
            }
            (out, keep)
        }

        /// Requests the service counted so far.
        pub(crate) fn requests(&self) -> u64 {
            self.io.requests
        }

        /// Whether the connection is parked (a long poll).
        pub(crate) fn parked(&self) -> bool {
            self.svc.parked(&self.conn)
        }

        /// [`Conversation::send`] as text, for protocols that are text.
        pub(crate) fn say(&mut self, s: &str) -> String {
            String::from_utf8_lossy(&self.send(s.as_bytes()).0).into_owned()
        }
    }

    /// [`Io`] over an in-memory stream.
    pub(crate) struct ScriptIo {
        pub(crate) data: Vec<u8>,
        pub(crate) bufs: Buffers,
        pub(crate) pool: Arc<Pool>,
        /// Requests the service counted.
        pub(crate) requests: u64,
    }

    impl ScriptIo {
        pub(crate) fn new(data: &[u8]) -> ScriptIo {
            let g = Geometry::for_size(4 << 20, 2048).expect("geometry");
            let pool = Arc::new(Pool::anonymous(g, PersistMode::None).expect("anonymous pool"));
            let bufs = Buffers::new(pool.claim(0..g.buf_count).expect("unclaimed"), |_| 0);
            ScriptIo {
                data: data.to_vec(),
                bufs,
                pool,
                requests: 0,
            }
        }

        /// A fresh store on this pool's log region.
        pub(crate) fn store(&self) -> PoolStore {
            let media = self.pool.claim_log().expect("log unclaimed");
            let h = *self.pool.header();
            pst_store::Store::open(media, h.log_off..h.log_off + h.geometry.log_len)
                .expect("fresh store")
                .0
        }

        /// The bytes a client would receive for `pieces`.
        pub(crate) fn render(&self, pieces: &[Piece]) -> Vec<u8> {
            let mut out = Vec::new();
            for p in pieces {
                match p {
                    Piece::Bytes(b) => out.extend_from_slice(b),
                    Piece::Ext(e) => out.extend_from_slice(self.bufs.bytes(e)),
                    Piece::Input(r) => {
                        out.extend_from_slice(&self.data[r.start as usize..r.end as usize])
                    }
                }
            }
            out
        }
    }

    impl Io for ScriptIo {
        fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
            f(&self.data[r.start as usize..r.end as usize]);
        }

        fn extents(&mut self, r: Range<u64>) -> Option<pst_store::ValueExtents> {
            pst::copy_into(&mut self.bufs, &self.data[r.start as usize..r.end as usize])
        }

        fn copy_in(&mut self, bytes: &[u8]) -> Option<pst_store::ValueExtents> {
            pst::copy_into(&mut self.bufs, bytes)
        }

        fn zero_copy(&mut self, _: &[(u32, u32, u32)]) -> Option<pst_store::ValueExtents> {
            None
        }

        fn release(&mut self, e: Extent) {
            self.bufs.release(e);
        }

        fn count_request(&mut self) {
            self.requests += 1;
        }

        fn has_room(&self, bytes: u64) -> bool {
            super::has_room(
                self.bufs.free_count(),
                self.bufs.capacity(),
                self.pool.buf_size(),
                bytes,
            )
        }
    }
}
