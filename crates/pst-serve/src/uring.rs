//! The two engines under a [`Protocol`]: the pst port (io_uring) and the epoll baseline.
//!
//! Per batch, both do the same: take what arrived, frame and handle requests (store appends
//! flushed as they go), one group commit, then the replies. The port keeps every received
//! buffer as an extent until the framer no longer needs its bytes, so bodies are stored and
//! values sent without a copy.
//!
//! **Pipelined group commit** (`--persist fsync` on a pool file). The batch's commit is begun
//! ([`pst_store::Store::begin_commit`]: every record appended so far, by any worker) and its
//! barrier — an `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` of the pool file — goes out in
//! the same `io_uring_enter` as the batch's sends and re-arms. While it runs in the kernel the
//! loop keeps receiving, parsing and applying the next batch; when its completion is reaped
//! the commit is finished (`durable_seq` advances) at the start of that round, and the next one
//! is begun at its end. `none` and `pmem` commit inline: a `sfence` (or nothing) costs less
//! than a round trip through the ring, and the fence must run on the thread that flushed.
//!
//! **One commit in flight**, for the whole store: an `fdatasync` started while another runs on
//! the same file mostly waits for it (the same dirty pages, the same journal commit), so a
//! second one would buy little and split batches; meanwhile appends accumulate into the next
//! commit, which is exactly group commit; and segment retirement (one invalidation durable per
//! barrier, in order) stays as simple as inline.
//!
//! **Replies are gated by sequence number, not by batch.** After each call into the service,
//! the store says which records the replies it just produced read or wrote
//! ([`pst_store::Store::take_dependency`]). Replies whose records are all durable go out at once
//! — a `GET` of committed data never waits for anyone's `fdatasync` — the others are held per
//! connection, in order (`UConn::held`: a read queued behind a held write waits too), until
//! `durable_seq` covers them. Another worker's appends are visible once it releases the lock,
//! so a read of them is held the same way; the worker whose port completes a commit wakes the
//! workers waiting on it (`IORING_OP_MSG_RING` into their rings; a short wait bound backs it up).
//!
//! **On failure** the store is poisoned ([`pst_store::Store::finish_commit`]): held replies
//! are dropped and their connections closed, never sent; every later write is refused.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{ConnId, Extent, Port, SlotKind};

use crate::error::ServeError;
use crate::metrics::WorkerMetrics;
use crate::protocol::{Io, Limits, Piece, Protocol, PARKED_TICK};
use crate::store::{
    begin_commit, end_batch, finish_commit, maintain, pool_pressure, PoolStore, Retention,
    SharedStore,
};
use crate::worker::WorkerCtx;

struct UConn<C> {
    id: ConnId,
    proto: C,
    /// Kept RX extents with the stream position of their first byte.
    chunks: VecDeque<(u64, Extent)>,
    pos: u64,
    /// Stream position up to which bytes were handed to the protocol (`pos` unless stalled).
    fed: u64,
    /// Its replies hold too much of the pool (a client not reading them): its requests wait,
    /// unparsed, and its receiving is paused ([`Port::pause_rx`]), until the backlog halves
    /// (`backlog_cap`).
    stalled: bool,
    /// Reply pieces free to go (they wait only for buffers). All of them precede `held`.
    pending: Vec<Piece>,
    /// Reply pieces waiting for durability, in order, in the groups `gates` describes.
    held: VecDeque<Piece>,
    /// `(bound, pieces)` per group of `held`: a group may leave once the store's `durable_seq`
    /// reaches its bound, and only after every group before it.
    gates: VecDeque<(u64, usize)>,
    close_after: bool,
    /// The protocol ended the connection (error, `Connection: close`, QUIT): lingering close.
    dead: bool,
    /// Last time bytes arrived.
    last_rx: Instant,
    /// Since when a request has been incomplete (bytes the framer still needs).
    partial_since: Option<Instant>,
    /// Bytes sent by the last sweep ([`Port::tx_sent_total`]).
    sent_seen: u64,
    /// Its socket's unacknowledged bytes at the last sweep (`Port::unacked_bytes`).
    unacked_seen: u32,
    /// Sweeps in a row that found replies queued and nothing sent since the sweep before.
    idle_sweeps: u8,
    /// Two such sweeps (replies queued for over a second and none went out): the peer does
    /// not read. Aborted when the pool runs short ([`abort_stuck`]).
    stuck: bool,
}

struct UringIo<'a> {
    port: &'a mut Port,
    chunks: &'a VecDeque<(u64, Extent)>,
    /// This worker's request count.
    requests: &'a mut u64,
    /// Packs values of at most half a buffer densely ([`crate::protocol::packs`]); `None`:
    /// keep every byte where it landed (echo's `Piece::Input`).
    packer: Option<&'a mut pst::Packer>,
}

