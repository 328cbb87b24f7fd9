//! The epoll baseline engine: level-triggered `epoll_wait`, then per ready connection one
//! `read()` into a private buffer, the application's handler (which copies what it stores), and
//! one `write()` of the reply. The application commits once per `epoll_wait` batch (group
//! commit, like Redis `appendfsync always`). This is the strongest plain-sockets design we know,
//! so it is the honest baseline for the port.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use std::ops::Range;
use std::sync::Arc;

use pst::{Buffers, Extent};

use crate::error::ServeError;
use crate::protocol::{Io, Limits, Piece, Protocol, PARKED_TICK};
use crate::store::{end_batch, pool_pressure, PoolStore, Retention, SharedStore};
use crate::worker::WorkerCtx;

/// What the handler wants done with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Keep going.
    Continue,
    /// Send what was queued, then close.
    Close,
}

struct Conn<C> {
    fd: OwnedFd,
    out: Vec<u8>,
    out_off: usize,
    close_after: bool,
    app: C,
    want_write: bool,
    /// The peer closed (read returned 0 or failed).
    peer_done: bool,
    /// We sent FIN after a final reply and discard input until the peer closes.
    lingering: bool,
    /// Bytes discarded while lingering.
    lingered: u64,
    last_rx: std::time::Instant,
    partial_since: Option<std::time::Instant>,
}

const LISTENER: u64 = u64::MAX;
/// How long accepting pauses after running out of fds or memory (as the port does).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Serve `proto` on `listener` with epoll until `ctx` says stop: `bufs` are this worker's pool
/// buffers (what it stores is copied into them), `fsync` says whether a commit is a system call.
#[allow(clippy::too_many_arguments)]
pub fn serve<P: Protocol>(
    listener: TcpListener,
    ctx: &WorkerCtx,
    proto: Arc<P>,
    bufs: Buffers,
    store: Option<Arc<SharedStore>>,
    retention: Retention,
    limits: Limits,
    fsync: bool,
) -> Result<(), ServeError> {
    let app = EpollService::new(proto, bufs, store, ctx.index, retention, fsync);
    run(listener, app, ctx, limits).map_err(|source| ServeError::Io {
        what: "epoll engine",
        source,
    })
}

