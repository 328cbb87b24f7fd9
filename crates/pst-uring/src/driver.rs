//! The driver: one `io_uring_enter` per sync, SQEs from the core's ops, CQEs back into it.
//!
//! The invariant everything above relies on: the ring is `SINGLE_ISSUER | DEFER_TASKRUN`, so
//! the kernel runs this ring's completions — and with them every write into a lent pool
//! buffer — only inside an `io_uring_enter` that this driver makes, on its thread, from
//! [`Driver::sync`] (`&mut self`). Network receives never go to io-wq workers (sockets
//! support non-blocking attempts and retry by poll, and no SQE carries `IOSQE_ASYNC`). So
//! while any `&Driver` borrow lives, the kernel writes no pool memory; the byte accessors
//! below rely on exactly that. The one request that does go to io-wq is the pool file's
//! `FSYNC` (group commit in flight): it writes pool pages back to the file — it reads the
//! mapping, never writes it — so it changes nothing the accessors see.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use pst_pool::{Partition, Pool};
use pst_ring::{BufIdx, Completion, ConnId, Core, Errno, Extent, Op, OpKind, UserData};

use crate::accept;
use crate::bufring::BufRing;

/// Buffer group id of the port's provided-buffer ring.
const BGID: u16 = 0;
/// `IORING_SEND_ZC_REPORT_USAGE` (not exported by the io-uring crate): the notification's
/// result says whether the kernel copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 8;
/// How long a blocking sync that counts on inline send completions waits for them (and one
/// more completion) before it settles for whatever completed: long enough that a closed-loop
/// client's next request (a loopback round trip, tens of µs) arrives within it, short enough to
/// bound the delay of a send that met a full socket buffer when nothing else is happening.
const SEND_SETTLE_US: u32 = 200;
/// The general timeout given with a min-wait to a sync without a timeout: the kernel ends a
/// min-wait by itself only when no general timeout is set; this one never fires in practice.
const DISTANT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// `user_data` of the pool file's `fdatasync` (a kind byte the core never encodes).
const POOL_SYNC: u64 = 0xA7 << 56;
/// `user_data` of a wake-up another port posted into this ring with `MSG_RING`.
const WAKE: u64 = 0xA8 << 56;
/// `user_data` of this port's own `MSG_RING` submissions (their completions are skipped on
/// success; a failure is only logged: the woken port has a bounded wait anyway).
const WAKE_SENT: u64 = 0xA9 << 56;
/// Most chunks gathered into one `sendmsg`.
pub const MAX_IOV: usize = 64;

/// Driver parameters.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Submission queue entries (completion queue is 4x).
    pub sq_entries: u32,
    /// Provided-buffer ring entries (power of two, <= 32768).
    pub ring_entries: u16,
    /// Completions to wait for before returning early from a blocking sync (batch target).
    pub batch: u32,
    /// Bound on how long a blocking sync waits to gather `batch` completions, in microseconds;
    /// after it, one completion suffices (`IORING_ENTER` min-wait, Linux 6.12). 0 = return as
    /// soon as one completion is there.
    pub min_wait_us: u32,
    /// Sends of at least this many bytes go out as zero-copy `SEND_ZC`/`SENDMSG_ZC`; their
    /// buffers are released on the kernel's notification, not on the result. 0 = never.
    pub zc_min: u32,
    /// Bundle receives (when the kernel has them): one completion for as many ring buffers as
    /// the data fills, instead of one per buffer.
    pub recv_bundle: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            sq_entries: 4096,
            ring_entries: 4096,
            batch: 32,
            min_wait_us: 0,
            zc_min: 0,
            recv_bundle: true,
        }
    }
}

/// System calls and ring traffic counted by the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// SQEs submitted.
    pub sqes: u64,
    /// CQEs reaped.
    pub cqes: u64,
    /// `accept4` calls (listeners are accepted on readiness; see the `accept` module).
    pub accept_calls: u64,
}