impl UringIo<'_> {
    fn overlapping(&self, r: &Range<u64>) -> impl Iterator<Item = (&Extent, u32, u32)> {
        overlapping(self.chunks, r)
    }
}

/// The kept chunks overlapping stream range `r`: each chunk, the offset of the overlap in it,
/// and its length.
fn overlapping<'c>(
    chunks: &'c VecDeque<(u64, Extent)>,
    r: &Range<u64>,
) -> impl Iterator<Item = (&'c Extent, u32, u32)> {
    let r = r.clone();
    chunks.iter().filter_map(move |(start, e)| {
        let end = start + e.len() as u64;
        let a = r.start.max(*start);
        let b = r.end.min(end);
        (a < b).then(|| (e, (a - start) as u32, (b - a) as u32))
    })
}

/// A new reference on each kept chunk's part of stream range `r`, in order (zero copy).
fn retain_range(
    port: &mut Port,
    chunks: &VecDeque<(u64, Extent)>,
    r: &Range<u64>,
    mut out: impl FnMut(Extent),
) {
    for (e, s, l) in overlapping(chunks, r) {
        out(port
            .retain(e.buf(), e.off() + s, l)
            .expect("a kept chunk holds its buffer"));
    }
}

impl Io for UringIo<'_> {
    fn lend_segment(&mut self, store: &mut PoolStore) {
        if let Err(back) = crate::store::lend_segment(store, &mut *self.port) {
            back.into_iter().for_each(|e| self.port.release(e));
        }
    }

    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        for (e, skip, len) in self.overlapping(&r) {
            f(&self.port.bytes(e)[skip as usize..(skip + len) as usize]);
        }
    }

    fn extents(&mut self, r: Range<u64>) -> Option<pst_store::ValueExtents> {
        let packs = crate::protocol::packs(r.end - r.start, self.port.pool().buf_size());
        if let Some(mut v) = self
            .packer
            .as_mut()
            .filter(|_| packs)
            .map(|p| p.take_scratch())
        {
            self.gather(r, &mut v);
            let packer = self.packer.as_mut().expect("taken from it");
            let e = packer.pack(self.port, &v);
            packer.put_scratch(v);
            return Some(smallvec::smallvec![e?]);
        }
        let mut out = pst_store::ValueExtents::with_capacity(self.overlapping(&r).count());
        retain_range(self.port, self.chunks, &r, |e| out.push(e));
        Some(out)
    }

    fn copy_in(&mut self, bytes: &[u8]) -> Option<pst_store::ValueExtents> {
        if let Some(packer) = self.packer.as_mut() {
            if crate::protocol::packs(bytes.len() as u64, self.port.pool().buf_size()) {
                return Some(smallvec::smallvec![packer.pack(self.port, bytes)?]);
            }
        }
        pst::copy_into(self.port, bytes)
    }

    fn zero_copy(&mut self, extents: &[(u32, u32, u32)]) -> Option<pst_store::ValueExtents> {
        if !extents
            .iter()
            .all(|&(b, _, _)| self.port.owns(pst::BufIdx(b)))
        {
            return None;
        }
        let mut out = pst_store::ValueExtents::with_capacity(extents.len());
        for &(b, o, l) in extents {
            match self.port.retain(pst::BufIdx(b), o, l) {
                Some(e) => out.push(e),
                // The buffer's reference count is at its limit (tens of thousands of replies
                // of one value queued, e.g. to a client that does not read): copy instead.
                None => {
                    out.into_iter().for_each(|e| self.port.release(e));
                    return None;
                }
            }
        }
        Some(out)
    }

    fn release(&mut self, e: Extent) {
        self.port.release(e);
    }

    fn count_request(&mut self) {
        *self.requests += 1;
    }

    fn has_room(&self, bytes: u64) -> bool {
        // Spare, not just free: a burst's receive buffers still lent to the kernel refused
        // every write after it (an 8 MiB pool took ~120 deletes to accept one again).
        crate::protocol::has_room(
            self.port.spare_buffers(),
            self.port.capacity(),
            self.port.pool().buf_size(),
            bytes,
        )
    }
}