/// The event loop: accept, read, hand bytes to the service, commit per batch, write.
fn run<P: Protocol>(
    listener: TcpListener,
    mut app: EpollService<P>,
    ctx: &WorkerCtx,
    limits: Limits,
) -> io::Result<()> {
    let mut open = 0usize;
    let mut next_sweep = std::time::Instant::now() + std::time::Duration::from_secs(1);
    listener.set_nonblocking(true)?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let watch_listener = || {
        epoll::add(
            &ep,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
    };
    watch_listener()?;
    let mut conns: Vec<Option<Conn<EConn<P::Conn>>>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    let mut syscalls = 0u64;
    // Connections that got reply bytes this batch: written after the batch commit.
    let mut dirty: Vec<usize> = Vec::new();
    // Connections parked in a long poll.
    let mut parked: Vec<usize> = Vec::new();
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: PARKED_TICK.as_nanos() as i64,
    };
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let backoff = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: ACCEPT_BACKOFF.as_nanos() as i64,
    };
    // Since when accepting is paused for lack of fds or memory (the listener out of the set).
    let mut paused_since: Option<std::time::Instant> = None;
    while !ctx.stopping() {
        // Once a second: close idle connections and those stuck in a slow request.
        let now = std::time::Instant::now();
        if now >= next_sweep {
            next_sweep = now + std::time::Duration::from_secs(1);
            for (i, slot) in conns.iter_mut().enumerate() {
                let expired = slot.as_ref().is_some_and(|c| {
                    // While its replies wait on a full socket the connection is not read (the
                    // interest is OUT only): an unfinished request then waits on its client
                    // reading, not on a slow request.
                    now - c.last_rx > limits.idle
                        || (!c.want_write
                            && c.partial_since.is_some_and(|t| now - t > limits.request))
                });
                if expired {
                    *slot = None; // dropping the fd closes it (and removes it from the epoll set)
                    syscalls += 1;
                    free.push(i);
                    open -= 1;
                    tracing::debug!(open, "closed an idle or slow connection");
                }
            }
        }
        let wait = match paused_since {
            Some(t) if now - t >= ACCEPT_BACKOFF => {
                syscalls += 1;
                watch_listener()?;
                paused_since = None;
                timeout
            }
            Some(_) => backoff,
            None if !parked.is_empty() => tick,
            None => timeout,
        };
        events.clear();
        syscalls += 1;
        match epoll::wait(&ep, spare(&mut events), Some(&wait)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == LISTENER {
                loop {
                    syscalls += 1;
                    match rustix::net::accept_with(
                        &listener,
                        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    ) {
                        Ok(fd) if open >= limits.max_conns => {
                            tracing::debug!(open, "refusing a connection beyond --max-conns");
                            syscalls += 2; // the busy reply and the close
                            let _ = rustix::net::send(
                                &fd,
                                app.busy_reply(),
                                rustix::net::SendFlags::NOSIGNAL,
                            );
                        }
                        Ok(fd) => {
                            open += 1;
                            tracing::debug!(open, "accepted");
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            syscalls += 1;
                            epoll::add(
                                &ep,
                                &fd,
                                epoll::EventData::new_u64(i as u64),
                                epoll::EventFlags::IN,
                            )?;
                            conns[i] = Some(Conn {
                                fd,
                                out: Vec::new(),
                                out_off: 0,
                                close_after: false,
                                app: EConn::default(),
                                want_write: false,
                                peer_done: false,
                                lingering: false,
                                lingered: 0,
                                last_rx: std::time::Instant::now(),
                                partial_since: None,
                            });
                            let (free_bufs, capacity) = app.buffers();
                            ctx.metrics().gauges(open, free_bufs, capacity);
                        }
                        Err(Errno::AGAIN) => break,
                        // Out of fds or memory: the connection stays queued and the listener
                        // stays ready; stop watching it for a moment instead of spinning.
                        Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                            if paused_since.is_none() {
                                tracing::warn!(error = %e, "accept failed; pausing accepts");
                            }
                            syscalls += 1;
                            epoll::delete(&ep, &listener)?;
                            paused_since = Some(std::time::Instant::now());
                            break;
                        }
                        Err(Errno::CONNABORTED | Errno::INTR) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            break;
                        }
                    }
                }
                continue;
            }
            let i = key as usize;
            let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            let flags = ev.flags; // copied out: the event struct is packed
            if flags.contains(epoll::EventFlags::OUT) {
                dirty.push(i);
            }
            if !flags
                .intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
                || c.want_write
            {
                continue;
            }
            syscalls += 1;
            match rustix::io::read(&c.fd, &mut buf) {
                Ok(0) | Err(_) => {
                    // End of stream or error: reply to what we have (a parked long poll is
                    // answered now), then close.
                    if app.parked(&c.app) {
                        app.peer_closed(&mut c.app, &mut c.out);
                    }
                    c.close_after = true;
                    c.peer_done = true;
                    dirty.push(i);
                }
                // Discarded after our final reply, up to a bound (as the port does).
                Ok(n) if c.lingering => {
                    c.lingered += n as u64;
                    if c.lingered > pst::LINGER_MAX {
                        c.peer_done = true;
                        c.close_after = true;
                        dirty.push(i);
                    }
                }
                Ok(n) => {
                    ctx.metrics().received(n as u64);
                    if app.on_data(&mut c.app, &buf[..n], &mut c.out) == Verdict::Close {
                        c.close_after = true;
                    }
                    if app.parked(&c.app) {
                        parked.push(i);
                    }
                    c.last_rx = std::time::Instant::now();
                    c.partial_since = if app.has_partial(&c.app) {
                        c.partial_since.or(Some(c.last_rx))
                    } else {
                        None
                    };
                    dirty.push(i);
                }
            }
        }
        parked.sort_unstable();
        parked.dedup();
        parked.retain(|&i| {
            let Some(c) = conns
                .get_mut(i)
                .and_then(|c| c.as_mut())
                .filter(|c| !c.close_after && app.parked(&c.app))
            else {
                return false;
            };
            let before = c.out.len();
            if app.resume(&mut c.app, &mut c.out) == Verdict::Close {
                c.close_after = true;
            }
            if c.close_after || c.out.len() != before {
                dirty.push(i);
            }
            app.parked(&c.app)
        });
        if dirty.is_empty() {
            if !parked.is_empty() {
                // A connection waits for the store (a delete for log space): commits go on,
                // so that the segments the cleaner retired come back. A failure shows at the
                // next batch's commit, which withholds its replies.
                let _ = app.commit();
            }
            continue;
        }
        let ok = app.commit();
        for i in dirty.drain(..) {
            let Some(c) = conns.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            if !ok {
                c.out.clear();
                c.close_after = true;
            }
            while c.out_off < c.out.len() {
                syscalls += 1;
                match rustix::net::send(
                    &c.fd,
                    &c.out[c.out_off..],
                    rustix::net::SendFlags::NOSIGNAL,
                ) {
                    Ok(n) => {
                        c.out_off += n;
                        ctx.metrics().sent(n as u64);
                        if c.want_write {
                            // A client reading replies it had to wait for: activity.
                            c.last_rx = std::time::Instant::now();
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(_) => {
                        c.out.clear();
                        c.out_off = 0;
                        c.close_after = true;
                    }
                }
            }
            let pending = c.out_off < c.out.len();
            if !pending {
                c.out.clear();
                c.out_off = 0;
            }
            if pending != c.want_write {
                if !pending && c.partial_since.is_some() {
                    // Reading again: an unfinished request's clock restarts.
                    c.partial_since = Some(std::time::Instant::now());
                }
                c.want_write = pending;
                let flags = if pending {
                    epoll::EventFlags::OUT
                } else {
                    epoll::EventFlags::IN
                };
                syscalls += 1;
                epoll::modify(&ep, &c.fd, epoll::EventData::new_u64(i as u64), flags)?;
            }
            if c.close_after && !pending {
                if c.peer_done {
                    syscalls += 1; // close
                    conns[i] = None;
                    free.push(i);
                    open -= 1;
                    tracing::debug!(open, "closed");
                } else if !c.lingering {
                    // Lingering close: FIN now, close when the peer closes, so unread request
                    // bytes do not turn our final reply into a reset.
                    syscalls += 1;
                    let _ = rustix::net::shutdown(&c.fd, rustix::net::Shutdown::Write);
                    c.lingering = true;
                }
            }
        }
        ctx.publish(syscalls + app.extra_syscalls(), app.requests());
        let (free_bufs, capacity) = app.buffers();
        ctx.metrics().gauges(open, free_bufs, capacity);
    }
    ctx.publish(syscalls + app.extra_syscalls(), app.requests());
    Ok(())
}

