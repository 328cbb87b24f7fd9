//! The port state machine: connection table, RX ring, TX queues, buffer provisioning.

use std::collections::{HashMap, VecDeque};

use pst_pool::{BufAlloc, BufIdx};

use crate::bid::BidTable;
use crate::slot::{ConnId, Extent, Slot, SlotKind};
use crate::userdata::{OpKind, UserData, GEN_MASK};

/// Completion flag: a provided buffer was used; its id is in the upper 16 bits.
pub const CQE_F_BUFFER: u32 = 1;
/// Completion flag: the multishot request stays armed; on a zero-copy send's result, a
/// notification completion follows.
pub const CQE_F_MORE: u32 = 2;
/// `EINVAL`: what accepting on a socket that stopped listening returns.
const EINVAL: i32 = 22;
/// Completion flag: a zero-copy send's notification (the kernel no longer reads its buffers).
pub const CQE_F_NOTIF: u32 = 8;

const ENOBUFS: i32 = 105;
const ECANCELED: i32 = 125;

/// Core parameters.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// Entries in the provided-buffer ring (power of two, <= 32768).
    pub ring_entries: u16,
    /// Free buffers kept back from the kernel for the application (TX, keeping).
    pub reserve: usize,
    /// Most chunks gathered into one send.
    pub max_iov: usize,
    /// Pool buffer size.
    pub buf_size: u32,
}

/// An operation the driver must submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Accept connections on listener `fd` until told otherwise: each accepted socket is a
    /// completion of `ud` with `CQE_F_MORE` (a multishot accept, or the driver's own accept
    /// loop); a completion without it ends the accepting and the core re-arms.
    Accept {
        /// Listener socket.
        fd: i32,
        /// Encoded [`UserData`].
        ud: u64,
    },
    /// Arm a multishot recv on `fd` drawing from the provided-buffer ring.
    Recv {
        /// Connection socket.
        fd: i32,
        /// Encoded [`UserData`].
        ud: u64,
    },
    /// Send the chunks [`Core::tx_chunks`] returns for `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// Its socket.
        fd: i32,
        /// Encoded [`UserData`].
        ud: u64,
    },
    /// Shut down the sending side of `fd` (FIN after the queued data); receiving continues.
    ShutdownWrite {
        /// The socket.
        fd: i32,
        /// Encoded [`UserData`] (a `Close` kind; its completion is ignored).
        ud: u64,
    },
    /// Shut down and close `fd`; the connection is already gone from the table.
    Close {
        /// The socket.
        fd: i32,
        /// Encoded [`UserData`].
        ud: u64,
    },
}

/// Why a send was refused. The extent was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed, closing or failed.
    #[error("connection is closed")]
    Closed,
}

/// Counters kept by the core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Data slots delivered.
    pub rx_slots: u64,
    /// Receive completions that carried data (fewer than `rx_slots` when bundles fill several
    /// buffers per completion).
    pub rx_completions: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Multishot recvs ended by an empty buffer ring (back-pressure events).
    pub enobufs: u64,
    /// Completions for connections that were already closed.
    pub stale: u64,
    /// Completions that could not be decoded or named an unknown buffer id.
    pub bad_cqes: u64,
    /// Zero-copy sends completed (results with a notification to follow).
    pub zc_sends: u64,
    /// Zero-copy notifications received.
    pub zc_notifs: u64,
    /// Of those, how many report that the kernel copied after all (always on loopback/veth).
    pub zc_copied: u64,
}

#[derive(Debug)]
struct Conn {
    fd: i32,
    recv_armed: bool,
    rx_done: bool,
    close_requested: bool,
    /// Lingering close: FIN once the queued data is sent, keep reading (and discarding) until
    /// the peer closes, so the peer sees our last reply instead of a reset.
    linger: bool,
    fin_sent: bool,
    broken: bool,
    tx_inflight: bool,
    /// Chunks covered by the in-flight send.
    inflight_chunks: usize,
    /// Data queued behind the in-flight send (counted in `Core::backlog`).
    behind: bool,
    txq: VecDeque<Extent>,
    /// Bytes of `txq[0]` already sent.
    tx_sent: u32,
}

#[derive(Debug)]
struct Entry {
    gen: u32,
    conn: Option<Conn>,
}

#[derive(Debug)]
struct Listener {
    fd: i32,
    open: bool,
}

/// The I/O-free state of one port.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    alloc: BufAlloc,
    /// Transient TX buffers (anonymous memory), if any: never lent to the kernel for RX.
    tx_alloc: Option<BufAlloc>,
    bids: BidTable,
    conns: Vec<Entry>,
    free_conns: Vec<u32>,
    open_conns: usize,
    listeners: Vec<Listener>,
    rx: Vec<Slot>,
    kept: Vec<bool>,
    ops: VecDeque<Op>,
    starved: Vec<ConnId>,
    backlog: usize,
    /// Scratch buffer list: one completion's buffers, or one refill batch.
    scratch: Vec<BufIdx>,
    /// Buffers the kernel filled since the last refill.
    consumed: usize,
    /// Extents of zero-copy sends whose result came back but whose notification has not: the
    /// kernel may still read them. Per send user data, oldest send first (TCP frees a socket's
    /// sent data in sequence order, so its notifications arrive in that order). Outlives the
    /// connection: a notification can arrive after the close.
    zc_held: HashMap<u64, VecDeque<Vec<Extent>>>,
    stats: CoreStats,
}