/// How long a stopping worker lets queued replies go out before it closes what is left.
const DRAIN: Duration = Duration::from_secs(2);
/// Longest wait while replies are held for a commit another worker's port runs: that worker
/// wakes this one when it completes; this bounds the delay should a wake-up be lost.
const HELD_TICK: Duration = Duration::from_millis(2);
/// After a commit's replies are released, the next commit waits (at most this long) for the
/// connections they released to send their next requests. Begun at once, it would leave them
/// for the commit after: in a closed loop the clients split into two groups taking turns, and
/// each `fdatasync` covers half of them. The wait counts from the end of the enter that sent
/// the replies, not from their release: sending a hundred replies on loopback takes that
/// enter a millisecond or more, and the requests that arrive meanwhile are posted only at the
/// enter after it (counted from the release, the gathering ended with one request in, and
/// commits alternated between one request and the other ninety-nine).
const GATHER: Duration = Duration::from_micros(200);

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
    // Small values are packed densely into this worker's buffers.
    let mut packer = pst::Packer::new();
    // Connections with replies held for durability.
    let mut holding: Vec<usize> = Vec::new();
    // Connections parked in a long poll (see `Protocol::parked`).
    let mut parked: Vec<usize> = Vec::new();
    let fsync = port.pool().persist_mode() == pst::PersistMode::Fsync;
    // Commits run their barrier in the background (module docs) when it is an fdatasync of
    // the very pool file this port receives into and the store logs into.
    // Otherwise commits are inline, before the batch's replies leave and under the lock the
    // whole batch holds: nothing needs gating.
    let background = store.as_ref().is_some_and(|s| {
        let g = s.lock();
        Arc::ptr_eq(g.store.media().pool(), port.pool())
    }) && port.pool().syncs_file();
    if let Some(s) = &store {
        s.lock().set_waker(ctx.index, port.waker().ok());
    }
    let mut wake: Vec<pst::Waker> = Vec::new();
    // A completed background commit not finished yet (`SharedStore::hold_commits`).
    let mut unfinished: Option<Result<(), pst::PersistError>> = None;
    let mut syncs = 0u64;
    let mut requests = 0u64;
    // Gathering for the next commit (`GATHER`): since when (`None` until the replies' enter
    // returned), how many connections were released, and how many requests arrived since.
    let mut gather: Option<(Option<Instant>, usize)> = None;
    let mut arrivals = 0usize;
    // Connections whose replies hold more buffers than this wait (`UConn::stalled`): one
    // client that pipelines requests and never reads the replies must not drain the pool that
    // every other connection receives into.
    let backlog_cap = (port.capacity() / 16).max(64);
    let mut stalled: Vec<usize> = Vec::new();
    // The loop state handing bytes to the protocol touches (borrowed afresh at each use).
    macro_rules! handling {
        () => {
            Handling {
                port: &mut port,
                requests: &mut requests,
                packer: &mut packer,
                dirty: &mut dirty,
                holding: &mut holding,
                parked: &mut parked,
            }
        };
    }
    while !ctx.stopping() {
        let gathering =
            gather.map(|(t, _)| t.map_or(GATHER, |t| GATHER.saturating_sub(t.elapsed())));
        let tick = if let Some(left) = gathering.filter(|l| !l.is_zero()) {
            left
        } else if !parked.is_empty() {
            PARKED_TICK
        } else if (!holding.is_empty() && !port.pool_sync_in_flight()) || unfinished.is_some() {
            HELD_TICK
        } else {
            Duration::from_millis(100)
        };
        port.sync(Some(tick)).map_err(io("io_uring_enter"))?;
        // One clock read per batch (arrival times for the slow-client sweep, the gathering).
        let batch_now = Instant::now();
        if let Some((since @ None, _)) = gather.as_mut() {
            *since = Some(batch_now);
        }
        let mut synced = unfinished.take().or_else(|| port.pool_synced());
        if store.as_ref().is_some_and(|s| s.commits_held()) {
            unfinished = synced.take(); // a test holds the commit in flight
        }
        let mut guard = store.as_ref().map(|s| s.lock());
        let mut committed = true;
        if let (Some(shared), Some(g)) = (store.as_ref(), guard.as_mut()) {
            // What maintenance or another worker left behind is no reply's dependency.
            g.store.take_dependency();
            if let Some(r) = synced {
                committed = finish_commit(shared, g, r, &ctx.metrics, &mut wake);
            }
        }
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
                        fed: 0,
                        stalled: false,
                        pending: Vec::new(),
                        held: VecDeque::new(),
                        gates: VecDeque::new(),
                        close_after: false,
                        dead: false,
                        last_rx: batch_now,
                        partial_since: None,
                        sent_seen: 0,
                        unacked_seen: 0,
                        idle_sweeps: 0,
                        stuck: false,
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
                    arrivals += 1;
                    let start = c.pos;
                    c.pos += ext.len() as u64;
                    c.chunks.push_back((start, ext));
                    c.last_rx = batch_now;
                    if c.stalled {
                        // Its requests wait, and its receiving is paused (`feed`): what
                        // arrives now was under way before the pause took effect. A client
                        // may well write a whole pipeline before it reads a reply (redis-rs
                        // does), so its input is kept; one that reads nothing is reset by
                        // `abort_stuck` once the pool runs short.
                        continue;
                    }
                    wrote = true;
                    let mut h = handling!();
                    let g = guard.as_deref_mut();
                    feed(&mut h, &*proto, c, ix, g, background, backlog_cap);
                    if c.stalled {
                        stalled.push(ix);
                    }
                }
                SlotKind::End | SlotKind::Error(_) => {
                    tracing::debug!(conn = ?s.conn, kind = ?s.kind, "peer closed");
                    if let Some(c) = conns
                        .get_mut(ix)
                        .and_then(|c| c.as_mut())
                        .filter(|c| c.id == s.conn)
                    {
                        if s.kind == SlotKind::End && c.fed < c.pos && !c.close_after {
                            // Half-closed with requests still waiting (stalled): the client
                            // reads on, so answer them all, as they were answered before the
                            // stall existed, rather than close with them unanswered.
                            c.stalled = false;
                            wrote = true;
                            let mut h = handling!();
                            let g = guard.as_deref_mut();
                            feed(&mut h, &*proto, c, ix, g, background, usize::MAX);
                        }
                        if s.kind == SlotKind::End && proto.parked(&c.proto) && !c.dead {
                            // Half-closed while waiting: answer the wait now.
                            let before = c.pending.len();
                            let mut io = UringIo {
                                port: &mut port,
                                chunks: &c.chunks,
                                requests: &mut requests,
                                packer: Some(&mut packer),
                            };
                            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
                            let keep = proto.peer_closed(&mut c.proto, &mut io, st, &mut c.pending);
                            after_handling(&mut port, &*proto, c, keep, before, ix, &mut dirty);
                            hold_new(
                                c,
                                before,
                                guard.as_deref().filter(|_| background),
                                ix,
                                &mut holding,
                            );
                        }
                        c.close_after = true;
                        c.dead = false; // the peer is gone: nothing to linger for
                        dirty.push(ix);
                    }
                }
            }
        }
        // Stalled connections whose client read enough of its replies: their requests go on.
        stalled.retain(|&ix| {
            let Some(c) = conns
                .get_mut(ix)
                .and_then(|c| c.as_mut())
                .filter(|c| c.stalled && !c.close_after)
            else {
                return false;
            };
            if backlog(&port, c) > backlog_cap / 2 {
                return true;
            }
            c.stalled = false;
            port.resume_rx(c.id);
            // Receiving starts again now: an unfinished request's clock too.
            c.last_rx = batch_now;
            c.partial_since = None;
            wrote = true;
            let mut h = handling!();
            feed(
                &mut h,
                &*proto,
                c,
                ix,
                guard.as_deref_mut(),
                background,
                backlog_cap,
            );
            c.stalled
        });
        // Connections that do not read their replies hold pool buffers that every connection
        // receives into: when the pool runs short, the biggest holders go.
        abort_stuck(&mut port, &mut conns, &mut dirty);
        // Parked connections (long polls): answer those whose wait is over.
        parked.sort_unstable();
        parked.dedup();
        parked.retain(|&ix| {
            let Some(c) = conns
                .get_mut(ix)
                .and_then(|c| c.as_mut())
                .filter(|c| !c.dead && !c.close_after && proto.parked(&c.proto))
            else {
                return false;
            };
            let before = c.pending.len();
            let mut io = UringIo {
                port: &mut port,
                chunks: &c.chunks,
                requests: &mut requests,
                packer: Some(&mut packer),
            };
            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
            let keep = proto.resume(&mut c.proto, &mut io, st, &mut c.pending);
            wrote = true;
            after_handling(&mut port, &*proto, c, keep, before, ix, &mut dirty);
            hold_new(
                c,
                before,
                guard.as_deref().filter(|_| background),
                ix,
                &mut holding,
            );
            proto.parked(&c.proto)
        });
        if let (Some(shared), Some(g)) = (store.as_ref(), guard.as_mut()) {
            if background {
                // Replies a commit finished this round made sendable go out with this round's
                // sends; the connections they release then get a moment to join the next one.
                let before = dirty.len();
                release_held(&mut conns, &mut holding, &g.store, &mut dirty, &mut port);
                if dirty.len() > before {
                    gather = Some((None, dirty.len() - before));
                    arrivals = 0;
                }
            }
            let gathered = gather
                .is_none_or(|(t, n)| arrivals >= n || t.is_some_and(|t| t.elapsed() >= GATHER));
            if (wrote || g.store.needs_commit()) && (!background || gathered) {
                gather = None;
                let pressure = pool_pressure(port.free_buffers(), port.capacity());
                if background {
                    maintain(g, retention, pressure);
                    match begin_commit(g, ctx.index) {
                        Ok(false) => {}
                        // The barrier goes out with this batch's sends, in the next enter.
                        Ok(true) if port.sync_pool().map_err(io("queueing the fsync"))? => {}
                        // The pool was poisoned meanwhile: no fsync to run; fail the commit.
                        Ok(true) => {
                            let r = port.pool().barrier();
                            committed &= finish_commit(shared, g, r, &ctx.metrics, &mut wake);
                        }
                        Err(()) => committed = false,
                    }
                } else {
                    let (ok, barriers) = end_batch(shared, g, retention, pressure, &ctx.metrics);
                    committed &= ok;
                    syncs += if fsync { barriers } else { 0 };
                }
            }
            // Held replies whose records are durable now join the sendable ones.
            let front = release_held(&mut conns, &mut holding, &g.store, &mut dirty, &mut port);
            g.wait_for(ctx.index, front);
            shared.grow(g, retention, &mut port);
            for e in SharedStore::drain_returns(g, ctx.index) {
                port.release(e);
            }
        }
        drop(guard);
        for w in wake.drain(..) {
            port.wake(&w).map_err(io("waking a worker"))?;
        }
        // After everything this pass released (other workers' returns, maintenance).
        shed_partial(&mut port, &mut conns, &mut dirty, &*proto);
        dirty.append(&mut waiting);
        dirty.sort_unstable();
        dirty.dedup();
        for ix in dirty.drain(..) {
            let Some(c) = conns.get_mut(ix).and_then(|c| c.as_mut()) else {
                continue;
            };
            if !committed {
                drop_replies(&mut port, c);
            }
            send_pending(&mut port, c, ctx.metrics());
            if !c.pending.is_empty() {
                waiting.push(ix); // replies wait for buffers: retried next batch
            } else if c.close_after && c.gates.is_empty() {
                let c = conns[ix].take().expect("present");
                open -= 1;
                for (_, e) in c.chunks {
                    port.release(e);
                }
                tracing::debug!(conn = ?c.id, linger = c.dead, txq = port.tx_pieces(c.id), free = port.free_buffers(), "closing");
                if c.dead {
                    port.close_lingering(c.id);
                } else {
                    port.close(c.id);
                }
            }
        }
        let stats = port.stats();
        ctx.publish(stats.driver.syscalls() + syncs, requests);
        ctx.metrics().ring_empty(stats.core.enobufs);
        ctx.metrics()
            .gauges(open, port.free_buffers(), port.capacity());
        // Once a second: close idle connections and those stuck in a slow request.
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + Duration::from_secs(1);
            for c in conns.iter_mut().flatten() {
                // One sweep is not enough: this batch's replies are queued but not yet
                // submitted, so a client that got nothing in the last second would look stuck.
                // Progress is a send completing, or the socket's unacknowledged bytes falling:
                // a send waiting on a full socket buffer (it grows to megabytes) completes
                // only once much of it has drained, which takes seconds for a client reading
                // a few hundred KB/s, and such a client was reset as one that reads nothing.
                let sent = port.tx_sent_total(c.id);
                let waiting = port.tx_pieces(c.id) > 0;
                let unacked = match waiting {
                    true => port.unacked_bytes(c.id).unwrap_or(0),
                    false => 0,
                };
                let moved = sent != c.sent_seen || unacked < c.unacked_seen;
                c.unacked_seen = unacked;
                c.idle_sweeps = if waiting && !moved {
                    c.idle_sweeps.saturating_add(1)
                } else {
                    0
                };
                c.stuck = c.idle_sweeps >= 2;
                // A stalled connection receives nothing (paused) while its client reads the
                // replies: that reading is its activity, not idleness.
                if c.stalled && moved {
                    c.last_rx = now;
                }
                c.sent_seen = sent;
            }
            for slot in conns.iter_mut() {
                let expired = slot.as_ref().is_some_and(|c| {
                    // A stalled connection's unfinished request waits on the server (its
                    // receiving is paused), not on a slow client.
                    now - c.last_rx > limits.idle
                        || (!c.stalled && c.partial_since.is_some_and(|t| now - t > limits.request))
                });
                if expired {
                    let mut c = slot.take().expect("checked");
                    tracing::debug!(conn = ?c.id, "closing an idle or slow connection");
                    open -= 1;
                    for (_, e) in c.chunks.drain(..) {
                        port.release(e);
                    }
                    drop_replies(&mut port, &mut c);
                    match c.stuck {
                        // Its peer reads nothing: do not wait for the queued replies to go.
                        true => port.abort(c.id),
                        false => port.close(c.id),
                    }
                }
            }
        }
    }
    if let Some(shared) = &store {
        if let Some(r) = unfinished {
            let mut wake = Vec::new();
            finish_commit(shared, &mut shared.lock(), r, &ctx.metrics, &mut wake);
        }
        finish_in_flight(&mut port, shared, ctx, retention, &mut conns, &mut holding)?;
    }
    packer.close(&mut port);
    port.shutdown(DRAIN).map_err(io("draining the port"))
}

