//! The two engines under a [`Protocol`]: the pst port (io_uring) and the epoll baseline.
//!
//! Per batch, both do the same: take what arrived, frame and handle requests (store appends
//! flushed as they go), one group commit, then the replies. The port keeps every received
//! buffer as an extent until the framer no longer needs its bytes, so bodies are stored and
//! values sent without a copy.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{ConnId, Extent, Port, SlotKind};

use crate::error::ServeError;
use crate::metrics::WorkerMetrics;
use crate::protocol::{Io, Limits, Piece, Protocol, PARKED_TICK};
use crate::store::{end_batch, pool_pressure, PoolStore, Retention, SharedStore};
use crate::worker::WorkerCtx;

struct UConn<C> {
    id: ConnId,
    proto: C,
    /// Kept RX extents with the stream position of their first byte.
    chunks: VecDeque<(u64, Extent)>,
    pos: u64,
    pending: Vec<Piece>,
    close_after: bool,
    /// The protocol ended the connection (error, `Connection: close`, QUIT): lingering close.
    dead: bool,
    /// Last time bytes arrived.
    last_rx: Instant,
    /// Since when a request has been incomplete (bytes the framer still needs).
    partial_since: Option<Instant>,
}

struct UringIo<'a> {
    port: &'a mut Port,
    chunks: &'a VecDeque<(u64, Extent)>,
    /// This worker's request count.
    requests: &'a mut u64,
}

impl UringIo<'_> {
    fn overlapping(&self, r: &Range<u64>) -> impl Iterator<Item = (&Extent, u32, u32)> {
        let r = r.clone();
        self.chunks.iter().filter_map(move |(start, e)| {
            let end = start + e.len() as u64;
            let a = r.start.max(*start);
            let b = r.end.min(end);
            (a < b).then(|| (e, (a - start) as u32, (b - a) as u32))
        })
    }
}

impl Io for UringIo<'_> {
    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        for (e, skip, len) in self.overlapping(&r) {
            f(&self.port.bytes(e)[skip as usize..(skip + len) as usize]);
        }
    }

    fn extents(&mut self, r: Range<u64>) -> Option<Vec<Extent>> {
        let parts: Vec<(u32, u32, u32)> = self
            .overlapping(&r)
            .map(|(e, s, l)| (e.buf().0, e.off() + s, l))
            .collect();
        let mut out = Vec::with_capacity(parts.len());
        for (b, off, len) in parts {
            out.push(
                self.port
                    .retain(pst::BufIdx(b), off, len)
                    .expect("a kept chunk holds its buffer"),
            );
        }
        Some(out)
    }

    fn copy_in(&mut self, bytes: &[u8]) -> Option<Vec<Extent>> {
        pst::copy_into(self.port, bytes)
    }

    fn zero_copy(&mut self, extents: &[(u32, u32, u32)]) -> Option<Vec<Extent>> {
        if !extents
            .iter()
            .all(|&(b, _, _)| self.port.owns(pst::BufIdx(b)))
        {
            return None;
        }
        Some(
            extents
                .iter()
                .map(|&(b, o, l)| {
                    self.port
                        .retain(pst::BufIdx(b), o, l)
                        .expect("the store holds it")
                })
                .collect(),
        )
    }

    fn release(&mut self, e: Extent) {
        self.port.release(e);
    }

    fn count_request(&mut self) {
        *self.requests += 1;
    }

    fn has_room(&self, bytes: u64) -> bool {
        crate::protocol::has_room(
            self.port.free_buffers(),
            self.port.capacity(),
            self.port.pool().buf_size(),
            bytes,
        )
    }
}

/// How long a stopping worker lets queued replies go out before it closes what is left.
const DRAIN: Duration = Duration::from_secs(2);