impl Core {
    /// A core owning the buffers of `alloc`.
    pub fn new(alloc: BufAlloc, cfg: CoreConfig) -> Core {
        Core {
            cfg,
            alloc,
            tx_alloc: None,
            bids: BidTable::new(cfg.ring_entries),
            conns: Vec::new(),
            free_conns: Vec::new(),
            open_conns: 0,
            listeners: Vec::new(),
            rx: Vec::new(),
            kept: Vec::new(),
            ops: VecDeque::new(),
            starved: Vec::new(),
            backlog: 0,
            scratch: Vec::new(),
            consumed: 0,
            zc_held: HashMap::new(),
            stats: CoreStats::default(),
        }
    }

    /// Add transient TX buffers (see [`Core::alloc_tx_extent`]).
    pub fn with_tx_buffers(mut self, tx: BufAlloc) -> Core {
        self.tx_alloc = Some(tx);
        self
    }

    /// The allocator owning buffer `b`.
    /// References held on buffer `b` (pool or TX scratch); 0 for a buffer not of this core.
    pub fn refs(&self, b: BufIdx) -> u16 {
        let a = match &self.tx_alloc {
            Some(t) if t.range().contains(&b.0) => t,
            _ => &self.alloc,
        };
        a.refs(b).unwrap_or(0)
    }

    fn owner(&mut self, b: BufIdx) -> &mut BufAlloc {
        match &mut self.tx_alloc {
            Some(t) if t.range().contains(&b.0) => t,
            _ => &mut self.alloc,
        }
    }