/// Stopping: let the commit this port runs complete, make the rest durable inline (after any
/// other worker's commit in flight), and queue every reply that became sendable, so that
/// [`Port::shutdown`] sends them before it closes the connections. Workers still waiting are
/// woken: no commit of this port will wake them any more.
fn finish_in_flight<C>(
    port: &mut Port,
    shared: &SharedStore,
    ctx: &WorkerCtx,
    retention: Retention,
    conns: &mut [Option<UConn<C>>],
    holding: &mut Vec<usize>,
) -> Result<(), ServeError> {
    let io = |what| move |source| ServeError::Io { what, source };
    let deadline = Instant::now() + DRAIN;
    let mut wake = Vec::new();
    let mut g = loop {
        port.sync(Some(Duration::from_millis(1)))
            .map_err(io("io_uring_enter"))?;
        let mut g = shared.lock();
        if let Some(r) = port.pool_synced() {
            finish_commit(shared, &mut g, r, &ctx.metrics, &mut wake);
        }
        let others = g.commit_owner().is_some_and(|o| o != ctx.index);
        if !port.pool_sync_in_flight() && (!others || Instant::now() >= deadline) {
            break g;
        }
    };
    if g.store.commit_in_flight().is_none() && g.store.needs_commit() {
        let pressure = pool_pressure(port.free_buffers(), port.capacity());
        end_batch(shared, &mut g, retention, pressure, &ctx.metrics);
    }
    let mut dirty = Vec::new();
    release_held(conns, holding, &g.store, &mut dirty, port);
    g.wait_for(ctx.index, 0);
    g.set_waker(ctx.index, None);
    g.waiting_wakers(ctx.index, &mut wake);
    for e in SharedStore::drain_returns(&mut g, ctx.index) {
        port.release(e);
    }
    drop(g);
    for w in wake {
        port.wake(&w).map_err(io("waking a worker"))?;
    }
    for ix in dirty {
        if let Some(c) = conns.get_mut(ix).and_then(|c| c.as_mut()) {
            send_pending(port, c, ctx.metrics());
        }
    }
    Ok(())
}