impl DriverStats {
    /// System calls made: `io_uring_enter`s and `accept4`s.
    pub fn syscalls(&self) -> u64 {
        self.enters + self.accept_calls
    }
}

/// Wakes one port's ring from any thread ([`Driver::waker`], [`Driver::wake`]).
#[derive(Debug, Clone)]
pub struct Waker(Arc<OwnedFd>);

/// Stable storage for one connection's in-flight `sendmsg`: the kernel reads it after submit.
struct TxMsg {
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

/// The io_uring half of a port.
pub struct Driver {
    ring: IoUring,
    bufring: BufRing,
    pool: Arc<Pool>,
    /// The buffers this driver lends to its ring and reads and writes for the port.
    part: Partition,
    tx: Vec<Option<Box<TxMsg>>>,
    chunks: Vec<(BufIdx, u32, u32)>,
    /// Scratch: the send's chunks merged where adjacent in memory.
    iov: Vec<(*mut u8, usize)>,
    stats: DriverStats,
    cfg: DriverConfig,
    last_arrivals: usize,
    /// Receives are bundles (several buffers per completion, Linux 6.10).
    bundle: bool,
    /// The listeners, accepted on readiness of an epoll set the ring polls.
    acceptor: accept::Acceptor,
    /// Accept completions for the core, delivered after the next enter.
    accepted: Vec<Completion>,
    /// The accept back-off's timespec: boxed, as the kernel reads it at the next submit and
    /// the driver may move meanwhile.
    backoff_ts: Box<types::Timespec>,
    /// The kernel has min-wait (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12).
    min_timeout: bool,
    /// An `fdatasync` of the pool file is in flight.
    pool_sync_in_flight: bool,
    /// The outcome of the last one, until taken.
    pool_sync_done: Option<io::Result<()>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("stats", &self.stats)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Driver {
    /// Create the ring and register the provided-buffer ring, for the buffers of `part`.
    pub fn new(part: Partition, cfg: DriverConfig) -> io::Result<Driver> {
        let pool = part.pool().clone();
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cfg.sq_entries * 4)
            .build(cfg.sq_entries)?;
        let bufring = BufRing::new(cfg.ring_entries)?;
        // SAFETY: the entry array lives in `bufring`, which `Driver` owns and drops after `ring`
        // (field order: `ring` is dropped first, which unregisters everything).
        unsafe { bufring.register(&ring.submitter(), BGID)? };
        let bundle = cfg.recv_bundle && ring.params().is_feature_recvsend_bundle();
        let min_timeout = ring.params().is_feature_min_timeout();
        Ok(Driver {
            ring,
            bufring,
            pool,
            part,
            tx: Vec::new(),
            chunks: Vec::with_capacity(MAX_IOV),
            iov: Vec::with_capacity(MAX_IOV),
            stats: DriverStats::default(),
            bundle,
            cfg,
            last_arrivals: 0,
            acceptor: accept::Acceptor::new(),
            accepted: Vec::new(),
            backoff_ts: Box::new(types::Timespec::from(accept::BACKOFF)),
            min_timeout,
            pool_sync_in_flight: false,
            pool_sync_done: None,
        })
    }

    /// Queue an `fdatasync` of the pool file (`IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`):
    /// submitted by the next [`Driver::sync`] in the same `io_uring_enter` as the sends and
    /// re-arms, it runs in an io-wq worker while this thread goes on; its outcome is taken with
    /// [`Driver::take_pool_sync`]. Returns false — and queues nothing — when the pool's barrier
    /// is not an `fdatasync` ([`Pool::barrier_file`]) or one is already in flight.
    pub fn queue_pool_sync(&mut self) -> io::Result<bool> {
        if self.pool_sync_in_flight {
            return Ok(false);
        }
        let Some(fd) = self.pool.barrier_file().map(|f| f.as_raw_fd()) else {
            return Ok(false);
        };
        let e = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(POOL_SYNC);
        self.push(&[e])?;
        self.pool_sync_in_flight = true;
        Ok(true)
    }