/// Serve `proto` on `port`, accepting on `listener`, until `ctx` says stop; then drain.
pub fn serve<P: Protocol>(
    mut port: Port,
    listener: TcpListener,
    ctx: &WorkerCtx,
    proto: Arc<P>,
    store: Option<Arc<SharedStore>>,
    retention: Retention,
    limits: Limits,
) -> Result<(), ServeError> {
    let io = |what| move |source| ServeError::Io { what, source };
    port.add_listener(listener)
        .map_err(io("adding the listener"))?;
    let mut conns: Vec<Option<UConn<P::Conn>>> = Vec::new();
    let mut open = 0usize;
    let mut next_sweep = Instant::now() + Duration::from_secs(1);
    let mut dirty: Vec<usize> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    // Connections parked in a long poll (see `Protocol::parked`).
    let mut parked: Vec<usize> = Vec::new();
    let fsync = port.pool().persist_mode() == pst::PersistMode::Fsync;
    let mut syncs = 0u64;
    let mut requests = 0u64;
    while !ctx.stopping() {
        let tick = if parked.is_empty() {
            Duration::from_millis(100)
        } else {
            PARKED_TICK
        };
        port.sync(Some(tick)).map_err(io("io_uring_enter"))?;
        let mut guard = store.as_ref().map(|s| s.lock());
        let mut wrote = false;
        while let Some(s) = port.next_rx() {
            let ix = s.conn.index() as usize;
            match s.kind {
                SlotKind::Accepted => {
                    tracing::debug!(conn = ?s.conn, "accepted");
                    if open >= limits.max_conns {
                        // Refuse politely: say why, then a lingering close.
                        if !proto.busy_reply().is_empty() {
                            let _ = port.send_copy(s.conn, proto.busy_reply());
                        }
                        port.close_lingering(s.conn);
                        continue;
                    }
                    if conns.len() <= ix {
                        conns.resize_with(ix + 1, || None);
                    }
                    open += 1;
                    conns[ix] = Some(UConn {
                        id: s.conn,
                        proto: proto.conn(),
                        chunks: VecDeque::new(),
                        pos: 0,
                        pending: Vec::new(),
                        close_after: false,
                        dead: false,
                        last_rx: Instant::now(),
                        partial_since: None,
                    });
                    ctx.metrics()
                        .gauges(open, port.free_buffers(), port.capacity());
                }
                SlotKind::Data => {
                    let Some(c) = conns
                        .get_mut(ix)
                        .and_then(|c| c.as_mut())
                        .filter(|c| c.id == s.conn && !c.dead)
                    else {
                        continue;
                    };
                    let Some(ext) = port.keep(&s) else { continue };
                    ctx.metrics().received(ext.len() as u64);
                    let start = c.pos;
                    c.pos += ext.len() as u64;
                    c.chunks.push_back((start, ext));
                    let before = c.pending.len();
                    let mut io = UringIo {
                        port: &mut port,
                        chunks: &c.chunks,
                        requests: &mut requests,
                    };
                    let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
                    let keep =
                        proto.on_chunk(&mut c.proto, start..c.pos, &mut io, st, &mut c.pending);
                    wrote = true;
                    c.last_rx = Instant::now();
                    after_handling(&mut port, &*proto, c, keep, before, ix, &mut dirty);
                    if proto.parked(&c.proto) {
                        parked.push(ix);
                    }
                }
                SlotKind::End | SlotKind::Error(_) => {
                    tracing::debug!(conn = ?s.conn, kind = ?s.kind, "peer closed");
                    if let Some(c) = conns
                        .get_mut(ix)
                        .and_then(|c| c.as_mut())
                        .filter(|c| c.id == s.conn)
                    {
                        if s.kind == SlotKind::End && proto.parked(&c.proto) {
                            // Half-closed while waiting: answer the wait now.
                            let before = c.pending.len();
                            let mut io = UringIo {
                                port: &mut port,
                                chunks: &c.chunks,
                                requests: &mut requests,
                            };
                            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
                            let keep = proto.peer_closed(&mut c.proto, &mut io, st, &mut c.pending);
                            after_handling(&mut port, &*proto, c, keep, before, ix, &mut dirty);
                        }
                        c.close_after = true;
                        c.dead = false; // the peer is gone: nothing to linger for
                        dirty.push(ix);
                    }
                }
            }
        }
        // Parked connections (long polls): answer those whose wait is over.
        parked.sort_unstable();
        parked.dedup();
        parked.retain(|&ix| {
            let Some(c) = conns
                .get_mut(ix)
                .and_then(|c| c.as_mut())
                .filter(|c| !c.dead && proto.parked(&c.proto))
            else {
                return false;
            };
            let before = c.pending.len();
            let mut io = UringIo {
                port: &mut port,
                chunks: &c.chunks,
                requests: &mut requests,
            };
            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
            let keep = proto.resume(&mut c.proto, &mut io, st, &mut c.pending);
            wrote = true;
            after_handling(&mut port, &*proto, c, keep, before, ix, &mut dirty);
            proto.parked(&c.proto)
        });
        let mut committed = true;
        if let (Some(shared), Some(g)) = (store.as_ref(), guard.as_mut()) {
            if wrote || g.store.needs_commit() {
                let pressure = pool_pressure(port.free_buffers(), port.capacity());
                let (ok, barriers) = end_batch(shared, g, retention, pressure, &ctx.metrics);
                committed = ok;
                syncs += if fsync { barriers } else { 0 };
            }
            for e in SharedStore::take_returns(g, ctx.index) {
                port.release(e);
            }
        }
        drop(guard);
        dirty.append(&mut waiting);
        dirty.sort_unstable();
        dirty.dedup();
        for ix in dirty.drain(..) {
            let Some(c) = conns.get_mut(ix).and_then(|c| c.as_mut()) else {
                continue;
            };
            if !committed {
                for p in c.pending.drain(..) {
                    if let Piece::Ext(e) = p {
                        port.release(e);
                    }
                }
                c.close_after = true;
            }
            send_pending(&mut port, c, ctx.metrics());
            if !c.pending.is_empty() {
                waiting.push(ix); // replies wait for buffers: retried next batch
            } else if c.close_after {
                let c = conns[ix].take().expect("present");
                open -= 1;
                for (_, e) in c.chunks {
                    port.release(e);
                }
                tracing::debug!(conn = ?c.id, linger = c.dead, "closing");
                if c.dead {
                    port.close_lingering(c.id);
                } else {
                    port.close(c.id);
                }
            }
        }
        ctx.publish(port.stats().driver.syscalls() + syncs, requests);
        ctx.metrics()
            .gauges(open, port.free_buffers(), port.capacity());
        // Once a second: close idle connections and those stuck in a slow request.
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + Duration::from_secs(1);
            for slot in conns.iter_mut() {
                let expired = slot.as_ref().is_some_and(|c| {
                    now - c.last_rx > limits.idle
                        || c.partial_since.is_some_and(|t| now - t > limits.request)
                });
                if expired {
                    let c = slot.take().expect("checked");
                    tracing::debug!(conn = ?c.id, "closing an idle or slow connection");
                    open -= 1;
                    for (_, e) in c.chunks {
                        port.release(e);
                    }
                    for p in c.pending {
                        if let Piece::Ext(e) = p {
                            port.release(e);
                        }
                    }
                    port.close(c.id);
                }
            }
        }
    }
    port.shutdown(DRAIN).map_err(io("draining the port"))
}