/// Buffers a connection's replies hold: pieces not yet queued, held for durability, or queued
/// on the socket and not yet sent.
fn backlog<C>(port: &Port, c: &UConn<C>) -> usize {
    c.pending.len() + c.held.len() + port.tx_pieces(c.id)
}

/// What handing bytes to the protocol touches besides the connection.
struct Handling<'a> {
    port: &'a mut Port,
    requests: &'a mut u64,
    packer: &'a mut pst::Packer,
    dirty: &'a mut Vec<usize>,
    holding: &'a mut Vec<usize>,
    parked: &'a mut Vec<usize>,
}

/// Hand the connection's received bytes not yet handed (`fed..pos`) to the protocol, one kept
/// chunk at a time, settling the replies of each; stop early — the connection stalled — once
/// its replies hold more than `cap` buffers.
fn feed<P: Protocol>(
    h: &mut Handling<'_>,
    proto: &P,
    c: &mut UConn<P::Conn>,
    ix: usize,
    mut g: Option<&mut crate::store::SharedInner>,
    background: bool,
    cap: usize,
) {
    while c.fed < c.pos && !c.stalled && !c.close_after {
        let end = c
            .chunks
            .iter()
            .map(|(st, e)| st + e.len() as u64)
            .find(|&end| end > c.fed)
            .unwrap_or(c.pos);
        let before = c.pending.len();
        let mut io = UringIo {
            port: &mut *h.port,
            chunks: &c.chunks,
            requests: &mut *h.requests,
            packer: Some(&mut *h.packer),
        };
        let st: Option<&mut PoolStore> = g.as_mut().map(|g| &mut g.store);
        let range = c.fed..end;
        c.fed = end;
        let keep = proto.on_chunk(&mut c.proto, range, &mut io, st, &mut c.pending);
        after_handling(h.port, proto, c, keep, before, ix, h.dirty);
        hold_new(
            c,
            before,
            g.as_deref().filter(|_| background),
            ix,
            h.holding,
        );
        if proto.parked(&c.proto) {
            h.parked.push(ix);
        }
        if !keep {
            break;
        }
        c.stalled = backlog(h.port, c) > cap;
        if c.stalled {
            // Its next requests wait in the socket, not in pool buffers: TCP flow control
            // slows the client to the pace it reads its replies at (resumed in the loop).
            h.port.pause_rx(c.id);
            tracing::debug!(conn = ?c.id, buffers = backlog(h.port, c), "replies backed up: requests wait, receiving paused");
        }
    }
}