    /// A whole buffer for transient TX data (a reply copy): from the TX buffers when the port
    /// has them, else from the pool. `None` when exhausted.
    pub fn alloc_tx_extent(&mut self) -> Option<Extent> {
        match self.tx_alloc.as_mut().and_then(|t| t.alloc()) {
            Some(b) => Some(Extent::owned(b, 0, self.cfg.buf_size)),
            None => self.alloc_extent(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// The buffer allocator (read-only view, e.g. for free-space figures).
    pub fn alloc(&self) -> &BufAlloc {
        &self.alloc
    }

    /// Buffers currently lent to the kernel.
    pub fn lent(&self) -> usize {
        self.bids.lent()
    }

    /// Open connections.
    pub fn open_conns(&self) -> usize {
        self.open_conns
    }

    /// Add a listening socket; an accept is queued.
    ///
    /// # Safety
    /// `fd` must be an open listening socket whose ownership passes to the core: the driver
    /// that runs this core's ops will accept on it and, at [`Core::close_listeners`] or
    /// [`Core::forget_all`], close it. Nothing else may close it meanwhile.
    #[allow(unsafe_code)] // declares the caller's promise; the core itself does no I/O
    pub unsafe fn add_listener(&mut self, fd: i32) -> u32 {
        let idx = self.listeners.len() as u32;
        self.listeners.push(Listener { fd, open: true });
        self.arm_accept(idx);
        idx
    }

    fn arm_accept(&mut self, idx: u32) {
        let l = &self.listeners[idx as usize];
        if l.open {
            let ud = UserData {
                kind: OpKind::Accept,
                gen: 0,
                idx,
            }
            .encode();
            self.ops.push_back(Op::Accept { fd: l.fd, ud });
        }
    }

    /// Stop accepting on every listener (the driver closes the listener sockets). Returns their
    /// fds.
    pub fn close_listeners(&mut self) -> Vec<i32> {
        self.listeners
            .iter_mut()
            .filter(|l| l.open)
            .map(|l| {
                l.open = false;
                l.fd
            })
            .collect()
    }

    /// Register a connected socket; a multishot recv is queued.
    ///
    /// # Safety
    /// `fd` must be an open stream socket whose ownership passes to the core: the driver that
    /// runs this core's ops receives and sends on it and closes it when the connection ends.
    /// Nothing else may use or close it meanwhile.
    #[allow(unsafe_code)] // declares the caller's promise; the core itself does no I/O
    pub unsafe fn register(&mut self, fd: i32) -> ConnId {
        self.adopt_conn(fd)
    }

    /// Register a socket the core owns (one an accept completion handed it).
    fn adopt_conn(&mut self, fd: i32) -> ConnId {
        let conn = Conn {
            fd,
            recv_armed: false,
            rx_done: false,
            close_requested: false,
            linger: false,
            fin_sent: false,
            broken: false,
            tx_inflight: false,
            inflight_chunks: 0,
            behind: false,
            txq: VecDeque::new(),
            tx_sent: 0,
        };
        let idx = match self.free_conns.pop() {
            Some(i) => i,
            None => {
                self.conns.push(Entry { gen: 0, conn: None });
                self.conns.len() as u32 - 1
            }
        };
        let e = &mut self.conns[idx as usize];
        e.conn = Some(conn);
        let id = ConnId { idx, gen: e.gen };
        self.open_conns += 1;
        self.arm_recv(id);
        id
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let e = self.conns.get_mut(id.idx as usize)?;
        if e.gen & GEN_MASK != id.gen & GEN_MASK {
            return None;
        }
        e.conn.as_mut()
    }

    /// The socket of an open connection.
    pub fn fd(&self, id: ConnId) -> Option<i32> {
        let e = self.conns.get(id.idx as usize)?;
        (e.gen == id.gen).then_some(())?;
        e.conn.as_ref().map(|c| c.fd)
    }

    fn arm_recv(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.recv_armed || c.rx_done || c.close_requested {
            return;
        }
        c.recv_armed = true;
        let fd = c.fd;
        let ud = UserData {
            kind: OpKind::Recv,
            gen: id.gen,
            idx: id.idx,
        }
        .encode();
        self.ops.push_back(Op::Recv { fd, ud });
    }

    /// Next operation to submit.
    pub fn pop_op(&mut self) -> Option<Op> {
        self.ops.pop_front()
    }

    /// Connections with data queued behind their in-flight send: their send completion is
    /// needed promptly, so a sync should not wait for extra completions past it.
    pub fn tx_backlog(&self) -> usize {
        self.backlog
    }

    /// Operations waiting to be submitted.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }

    /// Zero-copy sends whose notification has not arrived yet (their buffers are still held).
    pub fn zc_pending(&self) -> usize {
        self.zc_held.values().map(VecDeque::len).sum()
    }

    /// Start of a sync: recycle RX buffers the application did not keep, and clear the RX ring.
    pub fn begin_sync(&mut self) {
        for (slot, kept) in self.rx.iter().zip(&self.kept) {
            if slot.kind == SlotKind::Data && !kept {
                self.alloc
                    .release(slot.buf)
                    .expect("an RX slot holds a reference");
            }
        }
        self.rx.clear();
        self.kept.clear();
    }

    /// Lend free buffers to the kernel — up to twice what it filled since the last refill (at
    /// least 256), never more than the ring holds or beyond the reserve; `post(bid, buf)`
    /// writes each ring entry. Then re-arm receives that starved. Returns the
    /// number posted.
    pub fn refill(&mut self, mut post: impl FnMut(u16, BufIdx)) -> usize {
        // Post each batch in ascending buffer order: buffers freed together (a message's, in a
        // run) then sit next to each other in the ring, a bundle receive fills a run adjacent
        // in memory, and the driver sends it as one iovec. The free list stays LIFO, so the
        // buffers posted are the most recently used (cache-warm) ones.
        let mut batch = std::mem::take(&mut self.scratch);
        batch.clear();
        // Lend only about what the kernel used lately (twice the last interval's buffers, at
        // least 256): the ring then cycles through few buffers, which stay cache-warm, instead
        // of every entry the ring has.
        let target = (2 * self.consumed + 256).min(self.bids.entries());
        self.consumed = 0;
        while self.alloc.free_count() > self.cfg.reserve && self.bids.lent() + batch.len() < target
        {
            let Some(buf) = self.alloc.alloc() else { break };
            batch.push(buf);
        }
        batch.sort_unstable();
        let n = batch.len();
        for &buf in &batch {
            let bid = self.bids.lend(buf).expect("checked that an id is free");
            post(bid, buf);
        }
        batch.clear();
        self.scratch = batch;
        if self.bids.lent() > 0 && !self.starved.is_empty() {
            for id in std::mem::take(&mut self.starved) {
                self.arm_recv(id);
            }
        }
        n
    }

    /// Feed one completion (`user_data`, `res`, `flags` as the kernel reported them).
    ///
    /// A receive may be a *bundle*: `res` bytes in consecutive ring entries starting at the
    /// buffer id in `flags`, every buffer full but the last. It becomes one slot per buffer.
    pub fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if flags & CQE_F_NOTIF != 0 {
            return self.on_notif(user_data, res);
        }
        // Provided buffers must be accounted for whatever else is wrong with the completion.
        let mut bufs = std::mem::take(&mut self.scratch);
        bufs.clear();
        if flags & CQE_F_BUFFER != 0 {
            let n = if res > 0 {
                (res as u32).div_ceil(self.cfg.buf_size) as usize
            } else {
                1
            };
            if !self.bids.take_run((flags >> 16) as u16, n, &mut bufs) {
                self.stats.bad_cqes += 1;
                tracing::error!(flags, res, "completion names buffers that are not lent");
            }
        }
        let more = flags & CQE_F_MORE != 0;
        let ud = UserData::decode(user_data);
        match ud {
            Some(ud) if ud.kind == OpKind::Recv => {
                let id = ConnId {
                    idx: ud.idx,
                    gen: ud.gen,
                };
                self.on_recv(id, res, more, &bufs);
                bufs.clear();
            }
            Some(ud) if ud.kind == OpKind::Accept => self.on_accept(ud.idx, res, more),
            Some(ud) if ud.kind == OpKind::Send => {
                let id = ConnId {
                    idx: ud.idx,
                    gen: ud.gen,
                };
                self.on_send(id, res, more.then_some(user_data))
            }
            Some(_) => {}
            None => self.stats.bad_cqes += 1,
        }
        // Buffers on anything but a receive carry no data for anyone.
        self.release_lent(&bufs);
        bufs.clear();
        self.scratch = bufs;
    }

    fn on_accept(&mut self, idx: u32, res: i32, more: bool) {
        if res >= 0 {
            if self.listeners.get(idx as usize).is_some_and(|l| l.open) {
                // The kernel created this socket for this accept: ours to own.
                let id = self.adopt_conn(res);
                self.stats.accepted += 1;
                self.push_slot(id, SlotKind::Accepted);
            } else {
                // Accepted after the listener was closed: close it right away.
                let ud = UserData {
                    kind: OpKind::Close,
                    gen: 0,
                    idx: u32::MAX,
                }
                .encode();
                self.ops.push_back(Op::Close { fd: res, ud });
            }
        } else if res == -EINVAL {
            // The socket is no longer listening: shut down, by this port or by another one
            // sharing it (a server stopping). It will not listen again, so accepting ends
            // here; `close_listeners` still hands the fd back to be closed.
            tracing::debug!(listener = idx, "listener shut down");
            return;
        } else if self.listeners.get(idx as usize).is_some_and(|l| l.open) {
            tracing::warn!(errno = -res, "accept failed");
        }
        if !more && (idx as usize) < self.listeners.len() {
            self.arm_accept(idx);
        }
    }

    fn release_lent(&mut self, bufs: &[BufIdx]) {
        for &b in bufs {
            self.alloc
                .release(b)
                .expect("lent buffer holds a reference");
        }
    }

    fn on_recv(&mut self, id: ConnId, res: i32, more: bool, bufs: &[BufIdx]) {
        let Some(c) = self.conn_mut(id) else {
            self.stats.stale += 1;
            self.release_lent(bufs);
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        let id = ConnId {
            idx: id.idx,
            gen: self.conns[id.idx as usize].gen,
        };
        let lingering = self.conns[id.idx as usize]
            .conn
            .as_ref()
            .is_some_and(|c| c.linger);
        if lingering {
            self.release_lent(bufs);
            let c = self.conn_mut(id).expect("looked up above");
            if res > 0 && !more {
                self.arm_recv(id);
            } else if res <= 0 && res != -ENOBUFS && !more {
                c.rx_done = true;
                self.close(id);
            } else if res == -ENOBUFS {
                self.starved.push(id);
            }
            return;
        }
        match res {
            n if n > 0 && !bufs.is_empty() => {
                self.stats.rx_slots += bufs.len() as u64;
                self.consumed += bufs.len();
                self.stats.rx_completions += 1;
                self.stats.rx_bytes += n as u64;
                let size = self.cfg.buf_size;
                let mut left = n as u32;
                for &b in bufs {
                    let len = left.min(size);
                    left -= len;
                    let pos = self.rx.len() as u32;
                    self.rx.push(Slot {
                        conn: id,
                        buf: b,
                        off: 0,
                        len,
                        kind: SlotKind::Data,
                        pos,
                    });
                    self.kept.push(false);
                }
                if !more {
                    self.arm_recv(id);
                }
            }
            n => {
                // A buffer with a non-positive result carries no data.
                self.release_lent(bufs);
                if n == -ENOBUFS {
                    self.stats.enobufs += 1;
                    self.starved.push(id);
                } else if n == -ECANCELED {
                } else if more {
                    // Still armed: nothing ended.
                } else {
                    let c = self.conn_mut(id).expect("looked up above");
                    c.rx_done = true;
                    let kind = if n == 0 {
                        SlotKind::End
                    } else if n > 0 {
                        SlotKind::Error(0)
                    } else {
                        SlotKind::Error(-n)
                    };
                    if !c.close_requested {
                        self.push_slot(id, kind);
                    }
                }
            }
        }
    }

    fn push_slot(&mut self, conn: ConnId, kind: SlotKind) {
        let pos = self.rx.len() as u32;
        self.rx.push(Slot {
            conn,
            buf: BufIdx(0),
            off: 0,
            len: 0,
            kind,
            pos,
        });
        self.kept.push(false);
    }

    /// A zero-copy send's notification: the kernel is done with its buffers.
    fn on_notif(&mut self, user_data: u64, res: i32) {
        let group = match self.zc_held.get_mut(&user_data) {
            Some(q) => {
                let g = q.pop_front();
                if q.is_empty() {
                    self.zc_held.remove(&user_data);
                }
                g
            }
            None => None,
        };
        let Some(group) = group else {
            self.stats.bad_cqes += 1;
            tracing::error!(user_data, "zero-copy notification for no pending send");
            return;
        };
        self.stats.zc_notifs += 1;
        // IORING_NOTIF_USAGE_ZC_COPIED (with IORING_SEND_ZC_REPORT_USAGE): the kernel copied.
        self.stats.zc_copied += (res as u32 >> 31) as u64;
        for e in group {
            self.release(e);
        }
    }

    /// A send's result. `notif`: the user data under which a zero-copy notification will
    /// follow (the result had `CQE_F_MORE`); the sent extents are held until it arrives.
    fn on_send(&mut self, id: ConnId, res: i32, notif: Option<u64>) {
        let Some(c) = self.conn_mut(id) else {
            self.stats.stale += 1;
            return;
        };
        c.tx_inflight = false;
        let was_behind = std::mem::take(&mut c.behind);
        let mut released = Vec::new();
        if res >= 0 {
            let mut n = res as u32;
            while n > 0 {
                let Some(head) = c.txq.front() else { break };
                let left = head.len() - c.tx_sent;
                if n >= left {
                    n -= left;
                    c.tx_sent = 0;
                    released.push(c.txq.pop_front().expect("front exists"));
                } else {
                    c.tx_sent += n;
                    n = 0;
                }
            }
        } else {
            c.broken = true;
            c.tx_sent = 0;
            released.extend(c.txq.drain(..));
        }
        let notify = res < 0 && !c.rx_done && !c.close_requested;
        self.backlog -= was_behind as usize;
        self.stats.tx_bytes += res.max(0) as u64;
        match notif {
            Some(ud) => {
                self.stats.zc_sends += 1;
                // The kernel may still read these (and, after a short send, the sent part of
                // the head extent, which stays queued and referenced anyway).
                self.zc_held.entry(ud).or_default().push_back(released);
            }
            None => {
                for e in released {
                    self.release(e);
                }
            }
        }
        if notify {
            // The recv side will usually report the same failure; mark it so only one slot goes up.
            let c = self.conn_mut(id).expect("looked up above");
            c.rx_done = true;
            self.push_slot(id, SlotKind::Error(-res));
        }
        self.kick_tx(id);
    }

    /// Queue a send if the connection has data and none in flight; finish a requested close.
    fn kick_tx(&mut self, id: ConnId) {
        let max_iov = self.cfg.max_iov;
        let Some(c) = self.conn_mut(id) else { return };
        if c.tx_inflight {
            return;
        }
        if !c.txq.is_empty() && !c.broken {
            c.tx_inflight = true;
            c.inflight_chunks = c.txq.len().min(max_iov);
            let newly_behind = c.txq.len() > c.inflight_chunks && !c.behind;
            c.behind |= newly_behind;
            let fd = c.fd;
            self.backlog += newly_behind as usize;
            let ud = UserData {
                kind: OpKind::Send,
                gen: id.gen,
                idx: id.idx,
            }
            .encode();
            self.ops.push_back(Op::Send { conn: id, fd, ud });
        } else if c.close_requested {
            self.finish_close(id);
        } else if c.linger && !c.fin_sent {
            c.fin_sent = true;
            let fd = c.fd;
            let ud = UserData {
                kind: OpKind::Close,
                gen: id.gen,
                idx: id.idx,
            }
            .encode();
            self.ops.push_back(Op::ShutdownWrite { fd, ud });
        }
    }

    fn finish_close(&mut self, id: ConnId) {
        let e = &mut self.conns[id.idx as usize];
        let c = e.conn.take().expect("closing an open connection");
        if c.behind {
            self.backlog -= 1;
        }
        e.gen = (e.gen + 1) & GEN_MASK;
        self.free_conns.push(id.idx);
        self.open_conns -= 1;
        for x in c.txq {
            self.release(x);
        }
        let ud = UserData {
            kind: OpKind::Close,
            gen: id.gen,
            idx: id.idx,
        }
        .encode();
        self.ops.push_back(Op::Close { fd: c.fd, ud });
    }

    /// The RX ring filled by the last sync.
    pub fn rx(&self) -> &[Slot] {
        &self.rx
    }

    /// True when `slot` is a data slot of the current RX ring (its buffer is the app's until
    /// the next sync).
    pub fn is_current(&self, slot: &Slot) -> bool {
        slot.kind == SlotKind::Data && self.rx.get(slot.pos as usize) == Some(slot)
    }

    /// Keep a data slot's buffer: it will not be recycled, and the returned extent owns it.
    /// `None` if the slot is not a data slot of the current RX ring or was already kept.
    pub fn keep(&mut self, slot: &Slot) -> Option<Extent> {
        let p = slot.pos as usize;
        if slot.kind != SlotKind::Data || self.rx.get(p) != Some(slot) || self.kept[p] {
            return None;
        }
        self.kept[p] = true;
        Some(Extent::owned(slot.buf, slot.off, slot.len))
    }

    /// Split `ext` at `at` bytes: both halves share the buffer (one more reference).
    pub fn split(&mut self, ext: Extent, at: u32) -> (Extent, Extent) {
        let (b, off, len) = ext.into_raw();
        assert!(at <= len, "split beyond the extent");
        self.owner(b)
            .retain(b)
            .expect("an extent holds a reference");
        (
            Extent::owned(b, off, at),
            Extent::owned(b, off + at, len - at),
        )
    }

    /// Add a reference to an extent's buffer and return a second handle on `skip..skip+len` of it.
    pub fn share(&mut self, ext: &Extent, skip: u32, len: u32) -> Extent {
        self.owner(ext.buf())
            .retain(ext.buf())
            .expect("an extent holds a reference");
        let mut e = Extent::owned(ext.buf(), ext.off(), ext.len());
        e.narrow(skip, len);
        e
    }

    /// A new reference on part of an already referenced buffer of this partition.
    pub fn retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent> {
        if off as u64 + len as u64 > self.cfg.buf_size as u64 {
            return None;
        }
        self.owner(b).retain(b).ok()?;
        Some(Extent::owned(b, off, len))
    }

    /// A whole free buffer for the application to fill (e.g. a reply). `None` when the pool is
    /// exhausted: back-pressure, try again after the next sync.
    pub fn alloc_extent(&mut self) -> Option<Extent> {
        self.alloc
            .alloc()
            .map(|b| Extent::owned(b, 0, self.cfg.buf_size))
    }

    /// Give an extent's reference back.
    pub fn release(&mut self, ext: Extent) {
        let (b, _, _) = ext.into_raw();
        self.owner(b)
            .release(b)
            .expect("an extent holds a reference");
    }

    /// Queue `ext` for sending on `conn`, after everything queued before it.
    pub fn send(&mut self, conn: ConnId, ext: Extent) -> Result<(), SendError> {
        let ok = matches!(self.conn_mut(conn), Some(c) if !c.close_requested && !c.broken);
        if !ok {
            self.release(ext);
            return Err(SendError::Closed);
        }
        if ext.is_empty() {
            self.release(ext);
            return Ok(());
        }
        let c = self.conn_mut(conn).expect("checked");
        c.txq.push_back(ext);
        let newly_behind = c.tx_inflight && !c.behind;
        if newly_behind {
            c.behind = true;
            self.backlog += 1;
        }
        self.kick_tx(conn);
        Ok(())
    }

    /// Bytes queued but not yet sent on `conn`.
    pub fn tx_queued(&self, conn: ConnId) -> usize {
        let Some(c) = self
            .conns
            .get(conn.idx as usize)
            .filter(|e| e.gen == conn.gen)
            .and_then(|e| e.conn.as_ref())
        else {
            return 0;
        };
        c.txq.iter().map(|e| e.len() as usize).sum::<usize>() - c.tx_sent as usize
    }

    /// The chunks `(buf, off, len)` the in-flight send of `conn` covers (at most `max_iov`).
    pub fn tx_chunks(&self, conn: ConnId, out: &mut Vec<(BufIdx, u32, u32)>) {
        out.clear();
        let Some(c) = self
            .conns
            .get(conn.idx as usize)
            .filter(|e| e.gen == conn.gen)
            .and_then(|e| e.conn.as_ref())
        else {
            return;
        };
        for (i, e) in c.txq.iter().take(self.cfg.max_iov).enumerate() {
            let skip = if i == 0 { c.tx_sent } else { 0 };
            out.push((e.buf(), e.off() + skip, e.len() - skip));
        }
    }

    /// Close `conn` once its queued data is sent. Slots for it stop; a stale id is ignored.
    pub fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if c.close_requested {
            return;
        }
        c.close_requested = true;
        self.kick_tx(conn);
    }

    /// Lingering close: send what is queued, then FIN; discard whatever the peer still sends
    /// and close when it closes. No more slots are reported for `conn`. Use after a final
    /// (error) reply so that unread request bytes do not turn the close into a reset that
    /// could destroy the reply.
    pub fn close_lingering(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if c.close_requested || c.linger {
            return;
        }
        if c.rx_done || c.broken {
            return self.close(conn);
        }
        c.linger = true;
        self.kick_tx(conn);
    }

    /// Close every connection (shutdown).
    /// Forget every connection and listener at once and hand back their fds, for the driver
    /// to close when the port is dropped without a clean shutdown. Their buffers are not
    /// returned: the pool is going away with the port, or its owner recovers it from the store.
    pub fn forget_all(&mut self) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .conns
            .iter_mut()
            .filter_map(|e| e.conn.take().map(|c| c.fd))
            .collect();
        fds.extend(self.listeners.iter_mut().filter(|l| l.open).map(|l| {
            l.open = false;
            l.fd
        }));
        self.open_conns = 0;
        fds
    }

    /// Close every connection (as [`Core::close`]).
    pub fn close_all(&mut self) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, e)| e.conn.is_some())
            .map(|(i, e)| ConnId {
                idx: i as u32,
                gen: e.gen,
            })
            .collect();
        for id in ids {
            self.close(id);
        }
    }
}