fn spare(v: &mut Vec<epoll::Event>) -> rustix::buffer::SpareCapacity<'_, epoll::Event> {
    rustix::buffer::spare_capacity(v)
}

/// The epoll engine's side of a service: per-connection read buffer, copies into pool
/// buffers for the store.
struct EpollService<P: Protocol> {
    proto: Arc<P>,
    bufs: Buffers,
    store: Option<Arc<SharedStore>>,
    part: usize,
    retention: Retention,
    wrote: bool,
    fsync: bool,
    syncs: u64,
    /// Requests handled by this worker.
    requests: u64,
    /// Packs small values densely, as the uring engine does ([`crate::protocol::packs`]).
    packer: pst::Packer,
}

impl<P: Protocol> Drop for EpollService<P> {
    fn drop(&mut self) {
        self.packer.close(&mut self.bufs);
    }
}

impl<P: Protocol> EpollService<P> {
    /// The service for worker partition `part`, with its buffers.
    fn new(
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
            requests: 0,
            packer: pst::Packer::new(),
        }
    }
}

impl<P: Protocol> EpollService<P> {
    /// Hand `data` (new bytes), or nothing (resuming a parked connection), to the protocol
    /// with the store locked; copy its reply pieces into `out`; drop bytes no longer needed.
    fn handle(
        &mut self,
        c: &mut EConn<P::Conn>,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Verdict {
        let proto = c.proto.get_or_insert_with(|| self.proto.conn());
        let start = c.base + c.data.len() as u64;
        let data = data.unwrap_or_default();
        c.data.extend_from_slice(data);
        let mut pieces = Vec::new();
        let mut guard = self.store.as_ref().map(|s| s.lock());
        let keep = {
            let mut io = EpollIo {
                data: &c.data,
                base: c.base,
                bufs: &mut self.bufs,
                requests: &mut self.requests,
                packer: &mut self.packer,
            };
            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
            if data.is_empty() {
                self.proto.resume(proto, &mut io, st, &mut pieces)
            } else {
                self.proto.on_chunk(
                    proto,
                    start..start + data.len() as u64,
                    &mut io,
                    st,
                    &mut pieces,
                )
            }
        };
        drop(guard);
        self.wrote = true;
        self.render(pieces, &c.data, c.base, out);
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
}

/// Per-connection state of the epoll engine.
struct EConn<C> {
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
    requests: &'a mut u64,
    packer: &'a mut pst::Packer,
}

impl Io for EpollIo<'_> {
    fn lend_segment(&mut self, store: &mut PoolStore) {
        if let Err(back) = crate::store::lend_segment(store, &mut *self.bufs) {
            back.into_iter().for_each(|e| self.bufs.release(e));
        }
    }

    fn with_bytes(&self, r: Range<u64>, f: &mut dyn FnMut(&[u8])) {
        f(&self.data[(r.start - self.base) as usize..(r.end - self.base) as usize]);
    }

    fn extents(&mut self, r: Range<u64>) -> Option<pst_store::ValueExtents> {
        let bytes = &self.data[(r.start - self.base) as usize..(r.end - self.base) as usize];
        if crate::protocol::packs(bytes.len() as u64, self.bufs.buf_size()) {
            return Some(smallvec::smallvec![self.packer.pack(self.bufs, bytes)?]);
        }
        pst::copy_into(self.bufs, bytes)
    }

    fn copy_in(&mut self, bytes: &[u8]) -> Option<pst_store::ValueExtents> {
        if crate::protocol::packs(bytes.len() as u64, self.bufs.buf_size()) {
            return Some(smallvec::smallvec![self.packer.pack(self.bufs, bytes)?]);
        }
        pst::copy_into(self.bufs, bytes)
    }

    fn zero_copy(&mut self, _: &[(u32, u32, u32)]) -> Option<pst_store::ValueExtents> {
        None
    }

    fn release(&mut self, e: Extent) {
        self.bufs.release(e);
    }

    fn count_request(&mut self) {
        *self.requests += 1;
    }

    fn has_room(&self, bytes: u64) -> bool {
        crate::protocol::has_room(
            self.bufs.free_count(),
            self.bufs.capacity(),
            self.bufs.buf_size(),
            bytes,
        )
    }
}

impl<P: Protocol> EpollService<P> {
    /// Bytes arrived on a connection; append replies to `out`.
    fn on_data(&mut self, c: &mut EConn<P::Conn>, data: &[u8], out: &mut Vec<u8>) -> Verdict {
        self.handle(c, Some(data), out)
    }