/// Hold the reply pieces the service just added (`c.pending[before..]`) if they depend on
/// records not yet durable — or if earlier replies of the connection are held (order).
fn hold_new<C>(
    c: &mut UConn<C>,
    before: usize,
    g: Option<&crate::store::SharedInner>,
    ix: usize,
    holding: &mut Vec<usize>,
) {
    let Some(g) = g else { return };
    let need = g.store.take_dependency();
    let n = c.pending.len().saturating_sub(before);
    if n == 0 || (need <= g.store.durable_seq() && c.gates.is_empty()) {
        return;
    }
    c.held.extend(c.pending.drain(before..));
    match c.gates.back_mut() {
        // Released together anyway: one group.
        Some((bound, k)) if *bound >= need => *k += n,
        _ => c.gates.push_back((need, n)),
    }
    if c.gates.len() == 1 {
        holding.push(ix);
    }
}

/// Move held replies whose bound `store` has made durable to their connections' sendable
/// pieces (marking them `dirty`); after a failed commit, drop every held reply and close the
/// connection. Returns the smallest bound still waited for (0: none).
fn release_held<C>(
    conns: &mut [Option<UConn<C>>],
    holding: &mut Vec<usize>,
    store: &PoolStore,
    dirty: &mut Vec<usize>,
    port: &mut Port,
) -> u64 {
    let durable = store.durable_seq();
    let poisoned = store.is_poisoned();
    let mut front = u64::MAX;
    holding.sort_unstable();
    holding.dedup();
    holding.retain(|&ix| {
        let Some(c) = conns.get_mut(ix).and_then(|c| c.as_mut()) else {
            return false;
        };
        if poisoned && !c.gates.is_empty() {
            drop_replies(port, c);
            dirty.push(ix);
            return false;
        }
        let mut released = false;
        while c.gates.front().is_some_and(|(bound, _)| *bound <= durable) {
            let (_, k) = c.gates.pop_front().expect("front");
            c.pending.extend(c.held.drain(..k));
            released = true;
        }
        if released {
            // Once per connection: the next commit gathers for as many requests.
            dirty.push(ix);
        }
        match c.gates.front() {
            Some((bound, _)) => {
                front = front.min(*bound);
                true
            }
            None => false,
        }
    });
    if front == u64::MAX {
        0
    } else {
        front
    }
}