#[cfg(test)]
// SAFETY (every `register`/`add_listener` below): the fds are simulated; no driver runs
// these ops, so no I/O is ever done on them.
#[allow(unsafe_code, clippy::undocumented_unsafe_blocks)]
mod tests {
    use super::*;

    fn core(bufs: u32, entries: u16) -> Core {
        Core::new(
            BufAlloc::new(100, bufs),
            CoreConfig {
                ring_entries: entries,
                reserve: 1,
                max_iov: 4,
                buf_size: 2048,
            },
        )
    }

    fn ud(op: Op) -> u64 {
        match op {
            Op::Accept { ud, .. }
            | Op::Recv { ud, .. }
            | Op::Send { ud, .. }
            | Op::Close { ud, .. }
            | Op::ShutdownWrite { ud, .. } => ud,
        }
    }

    /// Refill, returning the posted (bid, buf) pairs.
    fn refill(c: &mut Core) -> Vec<(u16, BufIdx)> {
        let mut v = Vec::new();
        c.refill(|bid, b| v.push((bid, b)));
        v
    }

    fn recv_flags(bid: u16, more: bool) -> u32 {
        (bid as u32) << 16 | CQE_F_BUFFER | if more { CQE_F_MORE } else { 0 }
    }

    /// Found by fuzzing (`ring_core`): sharing an extent of a transient TX buffer retained it
    /// in the pool's allocator instead of the TX buffers' one, and panicked.
    #[test]
    fn share_and_split_work_on_tx_buffers() {
        let mut c = core(8, 4).with_tx_buffers(BufAlloc::new(1000, 2));
        let e = c.alloc_tx_extent().unwrap();
        assert_eq!(e.buf(), BufIdx(1000));
        let s = c.share(&e, 10, 20);
        let (a, b) = c.split(e, 5);
        for x in [s, a, b] {
            c.release(x);
        }
        // All three references are gone: both TX buffers can be allocated again.
        let x = c.alloc_tx_extent().unwrap();
        let y = c.alloc_tx_extent().unwrap();
        assert!(x.buf().0 >= 1000 && y.buf().0 >= 1000);
        c.release(x);
        c.release(y);
    }