    /// Whether the connection waits in a long poll ([`Protocol::parked`]).
    fn parked(&self, c: &EConn<P::Conn>) -> bool {
        c.proto.as_ref().is_some_and(|p| self.proto.parked(p))
    }

    /// Give a parked connection another chance ([`Protocol::resume`]).
    fn resume(&mut self, c: &mut EConn<P::Conn>, out: &mut Vec<u8>) -> Verdict {
        self.handle(c, None, out)
    }

    /// Copy reply pieces into the connection's output (stored values are read out of their
    /// pool buffers; echoed input out of the read buffer).
    fn render(&mut self, pieces: Vec<Piece>, data: &[u8], base: u64, out: &mut Vec<u8>) {
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Ext(e) => {
                    out.extend_from_slice(self.bufs.bytes(&e));
                    self.bufs.release(e);
                }
                Piece::Input(r) => {
                    out.extend_from_slice(&data[(r.start - base) as usize..(r.end - base) as usize])
                }
            }
        }
    }

    /// The peer half-closed while the connection is parked ([`Protocol::peer_closed`]).
    fn peer_closed(&mut self, c: &mut EConn<P::Conn>, out: &mut Vec<u8>) {
        let proto = c.proto.get_or_insert_with(|| self.proto.conn());
        let mut pieces = Vec::new();
        let mut guard = self.store.as_ref().map(|s| s.lock());
        {
            let mut io = EpollIo {
                data: &c.data,
                base: c.base,
                bufs: &mut self.bufs,
                requests: &mut self.requests,
                packer: &mut self.packer,
            };
            let st: Option<&mut PoolStore> = guard.as_mut().map(|g| &mut g.store);
            self.proto.peer_closed(proto, &mut io, st, &mut pieces);
        }
        drop(guard);
        self.wrote = true;
        self.render(pieces, &c.data, c.base, out);
    }

    /// Free and total pool buffers of this worker (metrics).
    fn buffers(&self) -> (usize, usize) {
        (self.bufs.free_count(), self.bufs.capacity())
    }

    /// End of an `epoll_wait` batch: persist what it stored before replies leave; false if
    /// persisting failed (replies are then withheld and connections closed).
    fn commit(&mut self) -> bool {
        let Some(shared) = self.store.clone() else {
            return true;
        };
        let mut g = shared.lock();
        let mut ok = true;
        if self.wrote || g.store.needs_commit() {
            let pressure = pool_pressure(self.bufs.free_count(), self.bufs.capacity());
            let (committed, barriers) = end_batch(
                &shared,
                &mut g,
                self.retention,
                pressure,
                self.proto.metrics(),
            );
            ok = committed;
            self.syncs += if self.fsync { barriers } else { 0 };
            self.wrote = false;
        }
        shared.grow(&mut g, self.retention, &mut self.bufs);
        for e in SharedStore::drain_returns(&mut g, self.part) {
            self.bufs.release(e);
        }
        ok
    }

    /// Requests this worker handled.
    fn requests(&self) -> u64 {
        self.requests
    }

    /// System calls the service made itself (`fdatasync` in commit).
    fn extra_syscalls(&self) -> u64 {
        self.syncs
    }

    /// True while a request on `c` is incomplete (for the slow-request timeout).
    fn has_partial(&self, c: &EConn<P::Conn>) -> bool {
        c.proto
            .as_ref()
            .is_some_and(|p| self.proto.needed_from(p) < c.base + c.data.len() as u64)
    }

    /// What a connection beyond the limit is told before it is closed.
    fn busy_reply(&self) -> &'static [u8] {
        self.proto.busy_reply()
    }
}