/// Fewest buffers a stuck connection must hold to be aborted for a short pool: one waiting
/// for a reply or two gives little back (a full store keeps the pool short for good).
const STUCK_MIN: usize = 16;

/// Abort connection `c` (slot `ix`), which holds too much of a pool that runs short: its
/// replies and unread requests are dropped, its queued sends too ([`Port::abort`]), and it is
/// closed with the next batch's closes.
fn abort<C>(port: &mut Port, c: &mut UConn<C>, ix: usize, dirty: &mut Vec<usize>) {
    tracing::warn!(
        conn = ?c.id,
        buffers = c.chunks.len() + backlog(port, c),
        free = port.free_buffers(),
        "aborting a connection that does not read its replies: they hold too much of a pool \
         that runs short"
    );
    drop_replies(port, c);
    for (_, e) in c.chunks.drain(..) {
        port.release(e);
    }
    c.fed = c.pos;
    c.stalled = false;
    c.dead = false;
    port.abort(c.id);
    dirty.push(ix);
}

/// The connection for which `held` says the most buffers, at least [`STUCK_MIN`] (`None`
/// from `held`: not a candidate).
fn biggest_holder<C>(
    conns: &[Option<UConn<C>>],
    held: impl Fn(&UConn<C>) -> Option<usize>,
) -> Option<usize> {
    conns
        .iter()
        .enumerate()
        .filter_map(|(ix, c)| Some((ix, held(c.as_ref()?)?)))
        .filter(|&(_, n)| n >= STUCK_MIN)
        .max_by_key(|&(_, n)| n)
        .map(|(ix, _)| ix)
}

/// While the pool is short ([`pool_pressure`]: free below an eighth), abort the stuck
/// connection (its peer reads nothing: [`UConn::stuck`]) that holds the most buffers, replies
/// and unread requests — at least [`STUCK_MIN`], and still with sends queued.
fn abort_stuck<C>(port: &mut Port, conns: &mut [Option<UConn<C>>], dirty: &mut Vec<usize>) {
    while pool_pressure(port.free_buffers(), port.capacity()) {
        let Some(ix) = biggest_holder(conns, |c| {
            (c.stuck && !c.close_after && port.tx_pieces(c.id) > 0)
                .then(|| c.chunks.len() + backlog(port, c))
        }) else {
            return;
        };
        let c = conns[ix].as_mut().expect("found above");
        abort(port, c, ix, dirty);
    }
}