/// After the protocol handled bytes (or resumed a parked connection): resolve echoed input,
/// mark the connection for sending or closing, release kept buffers the framer no longer
/// needs, and track an incomplete request for the slow-request timeout.
fn after_handling<P: Protocol>(
    port: &mut Port,
    proto: &P,
    c: &mut UConn<P::Conn>,
    keep: bool,
    before: usize,
    ix: usize,
    dirty: &mut Vec<usize>,
) {
    resolve_input(port, &c.chunks, &mut c.pending, before);
    if !keep {
        c.close_after = true;
        c.dead = true;
    }
    if c.pending.len() != before || !keep {
        dirty.push(ix);
    }
    let needed = proto.needed_from(&c.proto);
    while c
        .chunks
        .front()
        .is_some_and(|(st, e)| st + e.len() as u64 <= needed)
    {
        let (_, e) = c.chunks.pop_front().expect("front");
        port.release(e);
    }
    c.partial_since = if needed < c.pos {
        c.partial_since.or(Some(c.last_rx))
    } else {
        None
    };
}

/// Turn the `Piece::Input` ranges among `pending[from..]` into references on the kept chunks
/// holding those bytes (zero copy), while the chunks are still there.
fn resolve_input(
    port: &mut Port,
    chunks: &VecDeque<(u64, Extent)>,
    pending: &mut Vec<Piece>,
    from: usize,
) {
    if !pending[from..].iter().any(|p| matches!(p, Piece::Input(_))) {
        return;
    }
    let tail: Vec<Piece> = pending.drain(from..).collect();
    for p in tail {
        match p {
            Piece::Input(r) => {
                let mut io = UringIo {
                    port: &mut *port,
                    chunks,
                    requests: &mut 0,
                };
                let exts = io.extents(r).unwrap_or_default();
                pending.extend(exts.into_iter().map(Piece::Ext));
            }
            p => pending.push(p),
        }
    }
}

/// Queue a connection's pending reply pieces on the port (small byte pieces coalesced into one
/// buffer copy). Pieces that do not fit for lack of buffers stay pending.
fn send_pending<C>(port: &mut Port, c: &mut UConn<C>, m: &WorkerMetrics) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut pieces = std::mem::take(&mut c.pending).into_iter().peekable();
    while let Some(p) = pieces.next() {
        match p {
            Piece::Bytes(b) => {
                bytes.extend_from_slice(&b);
                if matches!(pieces.peek(), Some(Piece::Bytes(_))) {
                    continue;
                }
                match port.send_copy(c.id, &bytes) {
                    Ok(()) => {
                        m.sent(bytes.len() as u64);
                        bytes.clear();
                    }
                    Err(pst::SendCopyError::PoolExhausted) => {
                        c.pending.push(Piece::Bytes(std::mem::take(&mut bytes)));
                        c.pending.extend(pieces);
                        return;
                    }
                    Err(pst::SendCopyError::Closed) => {
                        release_rest(port, pieces);
                        return;
                    }
                }
            }
            Piece::Ext(e) => {
                m.sent(e.len() as u64);
                if port.send(c.id, e).is_err() {
                    release_rest(port, pieces);
                    return;
                }
            }
            // Resolved right after `on_chunk`; nothing to send if one slipped through.
            Piece::Input(_) => {}
        }
    }
}

fn release_rest(port: &mut Port, rest: impl Iterator<Item = Piece>) {
    for p in rest {
        if let Piece::Ext(e) = p {
            port.release(e);
        }
    }
}
