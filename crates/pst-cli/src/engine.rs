//! The two engines under a [`Protocol`]: the pst port (io_uring) and the epoll baseline.
//!
//! Per batch, both do the same: take what arrived, frame and handle requests (store appends
//! flushed as they go), one group commit, then the replies. The port keeps every received
//! buffer as an extent until the framer no longer needs its bytes, so bodies are stored and
//! values sent without a copy.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{Buffers, ConnId, Extent, Port, SlotKind};

use crate::epoll::{StreamApp, Verdict};
use crate::server::{drain_port, Worker};
use crate::service::{pool_pressure, Io, Limits, Piece, PoolStore, Protocol, SharedStore};

/// Whether the store is a WAL (retention by dropping the oldest segment) or a KV (compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Drop the oldest records when space runs low.
    Wal,
    /// Compact the oldest segment when space runs low.
    Compact,
}

/// End-of-batch store work: reclaim space if needed, group commit, route released buffers.
/// Returns whether the commit succeeded (else the store is poisoned) and how many persist
/// barriers it issued (each an `fdatasync` in Fsync mode).
pub fn end_batch(
    shared: &SharedStore,
    g: &mut crate::service::SharedInner,
    retention: Retention,
    pressure: bool,
) -> (bool, u64) {
    let commits_before = g.store.stats().commits;
    let (free, total) = g.store.segment_space();
    let low = free * 4 < total;
    let res = match retention {
        Retention::Wal => {
            if low || pressure {
                g.store.drop_oldest_segment();
            }
            Ok(true)
        }
        Retention::Compact => g.store.maintain(pressure),
    };
    if let Err(e) = res {
        tracing::error!(error = %e, "store maintenance failed");
    }
    let ok = match g.store.commit() {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "group commit failed: replies withheld, connections closed");
            false
        }
    };
    shared.route_released(g);
    (ok, g.store.stats().commits - commits_before)
}

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
}

/// Serve `proto` on a worker's port.
pub fn uring<P: Protocol>(
    mut w: Worker,
    proto: Arc<P>,
    store: Option<Arc<SharedStore>>,
    retention: Retention,
    limits: Limits,
) -> anyhow::Result<()> {
    let mut port = w.port.take().expect("uring worker has a port");
    port.add_listener(w.take_listener()?)?;
    let mut conns: Vec<Option<UConn<P::Conn>>> = Vec::new();
    let mut open = 0usize;
    let mut next_sweep = Instant::now() + Duration::from_secs(1);
    let mut dirty: Vec<usize> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    let fsync = port.pool().persist_mode() == pst::PersistMode::Fsync;
    let mut syncs = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        port.sync(Some(Duration::from_millis(100)))?;
        let mut guard = store.as_ref().map(|s| s.lock());
        let mut wrote = false;
        for i in 0..port.rx().len() {
            let s = port.rx()[i];
            let ix = s.conn.index() as usize;
            match s.kind {
                SlotKind::Accepted => {
                    tracing::debug!(conn = ?s.conn, "accepted");
                    if open >= limits.max_conns {
                        // Refuse politely: say why, then a lingering close.
                        let _ = port.send_copy(s.conn, proto.busy_reply());
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
                    let start = c.pos;
                    c.pos += ext.len() as u64;
                    c.chunks.push_back((start, ext));
                    let before = c.pending.len();
                    let mut io = UringIo {
                        port: &mut port,
                        chunks: &c.chunks,
                    };
                    let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
                    let keep =
                        proto.on_chunk(&mut c.proto, start..c.pos, &mut io, st, &mut c.pending);
                    wrote = true;
                    if !keep {
                        c.close_after = true;
                        c.dead = true;
                    }
                    if c.pending.len() != before || !keep {
                        dirty.push(ix);
                    }
                    // Release kept buffers the framer no longer needs.
                    let needed = proto.needed_from(&c.proto);
                    while c
                        .chunks
                        .front()
                        .is_some_and(|(st, e)| st + e.len() as u64 <= needed)
                    {
                        let (_, e) = c.chunks.pop_front().expect("front");
                        port.release(e);
                    }
                    c.last_rx = Instant::now();
                    c.partial_since = if needed < c.pos {
                        c.partial_since.or(Some(c.last_rx))
                    } else {
                        None
                    };
                }
                SlotKind::End | SlotKind::Error(_) => {
                    tracing::debug!(conn = ?s.conn, kind = ?s.kind, "peer closed");
                    if let Some(c) = conns
                        .get_mut(ix)
                        .and_then(|c| c.as_mut())
                        .filter(|c| c.id == s.conn)
                    {
                        c.close_after = true;
                        c.dead = false; // the peer is gone: nothing to linger for
                        dirty.push(ix);
                    }
                }
            }
        }
        let mut committed = true;
        if let (Some(shared), Some(g)) = (store.as_ref(), guard.as_mut()) {
            if wrote || g.store.needs_commit() {
                let pressure = pool_pressure(port.free_buffers(), port.capacity());
                let (ok, barriers) = end_batch(shared, g, retention, pressure);
                committed = ok;
                syncs += if fsync { barriers } else { 0 };
            }
            for e in SharedStore::take_returns(g, w.index) {
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
            send_pending(&mut port, c);
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
        if let Some(st) = &w.stats {
            st.set(
                w.index,
                port.stats().driver.syscalls() + syncs,
                proto.requests(),
            );
        }
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
    drain_port(&mut port)
}

/// Queue a connection's pending reply pieces on the port (small byte pieces coalesced into one
/// buffer copy). Pieces that do not fit for lack of buffers stay pending.
fn send_pending<C>(port: &mut Port, c: &mut UConn<C>) {
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
                    Ok(()) => bytes.clear(),
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
                if port.send(c.id, e).is_err() {
                    release_rest(port, pieces);
                    return;
                }
            }
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

/// The epoll engine's side of a service: per-connection read buffer, copies into pool
/// buffers for the store.
pub struct EpollService<P: Protocol> {
    proto: Arc<P>,
    bufs: Buffers,
    store: Option<Arc<SharedStore>>,
    part: usize,
    retention: Retention,
    wrote: bool,
    fsync: bool,
    syncs: u64,
}

impl<P: Protocol> EpollService<P> {
    /// The service for worker partition `part`, with its buffers.
    pub fn new(
        proto: Arc<P>,
        bufs: Buffers,
        store: Option<Arc<SharedStore>>,
        part: usize,
        retention: Retention,
        fsync: bool,
    ) -> Self {
        EpollService {
            proto,
            bufs,
            store,
            part,
            retention,
            wrote: false,
            fsync,
            syncs: 0,
        }
    }
}

/// Per-connection state of the epoll engine.
pub struct EConn<C> {
    proto: Option<C>,
    data: Vec<u8>,
    base: u64,
}

impl<C> Default for EConn<C> {
    fn default() -> Self {
        EConn {
            proto: None,
            data: Vec::new(),
            base: 0,
        }
    }
}

struct EpollIo<'a> {
    data: &'a [u8],
    base: u64,
    bufs: &'a mut Buffers,
}

impl Io for EpollIo<'_> {
    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        f(&self.data[(r.start - self.base) as usize..(r.end - self.base) as usize]);
    }

    fn extents(&mut self, r: Range<u64>) -> Option<Vec<Extent>> {
        let bytes = &self.data[(r.start - self.base) as usize..(r.end - self.base) as usize];
        pst::copy_into(self.bufs, bytes)
    }

    fn copy_in(&mut self, bytes: &[u8]) -> Option<Vec<Extent>> {
        pst::copy_into(self.bufs, bytes)
    }

    fn zero_copy(&mut self, _: &[(u32, u32, u32)]) -> Option<Vec<Extent>> {
        None
    }
}