    #[test]
    fn zero_copy_sends_hold_buffers_until_the_notification() {
        let mut c = Core::new(
            BufAlloc::new(100, 8),
            CoreConfig {
                ring_entries: 4,
                reserve: 1,
                max_iov: 4,
                buf_size: 2048,
            },
        );
        let id = unsafe { c.register(5) };
        c.pop_op();
        let free0 = c.alloc().free_count();
        // One 2 KiB extent: below the threshold, a plain send released on its result.
        // The driver decides per send; the core learns it from the result's F_MORE.
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
        let Some(Op::Send { ud, .. }) = c.pop_op() else {
            panic!("expected a send")
        };
        for _ in 0..2 {
            let e = c.alloc_extent().unwrap();
            c.send(id, e).unwrap();
        }
        c.complete(ud, 2048, 0);
        assert_eq!(c.alloc().free_count(), free0 - 2, "plain send released");
        let Some(Op::Send { ud, .. }) = c.pop_op() else {
            panic!("expected a send")
        };
        c.complete(ud, 4096, CQE_F_MORE);
        assert_eq!(c.zc_pending(), 1);
        assert_eq!(
            c.alloc().free_count(),
            free0 - 2,
            "held until the notification"
        );
        c.complete(ud, 1 << 31, CQE_F_NOTIF);
        assert_eq!(c.zc_pending(), 0);
        assert_eq!(
            c.alloc().free_count(),
            free0,
            "released on the notification"
        );
        assert_eq!(
            (c.stats().zc_sends, c.stats().zc_notifs, c.stats().zc_copied),
            (1, 1, 1)
        );
        // A notification nobody is waiting for is counted, not trusted.
        c.complete(ud, 0, CQE_F_NOTIF);
        assert_eq!(c.stats().bad_cqes, 1);
    }

