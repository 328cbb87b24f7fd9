//! The port state machine: connection table, RX ring, TX queues, buffer provisioning.
//!
//! Split by concern, each an `impl Core` block: this file holds the types and the connection
//! table; [`rx`] the receive side (refill, completions, the RX ring); [`tx`] the send side
//! (queues, send and notification completions, closing); [`extents`] the buffer references the
//! application holds.

use std::collections::{HashMap, VecDeque};

use pst_pool::{BufAlloc, BufIdx};

use crate::bid::BidTable;
use crate::completion::{Completion, Errno};
use crate::slot::{ConnId, Extent, Slot, SlotKind};
use crate::userdata::{OpKind, UserData, GEN_MASK};

/// Most bytes a lingering connection may still send before it is closed outright: enough for
/// requests already in flight when the final reply left, not a channel for a client that
/// keeps sending after a protocol error.
pub const LINGER_MAX: u64 = 64 << 10;

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
    /// completion of `ud` with `more` set (a multishot accept, or the driver's own accept
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
    /// Cancel the multishot recv whose `user_data` is `target` ([`Core::pause_rx`]): it ends
    /// with a last completion (`-ECANCELED`, or data, without `more`). `ud` is the cancel's
    /// own (a `Close` kind: its completion carries nothing for the core).
    CancelRecv {
        /// The recv's encoded [`UserData`].
        target: u64,
        /// Encoded [`UserData`] of the cancel request.
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
        /// Reset the connection (`SO_LINGER` 0) rather than leave the kernel sending what
        /// its socket still holds: set by [`Core::abort`], whose peer does not read. An
        /// orphaned socket would otherwise keep those bytes (and, after a zero-copy send,
        /// the pages they point into) until its retransmissions time out.
        reset: bool,
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
    /// Receives cancelled by [`Core::pause_rx`].
    pub rx_pauses: u64,
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

/// The receive side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// No receive is armed (not yet, or a multishot ended, or the buffer ring ran dry): one is
    /// armed when possible.
    Idle,
    /// A multishot receive is armed.
    Armed,
    /// Receiving is over for the application (end of stream, a reported error, a lingering
    /// peer that sent too much): never re-armed. A multishot still armed in the kernel may go
    /// on completing.
    Done,
}

/// The send side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    /// No send in flight.
    Idle,
    /// One send in flight. `behind`: more data is queued than it covers (the connection is
    /// counted in `Core::backlog`).
    InFlight { behind: bool },
    /// A send failed: the queue was dropped and no more data is accepted.
    Failed,
}

/// Where a connection is in its close sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Open: slots are reported, sends accepted.
    Open,
    /// Lingering close: FIN once the queued data is sent (`fin_sent` once it is queued), keep
    /// reading (and discarding) until the peer closes, so the peer sees our last reply instead
    /// of a reset.
    Lingering { fin_sent: bool },
    /// Close requested: the socket is closed once the queued data is sent. `lingering`: it
    /// ended a lingering close, whose discarding of received data goes on meanwhile.
    Closing { lingering: bool },
}

#[derive(Debug)]
struct Conn {
    fd: i32,
    rx: Rx,
    tx: Tx,
    life: Life,
    /// Bytes discarded while lingering; past [`LINGER_MAX`] the connection is closed outright.
    lingered: u64,
    txq: VecDeque<Extent>,
    /// Bytes of `txq[0]` already sent.
    tx_sent: u32,
    /// Bytes sent since the connection opened.
    sent_total: u64,
    /// Aborted ([`Core::abort`]): the final close resets the connection.
    reset: bool,
    /// Receiving is paused ([`Core::pause_rx`]): no receive is armed until it resumes.
    paused: bool,
}

impl Conn {
    /// Close requested (plain, or ending a lingering close).
    fn closing(&self) -> bool {
        matches!(self.life, Life::Closing { .. })
    }