/// While nothing can be received ([`Port::rx_starved`]: the receive ring is empty and the free
/// buffers are down to the port's reserve, below the write reserve, so no write could be
/// stored either), close the connection whose unfinished request holds the most buffers — at
/// least [`STUCK_MIN`] — after telling it why ([`Protocol::full_reply`]), behind the replies
/// it is owed. Such a request (a value or body larger than the pool has left, or many clients
/// dripping requests a byte at a time) cannot complete, and holding on, it left every client
/// without receive buffers until the request timeout (30 s): `PING` went unanswered, while the
/// epoll engine answered the big `SET` with `-OOM` at once. A request that fits in what the
/// write reserve leaves for receiving (a `DEL` of ten thousand keys in a full pool) is never
/// cut: it does not starve the ring.
fn shed_partial<P: Protocol>(
    port: &mut Port,
    conns: &mut [Option<UConn<P::Conn>>],
    dirty: &mut Vec<usize>,
    proto: &P,
) {
    while port.rx_starved() {
        // Not a client that does not read its replies (stalled, or with replies queued): a
        // lingering close would wait on it for good; `abort_stuck` resets those.
        // Nor a parked one (a long poll, a deferred delete): its owed reply does not exist
        // yet, so the refusal would come first, and the delete is meant to succeed.
        let Some(ix) = biggest_holder(conns, |c| {
            (c.partial_since.is_some()
                && !c.close_after
                && !c.dead
                && !c.stalled
                && !c.stuck
                && port.tx_pieces(c.id) == 0
                && !proto.parked(&c.proto))
            .then_some(c.chunks.len())
        }) else {
            return;
        };
        let c = conns[ix].as_mut().expect("found above");
        tracing::warn!(
            conn = ?c.id,
            buffers = c.chunks.len(),
            free = port.free_buffers(),
            "closing a connection whose unfinished request the full pool cannot take"
        );
        for (_, e) in c.chunks.drain(..) {
            port.release(e);
        }
        c.fed = c.pos;
        c.partial_since = None;
        let reply = proto.full_reply();
        if !reply.is_empty() {
            let piece = Piece::Bytes(reply.to_vec());
            // In order: behind replies still held for a commit, if any.
            match c.gates.back_mut() {
                Some((_, k)) => {
                    c.held.push_back(piece);
                    *k += 1;
                }
                None => c.pending.push(piece),
            }
        }
        // As after a protocol error: the rest of its input is dropped as it arrives, and the
        // close lingers so the reply is read before the socket goes.
        c.close_after = true;
        c.dead = true;
        dirty.push(ix);
    }
}

/// Withhold every reply of `c` (a commit failed, or the connection is dropped): release their
/// buffers and close the connection after what was already sent.
fn drop_replies<C>(port: &mut Port, c: &mut UConn<C>) {
    c.gates.clear();
    for p in c.pending.drain(..).chain(c.held.drain(..)) {
        if let Piece::Ext(e) = p {
            port.release(e);
        }
    }
    c.close_after = true;
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
    // In place: an input piece is nearly always the last one (echo), so it is replaced by
    // its extents at the end without moving anything.
    let mut i = from;
    while i < pending.len() {
        let Piece::Input(r) = &pending[i] else {
            i += 1;
            continue;
        };
        let r = r.clone();
        if i + 1 == pending.len() {
            pending.pop();
            retain_range(port, chunks, &r, |e| pending.push(Piece::Ext(e)));
            return;
        }
        let mut exts = Vec::new();
        retain_range(port, chunks, &r, |e| exts.push(Piece::Ext(e)));
        let n = exts.len();
        pending.splice(i..i + 1, exts);
        i += n;
    }
}

/// Queue a connection's pending reply pieces on the port (small byte pieces coalesced into one
/// buffer copy). Pieces that do not fit for lack of buffers stay pending.
fn send_pending<C>(port: &mut Port, c: &mut UConn<C>, m: &WorkerMetrics) {
    // Drained in place: the list keeps its capacity for the next replies.
    let mut list = std::mem::take(&mut c.pending);
    let mut pieces = list.drain(..).peekable();
    while let Some(p) = pieces.next() {
        match p {
            Piece::Bytes(mut data) => {
                // Consecutive byte pieces go out as one copy: appended to the first.
                while let Some(Piece::Bytes(b)) = pieces.next_if(|p| matches!(p, Piece::Bytes(_))) {
                    data.extend_from_slice(&b);
                    crate::protocol::recycle_reply(b);
                }
                match port.send_copy(c.id, &data) {
                    Ok(()) => {
                        m.sent(data.len() as u64);
                        crate::protocol::recycle_reply(data);
                    }
                    Err(pst::SendCopyError::PoolExhausted) => {
                        c.pending.push(Piece::Bytes(data));
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
    drop(pieces);
    c.pending = list;
}

fn release_rest(port: &mut Port, rest: impl Iterator<Item = Piece>) {
    for p in rest {
        if let Piece::Ext(e) = p {
            port.release(e);
        }
    }
}