    #[test]
    fn a_bundle_becomes_one_slot_per_buffer() {
        let mut c = core(8, 8);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        // 2048 + 2048 + 100 bytes in the first three ring entries.
        c.complete(ud(rop), 4196, recv_flags(posted[0].0, true));
        let lens: Vec<u32> = c.rx().iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![2048, 2048, 100]);
        let bufs: Vec<BufIdx> = c.rx().iter().map(|s| s.buf).collect();
        assert_eq!(bufs, vec![posted[0].1, posted[1].1, posted[2].1]);
        assert!(c.rx().iter().all(|s| s.conn == id));
        assert_eq!(c.lent(), posted.len() - 3);
        assert_eq!(c.stats().rx_slots, 3);
        // The next single-buffer completion continues at the fourth entry.
        c.complete(ud(rop), 10, recv_flags(posted[3].0, true));
        assert_eq!(c.rx()[3].buf, posted[3].1);
        // A bundle claiming more entries than are lent is refused and takes nothing.
        let lent = c.lent();
        c.complete(ud(rop), 2048 * 8, recv_flags(posted[4].0, true));
        assert_eq!(c.stats().bad_cqes, 1);
        assert_eq!(c.lent(), lent);
    }

    #[test]
    fn lending_follows_what_the_kernel_used() {
        let mut c = core(4096, 4096);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        assert_eq!(posted.len(), 256, "a quiet port lends 256");
        // The kernel fills 200 buffers (in bundles of 4); the next refill lends up to 2 x 200.
        for run in posted[..200].chunks(4) {
            c.complete(ud(rop), 4 * 2048, recv_flags(run[0].0, true));
        }
        assert_eq!(c.lent(), 56);
        c.begin_sync();
        refill(&mut c);
        assert_eq!(c.lent(), 400 + 256);
        assert!(c.rx().is_empty() && c.open_conns() == 1 && id.index() == 0);
    }

    #[test]
    fn accept_registers_and_arms_recv() {
        let mut c = core(8, 4);
        unsafe { c.add_listener(3) };
        let Some(op @ Op::Accept { fd: 3, .. }) = c.pop_op() else {
            panic!()
        };
        c.complete(ud(op), 9, CQE_F_MORE);
        assert_eq!(c.rx().len(), 1);
        assert_eq!(c.rx()[0].kind, SlotKind::Accepted);
        assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 9, .. })));
        assert_eq!(c.pop_op(), None, "accept still armed (F_MORE)");
        c.begin_sync();
        c.complete(ud(op), 10, 0);
        assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 10, .. })));
        assert!(
            matches!(c.pop_op(), Some(Op::Accept { fd: 3, .. })),
            "re-armed without F_MORE"
        );
    }

    #[test]
    fn refill_respects_ring_size_and_reserve() {
        let mut c = core(8, 4);
        assert_eq!(refill(&mut c).len(), 4);
        assert_eq!(c.lent(), 4);
        let mut c = core(4, 8);
        assert_eq!(refill(&mut c).len(), 3, "one buffer stays in reserve");
    }

    #[test]
    fn recv_maps_bid_to_buffer_and_recycles_unkept() {
        let mut c = core(8, 4);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        let (bid, buf) = posted[2];
        c.complete(ud(rop), 100, recv_flags(bid, true));
        let s = c.rx()[0];
        assert_eq!(
            (s.conn, s.buf, s.len, s.kind),
            (id, buf, 100, SlotKind::Data)
        );
        let free_before = c.alloc().free_count();
        c.begin_sync();
        assert_eq!(
            c.alloc().free_count(),
            free_before + 1,
            "unkept slot recycled"
        );
        // Kept slot stays out of the free list until released.
        let (bid, _) = refill(&mut c)[0];
        c.complete(ud(rop), 7, recv_flags(bid, true));
        let s = c.rx()[0];
        let e = c.keep(&s).unwrap();
        assert!(c.keep(&s).is_none(), "a slot is kept once");
        let free = c.alloc().free_count();
        c.begin_sync();
        assert_eq!(c.alloc().free_count(), free);
        c.release(e);
        assert_eq!(c.alloc().free_count(), free + 1);
    }

    #[test]
    fn enobufs_pauses_then_rearms_after_refill() {
        let mut c = core(3, 4);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        assert_eq!(posted.len(), 2);
        c.complete(ud(rop), 10, recv_flags(posted[0].0, true));
        c.complete(ud(rop), 10, recv_flags(posted[1].0, true));
        c.complete(ud(rop), -ENOBUFS, 0);
        assert_eq!(c.stats().enobufs, 1);
        assert_eq!(c.pop_op(), None, "no re-arm while starved");
        let s0 = c.rx()[0];
        let kept = c.keep(&s0).unwrap();
        c.begin_sync();
        assert_eq!(
            refill(&mut c).len(),
            1,
            "one recycled buffer lent, one kept, one reserve"
        );
        assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 5, .. })));
        assert_eq!(c.fd(id), Some(5));
        c.release(kept);
    }

    #[test]
    fn eof_and_reset_become_slots_once() {
        let mut c = core(8, 4);
        let a = unsafe { c.register(5) };
        let b = unsafe { c.register(6) };
        let ra = c.pop_op().unwrap();
        let rb = c.pop_op().unwrap();
        c.complete(ud(ra), 0, 0);
        c.complete(ud(rb), -104, 0);
        let kinds: Vec<_> = c.rx().iter().map(|s| (s.conn, s.kind)).collect();
        assert_eq!(kinds, vec![(a, SlotKind::End), (b, SlotKind::Error(104))]);
        assert_eq!(c.pop_op(), None, "no re-arm after end of stream");
    }

    #[test]
    fn sends_are_ordered_partial_and_release_buffers() {
        let mut c = core(8, 1);
        let id = unsafe { c.register(5) };
        c.pop_op();
        let free0 = c.alloc().free_count();
        let mut e1 = c.alloc_extent().unwrap();
        e1.narrow(0, 10);
        let mut e2 = c.alloc_extent().unwrap();
        e2.narrow(5, 20);
        c.send(id, e1).unwrap();
        c.send(id, e2).unwrap();
        let Some(op @ Op::Send { .. }) = c.pop_op() else {
            panic!()
        };
        assert_eq!(c.pop_op(), None, "one send in flight per connection");
        let mut ch = Vec::new();
        c.tx_chunks(id, &mut ch);
        assert_eq!(ch.iter().map(|x| x.2).collect::<Vec<_>>(), vec![10, 20]);
        c.complete(ud(op), 13, 0); // short send: first chunk + 3 bytes of the second
        assert_eq!(c.alloc().free_count(), free0 - 1);
        let Some(op2 @ Op::Send { .. }) = c.pop_op() else {
            panic!("remainder resubmitted")
        };
        c.tx_chunks(id, &mut ch);
        assert_eq!(ch.len(), 1);
        assert_eq!((ch[0].1, ch[0].2), (5 + 3, 17));
        assert_eq!(c.tx_queued(id), 17);
        assert_eq!(c.tx_backlog(), 0);
        let e3 = c.alloc_extent().unwrap();
        c.send(id, e3).unwrap();
        assert_eq!(c.tx_backlog(), 1, "queued behind the in-flight send");
        c.complete(ud(op2), 17, 0);
        assert_eq!(c.tx_backlog(), 0);
        let Some(op3 @ Op::Send { .. }) = c.pop_op() else {
            panic!()
        };
        c.complete(ud(op3), 2048, 0);
        assert_eq!(c.alloc().free_count(), free0);
        assert_eq!(c.stats().tx_bytes, 30 + 2048);
    }

    #[test]
    fn close_waits_for_tx_and_stale_completions_are_dropped() {
        let mut c = core(8, 4);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
        let sop = c.pop_op().unwrap();
        c.close(id);
        assert_eq!(c.pop_op(), None, "close waits for the send");
        let e2 = c.alloc_extent().unwrap();
        assert_eq!(c.send(id, e2), Err(SendError::Closed));
        c.complete(ud(sop), 2048, 0);
        assert!(matches!(c.pop_op(), Some(Op::Close { fd: 5, .. })));
        assert_eq!(c.open_conns(), 0);
        // A late recv completion for the closed connection returns its buffer.
        let free = c.alloc().free_count();
        c.complete(ud(rop), 50, recv_flags(posted[0].0, false));
        assert_eq!(c.alloc().free_count(), free + 1);
        assert!(c.rx().is_empty());
        assert_eq!(c.stats().stale, 1);
        // The table slot is reused with a new generation; the old id stays dead.
        let id2 = unsafe { c.register(7) };
        assert_eq!(id2.index(), id.index());
        assert_ne!(id2, id);
        assert_eq!(c.fd(id), None);
        assert_eq!(c.fd(id2), Some(7));
    }

    #[test]
    fn lingering_close_sends_fin_after_tx_then_closes_on_peer_eof() {
        let mut c = core(8, 4);
        let id = unsafe { c.register(5) };
        let rop = c.pop_op().unwrap();
        let posted = refill(&mut c);
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
        let sop = c.pop_op().unwrap();
        c.close_lingering(id);
        assert_eq!(c.pop_op(), None, "FIN waits for the queued reply");
        c.complete(ud(sop), 2048, 0);
        assert!(matches!(c.pop_op(), Some(Op::ShutdownWrite { fd: 5, .. })));
        // Peer data after our FIN is discarded, not reported.
        let free = c.alloc().free_count();
        c.complete(ud(rop), 100, recv_flags(posted[0].0, true));
        assert!(c.rx().is_empty());
        assert_eq!(c.alloc().free_count(), free + 1);
        c.complete(ud(rop), 0, 0);
        assert!(matches!(c.pop_op(), Some(Op::Close { fd: 5, .. })));
        assert_eq!(c.open_conns(), 0);
    }

    #[test]
    fn garbage_completions_do_not_leak_or_panic() {
        let mut c = core(8, 4);
        let posted = refill(&mut c);
        let free = c.alloc().free_count();
        c.complete(0xdead, 5, recv_flags(posted[0].0, false));
        c.complete(0xdead, 5, recv_flags(posted[0].0, false)); // bid no longer lent
        c.complete(
            ud(Op::Recv {
                fd: 0,
                ud: UserData {
                    kind: OpKind::Recv,
                    gen: 3,
                    idx: 77,
                }
                .encode(),
            }),
            5,
            0,
        );
        assert_eq!(c.alloc().free_count(), free + 1);
        assert_eq!(c.stats().bad_cqes, 3, "undecodable twice, unknown bid once");
        assert_eq!(c.stats().stale, 1);
    }

    #[test]
    fn split_shares_one_buffer() {
        let mut c = core(8, 4);
        let e = c.alloc_extent().unwrap();
        let b = e.buf();
        let (x, y) = c.split(e, 100);
        assert_eq!((x.off(), x.len(), y.off(), y.len()), (0, 100, 100, 1948));
        assert_eq!(c.alloc().refs(b), Ok(2));
        c.release(x);
        c.release(y);
        assert_eq!(c.alloc().refs(b), Ok(0));
    }
}