    /// Received data is discarded, not reported (a lingering close, or the close ending one).
    fn discards_rx(&self) -> bool {
        matches!(
            self.life,
            Life::Lingering { .. } | Life::Closing { lingering: true }
        )
    }
}

#[derive(Debug)]
struct Entry {
    gen: u32,
    conn: Option<Conn>,
}

#[derive(Debug)]
struct Listener {
    /// The listening socket while the core owns it; `None` once handed back to be closed
    /// ([`Core::close_listeners`], [`Core::forget_all`]).
    fd: Option<i32>,
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
    /// The extents a send completion frees, gathered then released (kept: no allocation per
    /// completion).
    sent: Vec<Extent>,
    stats: CoreStats,
}

mod extents;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

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
            sent: Vec::new(),
            stats: CoreStats::default(),
        }
    }

    /// Add transient TX buffers (see [`Core::alloc_tx_extent`]).
    pub fn with_tx_buffers(mut self, tx: BufAlloc) -> Core {
        self.tx_alloc = Some(tx);
        self
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

    /// Buffers lent to the kernel beyond what [`Core::refill`] lends a quiet port: receive
    /// capacity a burst left behind. They come back only as the kernel fills them, so until
    /// then they are missing from the free count although receiving needs nothing more.
    pub fn lent_beyond_floor(&self) -> usize {
        self.bids.lent().saturating_sub(self.refill_floor())
    }

    /// The receive ring is empty and the free buffers are down to the reserve [`Core::refill`]
    /// keeps back: nothing more can be received on any connection until something is
    /// released.
    pub fn rx_starved(&self) -> bool {
        self.bids.lent() == 0 && self.alloc.free_count() <= self.cfg.reserve
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
        self.listeners.push(Listener { fd: Some(fd) });
        self.arm_accept(idx);
        idx
    }

    fn arm_accept(&mut self, idx: u32) {
        if let Some(fd) = self.listeners[idx as usize].fd {
            let ud = UserData {
                kind: OpKind::Accept,
                gen: 0,
                idx,
            }
            .encode();
            self.ops.push_back(Op::Accept { fd, ud });
        }
    }

    /// Stop accepting on every listener (the driver closes the listener sockets). Returns their
    /// fds.
    pub fn close_listeners(&mut self) -> Vec<i32> {
        self.listeners
            .iter_mut()
            .filter_map(|l| l.fd.take())
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
            rx: Rx::Idle,
            tx: Tx::Idle,
            life: Life::Open,
            lingered: 0,
            txq: VecDeque::new(),
            tx_sent: 0,
            sent_total: 0,
            reset: false,
            paused: false,
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

    /// The open connection `id` names; `None` for a stale id. Generations are compared as
    /// `user_data` carries them (masked).
    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let e = self.conns.get(id.idx as usize)?;
        if e.gen & GEN_MASK != id.gen & GEN_MASK {
            return None;
        }
        e.conn.as_ref()
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
        self.conn(id).map(|c| c.fd)
    }

    fn arm_recv(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.rx != Rx::Idle || c.closing() || c.paused {
            return;
        }
        c.rx = Rx::Armed;
        let fd = c.fd;
        let ud = UserData {
            kind: OpKind::Recv,
            gen: id.gen,
            idx: id.idx,
        }
        .encode();
        self.ops.push_back(Op::Recv { fd, ud });
    }

    /// Stop receiving on `conn` until [`Core::resume_rx`]: its armed multishot receive is
    /// cancelled and not re-armed, so the kernel keeps what the peer sends in the socket (and
    /// TCP flow control slows the peer) instead of filling pool buffers with requests the
    /// application is not ready for — a client that pipelines faster than it reads its
    /// replies. Data the receive delivered before the cancel took effect still arrives as
    /// slots. Not for a connection that is closing or lingering (those drain their input).
    pub fn pause_rx(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if c.paused || c.life != Life::Open {
            return;
        }
        c.paused = true;
        if c.rx == Rx::Armed {
            let at = |kind| {
                UserData {
                    kind,
                    gen: conn.gen,
                    idx: conn.idx,
                }
                .encode()
            };
            self.stats.rx_pauses += 1;
            let (target, ud) = (at(OpKind::Recv), at(OpKind::Close));
            self.ops.push_back(Op::CancelRecv { target, ud });
        }
    }

    /// Receive on `conn` again after [`Core::pause_rx`] (re-armed at the next sync, or once the
    /// cancelled receive has ended).
    pub fn resume_rx(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if !c.paused {
            return;
        }
        c.paused = false;
        self.arm_recv(conn);
    }

    /// Close `conn` once its queued data is sent. Slots for it stop; a stale id is ignored.
    pub fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if c.closing() {
            return;
        }
        c.life = Life::Closing {
            lingering: matches!(c.life, Life::Lingering { .. }),
        };
        self.kick_tx(conn);
    }

    /// Abortive close, for a peer that does not read: the queued data is dropped and its
    /// buffers come back now — all but those the send in flight covers, which the kernel may be
    /// reading; the socket's sending side is shut down so that send completes (failing, when
    /// the peer's window is closed), and then the socket is closed. No more slots for `conn`.
    pub fn abort(&mut self, conn: ConnId) {
        let max_iov = self.cfg.max_iov;
        let mut dropped = std::mem::take(&mut self.sent);
        let Some(c) = self.conn_mut(conn) else {
            self.sent = dropped;
            return;
        };
        let in_flight = matches!(c.tx, Tx::InFlight { .. });
        let keep = if in_flight {
            max_iov.min(c.txq.len())
        } else {
            0
        };
        dropped.extend(c.txq.drain(keep..));
        let was_behind = c.tx == (Tx::InFlight { behind: true });
        if was_behind {
            c.tx = Tx::InFlight { behind: false };
        }
        if keep == 0 {
            c.tx_sent = 0;
        }
        c.life = Life::Closing { lingering: false };
        c.reset = true;
        c.rx = Rx::Done;
        let fd = c.fd;
        self.backlog -= was_behind as usize;
        for e in dropped.drain(..) {
            self.release(e);
        }
        self.sent = dropped;
        if in_flight {
            let ud = UserData {
                kind: OpKind::Close,
                gen: conn.gen,
                idx: conn.idx,
            }
            .encode();
            self.ops.push_back(Op::ShutdownWrite { fd, ud });
        }
        self.kick_tx(conn);
    }

    /// Lingering close: send what is queued, then FIN; discard whatever the peer still sends
    /// and close when it closes. No more slots are reported for `conn`. Use after a final
    /// (error) reply so that unread request bytes do not turn the close into a reset that
    /// could destroy the reply.
    pub fn close_lingering(&mut self, conn: ConnId) {
        let Some(c) = self.conn_mut(conn) else { return };
        if c.life != Life::Open {
            return;
        }
        if c.rx == Rx::Done || c.tx == Tx::Failed {
            return self.close(conn);
        }
        c.life = Life::Lingering { fin_sent: false };
        // A lingering close drains the input: receive again if paused.
        c.paused = false;
        self.arm_recv(conn);
        self.kick_tx(conn);
    }

    /// Forget every connection and listener at once and hand back their fds, for the driver
    /// to close when the port is dropped without a clean shutdown. Their buffers are not
    /// returned: the pool is going away with the port, or its owner recovers it from the store.
    pub fn forget_all(&mut self) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .conns
            .iter_mut()
            .filter_map(|e| e.conn.take().map(|c| c.fd))
            .collect();
        fds.extend(self.listeners.iter_mut().filter_map(|l| l.fd.take()));
        // Connections already gone from the table whose close was queued but never submitted.
        fds.extend(self.ops.drain(..).filter_map(|op| match op {
            Op::Close { fd, .. } => Some(fd),
            _ => None,
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