impl<P: Protocol> StreamApp for EpollService<P> {
    type Conn = EConn<P::Conn>;

    fn on_data(&mut self, c: &mut EConn<P::Conn>, data: &[u8], out: &mut Vec<u8>) -> Verdict {
        let proto = c.proto.get_or_insert_with(|| self.proto.conn());
        let start = c.base + c.data.len() as u64;
        c.data.extend_from_slice(data);
        let mut pieces = Vec::new();
        let mut guard = self.store.as_ref().map(|s| s.lock());
        let keep = {
            let mut io = EpollIo {
                data: &c.data,
                base: c.base,
                bufs: &mut self.bufs,
            };
            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
            self.proto.on_chunk(
                proto,
                start..start + data.len() as u64,
                &mut io,
                st,
                &mut pieces,
            )
        };
        drop(guard);
        self.wrote = true;
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Ext(e) => {
                    out.extend_from_slice(self.bufs.bytes(&e));
                    self.bufs.release(e);
                }
            }
        }
        let needed = self.proto.needed_from(proto);
        let drop_n = (needed.saturating_sub(c.base) as usize).min(c.data.len());
        c.data.drain(..drop_n);
        c.base += drop_n as u64;
        if keep {
            Verdict::Continue
        } else {
            Verdict::Close
        }
    }

    fn commit(&mut self) -> bool {
        let Some(shared) = self.store.clone() else {
            return true;
        };
        let mut g = shared.lock();
        let mut ok = true;
        if self.wrote || g.store.needs_commit() {
            let pressure = pool_pressure(self.bufs.free_count(), self.bufs.capacity());
            let (committed, barriers) = end_batch(&shared, &mut g, self.retention, pressure);
            ok = committed;
            self.syncs += if self.fsync { barriers } else { 0 };
            self.wrote = false;
        }
        for e in SharedStore::take_returns(&mut g, self.part) {
            self.bufs.release(e);
        }
        ok
    }

    fn requests(&self) -> u64 {
        self.proto.requests()
    }

    fn extra_syscalls(&self) -> u64 {
        self.syncs
    }

    fn has_partial(&self, c: &EConn<P::Conn>) -> bool {
        c.proto
            .as_ref()
            .is_some_and(|p| self.proto.needed_from(p) < c.base + c.data.len() as u64)
    }

    fn busy_reply(&self) -> &'static [u8] {
        self.proto.busy_reply()
    }
}