    /// True while the pool file's `fdatasync` is queued or running.
    pub fn pool_sync_in_flight(&self) -> bool {
        self.pool_sync_in_flight
    }

    /// The outcome of the pool file's `fdatasync`, once it completed (then taken).
    pub fn take_pool_sync(&mut self) -> Option<io::Result<()>> {
        self.pool_sync_done.take()
    }

    /// A handle other threads use to wake this ring out of its wait ([`Driver::wake`]).
    pub fn waker(&self) -> io::Result<Waker> {
        // A duplicate of the ring fd: the waker keeps the ring's file alive, so a message sent
        // after this driver is gone lands in a ring nobody reads (harmless), never in another.
        // SAFETY: the ring fd is open for as long as `self.ring` lives, which outlasts this
        // borrow.
        let ring = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) };
        let fd = rustix::io::dup(ring)?;
        Ok(Waker(Arc::new(fd)))
    }

    /// Post a wake-up into `w`'s ring (`IORING_OP_MSG_RING`), submitted with the next sync:
    /// one completion there, which ends its wait; no system call of its own.
    pub fn wake(&mut self, w: &Waker) -> io::Result<()> {
        let e = opcode::MsgRingData::new(types::Fd(w.0.as_raw_fd()), 0, WAKE, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(WAKE_SENT);
        self.push(&[e])
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Hand a connected socket to `core`: it is received from, sent on and closed through
    /// this driver from now on.
    pub fn register(&mut self, core: &mut Core, s: OwnedFd) -> ConnId {
        // SAFETY: ownership of the open socket passes to the core; this driver is the only
        // one that runs its ops, and closes the fd when the core says so.
        unsafe { core.register(s.into_raw_fd()) }
    }

    /// Hand a listening socket to `core`: connections are accepted on it until
    /// [`Driver::stop_listening`].
    pub fn add_listener(&mut self, core: &mut Core, l: OwnedFd) -> u32 {
        // SAFETY: as in `register`.
        unsafe { core.add_listener(l.into_raw_fd()) }
    }

    /// Stop accepting: every listener of `core` is shut down (also for other ports sharing
    /// it) and closed.
    pub fn stop_listening(&mut self, core: &mut Core) {
        for fd in core.close_listeners() {
            self.acceptor.remove(fd);
            match crate::net::close_listener(fd) {
                // Another port sharing the listening socket already shut it down.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(e) => tracing::warn!(error = %e, "shutting down a listener"),
                Ok(()) => {}
            }
        }
    }

    /// Read `len` bytes of buffer `b` from `off`; the buffer must be of this driver's partition
    /// (pool or scratch). No kernel write can happen while the borrow lives: the kernel writes
    /// pool memory only inside [`Driver::sync`], which needs `&mut self` (module docs).
    pub fn bytes(&self, b: BufIdx, off: u32, len: u32) -> &[u8] {
        self.part.bytes(b, off, len)
    }

    /// Write `bytes` at `off` of buffer `b` for a [`pst_ring::Packer`]: the packer holds `b`
    /// (allocated, never lent to the kernel) and nobody references its bytes from `off` on —
    /// the [`pst_ring::PackToken`], which only the packer can make, stands for that.
    #[allow(unsafe_code)]
    pub fn write_packed(&mut self, _: &pst_ring::PackToken, b: BufIdx, off: u32, bytes: &[u8]) {
        // SAFETY: no reference covers these bytes and the kernel does not have the buffer
        // (the token's contract); `&mut self` excludes the kernel's writes (`sync`) meanwhile.
        unsafe { self.part.bytes_mut(b, off, bytes.len() as u32) }.copy_from_slice(bytes);
    }

    /// Write access to an extent's bytes. Panics unless the extent holds the only reference on
    /// its buffer in `core` (a shared buffer — a stored value a store may be reading on another
    /// thread, a reply in flight — is never written).
    pub fn bytes_mut(&mut self, core: &Core, ext: &mut Extent) -> &mut [u8] {
        let refs = core.refs(ext.buf());
        assert_eq!(refs, 1, "writing a buffer with {refs} references");
        // SAFETY: the extent holds the buffer's only reference (checked above), and the core
        // never lends a referenced buffer to the kernel.
        unsafe { self.part.bytes_mut(ext.buf(), ext.off(), ext.len()) }
    }

    /// One sync: recycle, refill the buffer ring, submit every queued op, wait per `timeout`
    /// (`None` = until something completes, `Some(0)` = not at all), reap every completion.
    /// Exactly one `io_uring_enter` unless the submission queue overflows.
    pub fn sync(&mut self, core: &mut Core, timeout: Option<Duration>) -> io::Result<usize> {
        core.begin_sync();
        let buf_size = self.pool.buf_size();
        let pool = &self.pool;
        let bufring = &mut self.bufring;
        let part = &self.part;
        core.refill(|bid, buf| {
            assert!(part.contains(buf), "lending a buffer outside the partition");
            // SAFETY: the buffer lies in the pool mapping, which `self.pool` keeps alive past
            // the ring (field order). The kernel writes it only during our enters (module
            // docs), all inside `sync(&mut self)`; references to partition bytes are only made
            // through `&self`/`&mut self` (`bytes`, `bytes_mut`), so none is live then.
            unsafe { bufring.push(bid, pool.buf_ptr(buf), buf_size) }
        });
        self.bufring.publish();

        let mut sends = 0;
        while let Some(op) = core.pop_op() {
            sends += matches!(op, Op::Send { .. }) as usize;
            self.push_op(core, op)?;
        }
        // After the ops: a listener added by them is watched from this very submit.
        if let (false, Some(ep)) = (self.acceptor.armed, self.acceptor.epoll_fd()) {
            let e = opcode::PollAdd::new(types::Fd(ep), libc::POLLIN as u32)
                .build()
                .user_data(accept::ACCEPT_READY);
            self.push(&[e])?;
            self.acceptor.armed = true;
        }
        // Sends on loopback and on sockets with send-buffer room complete inline, during this
        // very submit, so their completions are in the CQ before the wait starts. Waiting for
        // only one completion would then return at once with nothing received, costing a
        // second enter per request. So wait for one completion beyond the sends, unless a
        // connection has data queued behind its in-flight send (that send's completion must
        // be handled promptly).
        // Without min-wait (before Linux 6.12) nothing could bound a wait that counts on
        // sends (below), so it does not count on them.
        let extra = if core.tx_backlog() == 0 && self.min_timeout {
            sends
        } else {
            0
        };
        // Accept results are waiting to be delivered after this enter: do not block.
        let timeout = if self.accepted.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let want = match timeout {
            Some(t) if t.is_zero() => 1,
            _ => self.wait_target(extra),
        };
        // But a send that meets a full socket buffer completes only later, and then `want`
        // may never be reached: its completion would sit unreaped (the reply's tail and the
        // FIN held) until some unrelated event. So whenever the target counts on sends, a
        // min-wait bounds it: once it expires the wait ends with whatever is in the CQ, or, if
        // nothing is, at the very next completion (the kernel drops the target to one after
        // the min-wait expires when a general timeout is set; `None` gets a distant one so that
        // the expiry alone never ends the wait). The min-wait for batching (`want > extra + 1`)
        // does the same for the batch it gathers; at low load (batch target 1) it is not armed,
        // as it would only wake the idle port between requests.
        let min_wait_us = if !self.min_timeout {
            0
        } else if want > extra + 1 {
            self.cfg.min_wait_us
        } else if extra > 0 {
            SEND_SETTLE_US
        } else {
            0
        };
        let ts;
        let mut args = types::SubmitArgs::new();
        match timeout {
            Some(t) if t.is_zero() => {
                ts = types::Timespec::new();
                args = args.timespec(&ts);
            }
            Some(t) => {
                ts = types::Timespec::from(t);
                args = args.timespec(&ts);
                // A min-wait at or beyond the timeout ends the wait at its own expiry.
                let t_us = u32::try_from(t.as_micros()).unwrap_or(u32::MAX);
                if min_wait_us > 0 {
                    args = args.min_wait_usec(min_wait_us.min(t_us));
                }
            }
            None if min_wait_us > 0 => {
                ts = types::Timespec::from(DISTANT_TIMEOUT);
                args = args.timespec(&ts).min_wait_usec(min_wait_us);
            }
            None => {}
        }
        self.stats.enters += 1;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut n = 0;
        let mut arrivals = 0usize;
        let mut accept_ready = false;
        for cqe in self.ring.completion() {
            n += 1;
            arrivals +=
                UserData::decode(cqe.user_data()).is_some_and(|u| u.kind == OpKind::Recv) as usize;
            if cqe.user_data() == accept::ACCEPT_READY {
                // Re-armed by the next sync; level-triggered, so nothing pending is missed.
                self.acceptor.armed = false;
                accept_ready = true;
                continue;
            }
            if cqe.user_data() == accept::ACCEPT_BACKOFF {
                self.acceptor.armed = false;
                continue;
            }
            match cqe.user_data() {
                POOL_SYNC => {
                    self.pool_sync_in_flight = false;
                    self.pool_sync_done = Some(match cqe.result() {
                        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                        _ => Ok(()),
                    });
                    continue;
                }
                WAKE => continue, // its whole purpose was ending the wait
                WAKE_SENT => {
                    tracing::warn!(errno = -cqe.result(), "waking another port failed");
                    continue;
                }
                _ => {}
            }
            // SAFETY: a completion our ring produced for an op this core issued.
            unsafe { core.complete(completion(cqe.user_data(), cqe.result(), cqe.flags())) };
        }
        if accept_ready {
            let calls = self.acceptor.calls;
            self.acceptor.accept_all(&mut self.accepted);
            self.stats.accept_calls += self.acceptor.calls - calls;
            if std::mem::take(&mut self.acceptor.starved) {
                // Poll again only after the back-off timer: `armed` stays set until it fires.
                let e = opcode::Timeout::new(&*self.backoff_ts)
                    .build()
                    .user_data(accept::ACCEPT_BACKOFF);
                self.push(&[e])?;
                self.acceptor.armed = true;
            }
        }
        arrivals += self.accepted.len();
        for c in self.accepted.drain(..) {
            // SAFETY: results of the accept4 calls the acceptor made for this core's listeners
            // (or their failures): new sockets ours to own.
            unsafe { core.complete(c) };
        }
        self.stats.cqes += n as u64;
        // Sends' completions (inline or late), zero-copy notifications, closes and wake-ups say
        // nothing about how many requests will come: receives and accepts do.
        self.last_arrivals = arrivals;
        Ok(n)
    }

    /// Completions to wait for: `extra` (inline send completions) plus one; with a min-wait
    /// bound, plus a batch that adapts to the load — a quarter of the receives and accepts the
    /// last sync reaped, at most `batch` — so a lone connection is not delayed waiting for
    /// completions that cannot come, while a busy port gathers bigger batches (the bound caps
    /// the wait either way).
    ///
    /// Why a quarter, and why only arrivals: clients in a closed loop send their next request
    /// only once answered. With 8 of them, the last sync reaped 8 receives and the 8 sends'
    /// inline completions; half of those 16 made the port wait for all 8 clients every time, so
    /// the clients and the port took turns instead of overlapping: `pst bench kv --conns 8`
    /// ran at 56 k req/s against 147 k without a min-wait, and 1 KiB echo at 8 connections at
    /// 66 k against 187 k. A quarter of the receives gave kv 147 k (both ways) and echo
    /// 161 k (211 k without a min-wait in that run), and kept the batching's gain at 64 and
    /// 100 connections.
    fn wait_target(&self, extra: usize) -> usize {
        let batch = if self.cfg.min_wait_us > 0 && self.min_timeout {
            (self.last_arrivals / 4).clamp(1, self.cfg.batch.max(1) as usize)
        } else {
            1
        };
        extra + batch
    }

    fn push_op(&mut self, core: &Core, op: Op) -> io::Result<()> {
        match op {
            // No io_uring request on the listener itself (module `accept`): it joins the
            // epoll set that the ring polls.
            // A listener that cannot be watched (closed meanwhile, say) ends its accepting
            // with the error, as a failed accept request would.
            Op::Accept { fd, ud } => {
                if let Err(e) = self.acceptor.add(fd, ud) {
                    let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                    self.accepted.push(Completion::Op {
                        user_data: ud,
                        result: Err(Errno(errno)),
                        buffer: None,
                        more: false,
                    });
                }
                Ok(())
            }
            Op::Recv { fd, ud } => {
                let e = if self.bundle {
                    opcode::RecvMultiBundle::new(types::Fd(fd), BGID).build()
                } else {
                    opcode::RecvMulti::new(types::Fd(fd), BGID).build()
                };
                self.push(&[e.user_data(ud)])
            }
            Op::Close { fd, ud, reset } => {
                if reset {
                    // SAFETY: the core owns `fd` until the close queued below completes; it
                    // is open here (the Close op is the only one that ends it).
                    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    // Best effort: if it fails, the close below is an orderly one.
                    let _ = rustix::net::sockopt::set_socket_linger(
                        sock,
                        Some(std::time::Duration::ZERO),
                    );
                }
                // Shutdown first so an armed multishot recv completes and drops its file
                // reference; hard link so the close runs even if shutdown fails (peer reset).
                let sh = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_RDWR)
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
                    .user_data(ud);
                let cl = opcode::Close::new(types::Fd(fd)).build().user_data(ud);
                self.push(&[sh, cl])
            }
            Op::CancelRecv { target, ud } => {
                let e = opcode::AsyncCancel::new(target).build().user_data(ud);
                self.push(&[e])
            }
            Op::ShutdownWrite { fd, ud } => {
                let e = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(ud);
                self.push(&[e])
            }
            Op::Send { conn, fd, ud } => {
                let e = self.build_send(core, conn, fd, ud);
                self.push(&[e])
            }
        }
    }

    fn build_send(&mut self, core: &Core, conn: ConnId, fd: i32, ud: u64) -> squeue::Entry {
        let mut chunks = std::mem::take(&mut self.chunks);
        core.tx_chunks(conn, &mut chunks);
        // Decided here, on what this send covers; the core learns it from the result's F_MORE.
        let zc = self.cfg.zc_min > 0
            && chunks.iter().map(|c| c.2 as u64).sum::<u64>() >= self.cfg.zc_min as u64;
        // Chunks that are adjacent in memory (consecutive buffers filled by one bundle
        // receive, typically) go out as one iovec: fewer, longer copies for the kernel.
        let mut iov = std::mem::take(&mut self.iov);
        iov.clear();
        for &(b, off, len) in &chunks {
            let p = self.pool.buf_ptr(b).wrapping_add(off as usize);
            match iov.last_mut() {
                Some((q, l)) if q.wrapping_add(*l) == p => *l += len as usize,
                _ => iov.push((p, len as usize)),
            }
        }
        let entry = if iov.len() == 1 && zc {
            opcode::SendZc::new(types::Fd(fd), iov[0].0, iov[0].1 as u32)
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()
        } else if iov.len() == 1 {
            opcode::Send::new(types::Fd(fd), iov[0].0, iov[0].1 as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let i = conn.index() as usize;
            if self.tx.len() <= i {
                self.tx.resize_with(i + 1, || None);
            }
            let m = self.tx[i].get_or_insert_with(|| {
                Box::new(TxMsg {
                    iov: [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; MAX_IOV],
                    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
                    msg: unsafe { std::mem::zeroed() },
                })
            });
            for (slot, &(p, len)) in m.iov.iter_mut().zip(&iov) {
                slot.iov_base = p.cast();
                slot.iov_len = len;
            }
            m.msg.msg_iov = m.iov.as_mut_ptr();
            m.msg.msg_iovlen = iov.len().min(MAX_IOV);
            if zc {
                // SENDMSG_ZC takes the report-usage flag in ioprio, like SEND_ZC's zc_flags.
                opcode::SendMsgZc::new(types::Fd(fd), &m.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .ioprio(SEND_ZC_REPORT_USAGE)
                    .build()
            } else {
                opcode::SendMsg::new(types::Fd(fd), &m.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
        };
        self.iov = iov;
        self.chunks = chunks;
        entry.user_data(ud)
    }

    fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        loop {
            // SAFETY: every pointer an entry carries stays valid until its completion:
            // - send buffers are pool buffers held by the connection's TX queue (the core
            //   releases them only on the send's completion) inside the pool mapping, which the
            //   driver keeps alive through its `Arc<Pool>`;
            // - a sendmsg's msghdr/iovec live in a `Box<TxMsg>` of this driver that is never
            //   freed and is reused only for the connection's next send, which the core issues
            //   after this one completed (one send in flight per connection);
            // - recv buffers come from the registered buffer ring, owned by the driver;
            // - the pool file's fsync names the pool's fd, which `self.pool` keeps open; the
            //   kernel takes its own file reference when it issues the request;
            // - a MSG_RING names a ring fd its `Waker` holds, also referenced at issue.
            let pushed = unsafe { self.ring.submission().push_multiple(entries) };
            if pushed.is_ok() {
                self.stats.sqes += entries.len() as u64;
                return Ok(());
            }
            // Submission queue full: submit what is there (an extra enter, counted).
            self.stats.enters += 1;
            self.ring.submit()?;
        }
    }

    /// Close every socket `core` still owns (connections and listeners), now, without waiting
    /// for anything: for a port dropped without [`Driver::sync`]-driven shutdown. In-flight
    /// operations hold their own file references and are cancelled when the ring is dropped.
    pub fn close_leftovers(&mut self, core: &mut Core) {
        for fd in core.forget_all() {
            self.acceptor.remove(fd);
            use std::os::fd::FromRawFd;
            // SAFETY: `fd` is a socket the core owned (handed over with `Driver::register`/`add_listener`) and has
            // just forgotten, so nothing else will use or close it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// The raw fd of the ring (for diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }
}

/// What the core needs of a CQE, decoded from io_uring's encoding: a notification or a
/// result, the result's errno, the provided buffer id (`IORING_CQE_F_BUFFER`, the id in the
/// upper 16 bits) and `IORING_CQE_F_MORE`.
fn completion(user_data: u64, res: i32, flags: u32) -> Completion {
    if cqueue::notif(flags) {
        // IORING_NOTIF_USAGE_ZC_COPIED (the top bit, with IORING_SEND_ZC_REPORT_USAGE): the
        // kernel copied the data after all.
        return Completion::ZcNotif {
            user_data,
            copied: res as u32 & 1 << 31 != 0,
        };
    }
    Completion::Op {
        user_data,
        result: u32::try_from(res).map_err(|_| Errno(res.wrapping_neg())),
        buffer: cqueue::buffer_select(flags),
        more: cqueue::more(flags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cqe_flags_decode() {
        // IORING_CQE_F_BUFFER | IORING_CQE_F_MORE, buffer id 7.
        assert_eq!(
            completion(9, 100, 7 << 16 | 1 | 2),
            Completion::Op {
                user_data: 9,
                result: Ok(100),
                buffer: Some(7),
                more: true
            }
        );
        assert_eq!(
            completion(9, -105, 0),
            Completion::Op {
                user_data: 9,
                result: Err(Errno::NOBUFS),
                buffer: None,
                more: false
            }
        );
        // IORING_CQE_F_NOTIF; the result's top bit reports a copy.
        assert_eq!(
            completion(9, i32::MIN, 8),
            Completion::ZcNotif {
                user_data: 9,
                copied: true
            }
        );
        assert_eq!(
            completion(9, 0, 8),
            Completion::ZcNotif {
                user_data: 9,
                copied: false
            }
        );
    }
}
