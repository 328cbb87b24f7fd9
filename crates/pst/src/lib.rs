//! pst: PASTE for Rust — netmap-style rings over the kernel TCP/IP stack, on io_uring.
//!
//! The architecture in ten lines:
//! 1. A [`Pool`] is one file (or anonymous memory) mapped `MAP_SHARED`, cut into buffers named
//!    by [`BufIdx`]; on persistent memory, received data is persisted where it lands.
//! 2. A [`Port`] owns one partition of the pool and one io_uring.
//! 3. Every registered socket has a multishot recv drawing from one provided-buffer ring whose
//!    buffers are pool buffers: the kernel's one copy lands bytes in their final place.
//! 4. [`Port::sync`] is one `io_uring_enter`: it submits all queued TX and re-arms, and reaps
//!    every completion into the RX ring of [`Slot`]s — many connections, one system call.
//! 5. The app reads payload in place ([`Port::payload`]); [`Port::keep`] turns a slot into an
//!    [`Extent`] it owns (a spare buffer goes to the kernel instead), to log or to send back.
//! 6. TX sends from pool buffers, in order per connection, short sends resumed.
//! 7. The ring logic is I/O-free (`pst-ring`), the kernel glue thin (`pst-uring`).
//! 8. Durable structures over kept extents live in `pst-store`; servers in `pst-serve`.
//!
//! An echo server (`examples/echo.rs`; `examples/durable_kv.rs` adds the store and group
//! commit):
//!
//! ```no_run
//! use std::sync::Arc;
//! use pst::{Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};
//!
//! # fn main() -> std::io::Result<()> {
//! let geometry = Geometry::for_size(64 << 20, 2048).expect("valid geometry");
//! let pool = Arc::new(Pool::anonymous(geometry, PersistMode::None).expect("pool"));
//! let mut port = Port::whole(pool, PortConfig::default())?;
//! port.listen("127.0.0.1:7000".parse().unwrap())?;
//! loop {
//!     port.sync(None)?; // one io_uring_enter: send what is queued, receive everything
//!     while let Some(slot) = port.next_rx() {
//!         match slot.kind {
//!             SlotKind::Data => {
//!                 if let Some(ext) = port.keep(&slot) {
//!                     let _ = port.send(slot.conn, ext); // back from the buffer it landed in
//!                 }
//!             }
//!             SlotKind::End | SlotKind::Error(_) => port.close(slot.conn),
//!             SlotKind::Accepted => {}
//!         }
//!     }
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

pub use pst_pool::Partition;
pub use pst_pool::{BufIdx, Geometry, PersistError, PersistMode, Pool, PoolError, PoolOptions};
pub use pst_ring::{
    Buffers, ConnId, CoreStats, Extent, ExtentList, PackTarget, Packer, SendError, Slot, SlotKind,
    LINGER_MAX,
};
pub use pst_uring::{DriverConfig, DriverStats, Waker};

use pst_ring::{BufAlloc, Core, CoreConfig};
use pst_uring::Driver;

/// Port parameters.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// io_uring driver parameters (queue sizes, batching bound).
    pub driver: DriverConfig,
    /// Free buffers never lent to the kernel, kept for replies and keeping.
    pub reserve: usize,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            driver: DriverConfig::default(),
            reserve: 64,
        }
    }
}

/// Port counters: the core's plus the system calls the driver made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Ring bookkeeping counters.
    pub core: CoreStats,
    /// System call counters.
    pub driver: DriverStats,
}

/// A stack port: netmap's RX/TX rings for many TCP connections, one system call per sync.
#[derive(Debug)]
pub struct Port {
    // Field order matters for drop: the driver (the io_uring) goes before the pool mapping.
    driver: Driver,
    core: Core,
    pool: Arc<Pool>,
    /// Next RX slot [`Port::next_rx`] hands out (reset by every sync).
    rx_cursor: usize,
    /// Deliberately `!Send` and `!Sync`: the ring is `SINGLE_ISSUER | DEFER_TASKRUN`, bound to
    /// the thread that created it, and only that thread may enter it (create a port on the
    /// thread that will drive it).
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Drop for Port {
    /// Closes every socket the port still owns (connections not closed, listeners); queued
    /// data is not sent. Call [`Port::shutdown`] first for a clean close.
    fn drop(&mut self) {
        self.driver.close_leftovers(&mut self.core);
    }
}

/// A `send_copy` that could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendCopyError {
    /// The connection is closed or failed.
    #[error("connection is closed")]
    Closed,
    /// No free buffer for the copy: back-pressure; retry after a sync.
    #[error("pool exhausted")]
    PoolExhausted,
}

impl Port {
    /// A port over the buffers `part` of `pool`.
    pub fn new(pool: Arc<Pool>, part: Range<u32>, cfg: PortConfig) -> io::Result<Port> {
        Self::with_live(pool, part, cfg, |_| 0)
    }

    /// A port over `part` where `live(b)` references are already held on buffer `b` (by a
    /// recovered store): those buffers are never lent to the kernel until released.
    pub fn with_live(
        pool: Arc<Pool>,
        part: Range<u32>,
        cfg: PortConfig,
        live: impl FnMut(BufIdx) -> u16,
    ) -> io::Result<Port> {
        let len = part.end - part.start;
        let ring_entries = cfg
            .driver
            .ring_entries
            .min(len.next_power_of_two().min(32768) as u16);
        // The buffers become this port's alone (a second port or `Buffers` over any of them
        // is refused): the ring writes the ones it lends, the application the ones it keeps.
        let claim = pool
            .claim(part.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        let driver = Driver::new(
            claim,
            DriverConfig {
                ring_entries,
                ..cfg.driver
            },
        )?;
        let reserve = cfg.reserve.min(len as usize / 8);
        let core = Core::new(
            BufAlloc::with_live(part.start, len, live),
            CoreConfig {
                ring_entries,
                reserve,
                max_iov: pst_uring::MAX_IOV,
                buf_size: pool.buf_size(),
            },
        );
        // Replies are copied into anonymous scratch buffers: they need no persistence, and in
        // the pool file they would be dirty pages for the next fdatasync to write.
        let tx = pool.scratch_part(&part);
        let core = core.with_tx_buffers(BufAlloc::new(tx.start, tx.end - tx.start));
        Ok(Port {
            driver,
            core,
            rx_cursor: 0,
            pool,
            _thread_bound: std::marker::PhantomData,
        })
    }

    /// A port over the whole pool.
    pub fn whole(pool: Arc<Pool>, cfg: PortConfig) -> io::Result<Port> {
        let n = pool.geometry().buf_count;
        Self::new(pool, 0..n, cfg)
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Listen on `addr`; accepted connections are registered automatically and reported as
    /// `Accepted` slots. The address is this port's alone (no `SO_REUSEPORT`): if anything
    /// listens there already — another instance of the service, or a killed one's listener
    /// the kernel has not torn down yet — this fails with `EADDRINUSE`. To serve one address
    /// from several ports (threads), bind one `TcpListener` and hand a clone of it to each with
    /// [`Port::add_listener`], or use [`Port::listen_reuse_port`].
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let l = pst_uring::listener_with(addr, 4096, false)?;
        self.add_listener(l)
    }

    /// Listen on `addr` with `SO_REUSEPORT`: every socket bound to `addr` with it (in this
    /// process or any other of the same user) shares the address, and the kernel spreads new
    /// connections over them. Use only where that is wanted: a second instance of a service
    /// started by mistake is not refused.
    pub fn listen_reuse_port(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let l = pst_uring::listener_with(addr, 4096, true)?;
        self.add_listener(l)
    }

    /// Adopt an already listening socket. It is switched to non-blocking mode (which every
    /// duplicate of it shares): the port accepts on readiness until `EAGAIN`, holding no
    /// io_uring request on it, so the socket closes with the process even after `kill -9`.
    pub fn add_listener(&mut self, l: TcpListener) -> io::Result<SocketAddr> {
        let local = l.local_addr()?;
        self.driver.add_listener(&mut self.core, OwnedFd::from(l));
        Ok(local)
    }

    /// Stop accepting new connections (the listening sockets are shut down and closed).
    pub fn stop_listening(&mut self) {
        self.driver.stop_listening(&mut self.core);
    }

    /// Shut the port down cleanly: stop accepting, close every connection after its queued
    /// replies (FIN after the data), and keep syncing until they are all closed and every
    /// zero-copy send's notification is in — at most `linger`; whatever is left then is closed
    /// by `Drop`. The port stays usable for `sync` (there is nothing left to do).
    pub fn shutdown(&mut self, linger: Duration) -> io::Result<()> {
        self.stop_listening();
        self.close_all();
        let deadline = std::time::Instant::now() + linger;
        // Zero-copy sends: wait for their notifications too (the kernel may still read the pool).
        while (self.open_conns() > 0 || self.zc_pending() > 0)
            && std::time::Instant::now() < deadline
        {
            self.sync(Some(Duration::from_millis(10)))?;
        }
        self.sync(Some(Duration::ZERO))?;
        Ok(())
    }

    /// Register a connected socket the application made (a client connection).
    pub fn register(&mut self, stream: TcpStream) -> io::Result<ConnId> {
        pst_uring::set_nodelay(&stream)?;
        Ok(self.driver.register(&mut self.core, OwnedFd::from(stream)))
    }

    /// One `io_uring_enter`: submit queued TX and re-arms, wait per `timeout` (`None`: until
    /// something completes; zero: not at all), reap every completion into the RX ring. RX slots
    /// of the previous sync that were not kept are recycled first.
    pub fn sync(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.rx_cursor = 0;
        self.driver.sync(&mut self.core, timeout)
    }

    /// Start the pool's persist barrier in the background when it is an `fdatasync` of the
    /// pool file (`--persist fsync` on a file): an io_uring `FSYNC` (`IORING_FSYNC_DATASYNC`)
    /// submitted by the next [`Port::sync`], in the same `io_uring_enter` as the sends and
    /// re-arms, completing while the loop goes on receiving. It covers everything written to
    /// the pool before that sync. Returns false when the barrier is something else (a fence,
    /// nothing, an anonymous or poisoned pool: call [`Pool::barrier`] inline) or one is already
    /// in flight. Its outcome comes from [`Port::pool_synced`].
    pub fn sync_pool(&mut self) -> io::Result<bool> {
        self.driver.queue_pool_sync()
    }

    /// True while the pool file's `fdatasync` started with [`Port::sync_pool`] has not
    /// completed.
    pub fn pool_sync_in_flight(&self) -> bool {
        self.driver.pool_sync_in_flight()
    }

    /// The outcome of the background `fdatasync` once it completed (then taken), as
    /// [`Pool::barrier`] reports it: a failure poisons the pool.
    pub fn pool_synced(&mut self) -> Option<Result<(), PersistError>> {
        let r = self.driver.take_pool_sync()?;
        Some(self.pool.barrier_completed(r))
    }

    /// A handle that wakes this port out of a blocking [`Port::sync`] from another thread's
    /// port ([`Port::wake`]).
    pub fn waker(&self) -> io::Result<Waker> {
        self.driver.waker()
    }

    /// Wake the port `w` belongs to (an `IORING_OP_MSG_RING` submitted with this port's next
    /// sync): its blocking sync returns.
    pub fn wake(&mut self, w: &Waker) -> io::Result<()> {
        self.driver.wake(w)
    }

    /// The next slot of the RX ring filled by the last sync, in order; `None` when all were
    /// handed out. Slots are `Copy`, so the port stays free for `keep`/`send` in the loop body:
    /// `while let Some(slot) = port.next_rx() { .. }` (netmap's `cur` advancing over the ring).
    pub fn next_rx(&mut self) -> Option<Slot> {
        let s = self.core.rx().get(self.rx_cursor).copied()?;
        self.rx_cursor += 1;
        Some(s)
    }

    /// The RX ring filled by the last sync; valid until the next one.
    pub fn rx(&self) -> &[Slot] {
        self.core.rx()
    }

    /// The payload of a data slot of the current RX ring, read in place. Empty for other slots
    /// or for a slot from an earlier sync.
    pub fn payload(&self, slot: &Slot) -> &[u8] {
        if !self.core.is_current(slot) {
            return &[];
        }
        // A data slot of the current RX ring owns its buffer until the next sync.
        self.driver.bytes(slot.buf, slot.off, slot.len)
    }

    /// Keep a data slot's buffer (netmap's swap with a spare buffer): the returned extent is
    /// the application's until released; a free buffer is lent to the kernel instead.
    pub fn keep(&mut self, slot: &Slot) -> Option<Extent> {
        self.core.keep(slot)
    }

    /// Read an extent in place.
    pub fn bytes(&self, ext: &Extent) -> &[u8] {
        self.driver.bytes(ext.buf(), ext.off(), ext.len())
    }

    /// Write an extent in place (e.g. fill a reply buffer). Panics if the extent's buffer has
    /// other references (a buffer shared with a store, or with a send in flight, is never
    /// written).
    pub fn bytes_mut(&mut self, ext: &mut Extent) -> &mut [u8] {
        self.driver.bytes_mut(&self.core, ext)
    }

    /// A whole free buffer to fill; `None` when the pool is exhausted (back-pressure).
    pub fn alloc(&mut self) -> Option<Extent> {
        self.core.alloc_extent()
    }

    /// A whole free slot of `k` buffers of this port's partition, one extent per buffer, for
    /// a store's log to borrow (`pst_store::Store::segment_wanted`); `None` when no such
    /// slot is free. Buffers lent to the kernel are never part of one.
    pub fn alloc_run(&mut self, k: u32) -> Option<Vec<Extent>> {
        self.core.alloc_run(k)
    }

    /// Split an extent in two at `at`; both halves keep the buffer alive.
    pub fn split(&mut self, ext: Extent, at: u32) -> (Extent, Extent) {
        self.core.split(ext, at)
    }

    /// A second handle on part of an extent's buffer (one more reference).
    pub fn share(&mut self, ext: &Extent, skip: u32, len: u32) -> Extent {
        self.core.share(ext, skip, len)
    }

    /// A new reference on `len` bytes at `off` of buffer `b`, which must already be held by
    /// someone (e.g. a store's value) and belong to this port's partition; `None` otherwise.
    pub fn retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent> {
        self.core.retain(b, off, len)
    }

    /// True when buffer `b` belongs to this port's partition.
    pub fn owns(&self, b: BufIdx) -> bool {
        self.core.alloc().range().contains(&b.0)
    }

    /// Release an extent.
    pub fn release(&mut self, ext: Extent) {
        self.core.release(ext)
    }

    /// Queue `ext` for sending on `conn` (zero copy from the pool); it is released when sent.
    pub fn send(&mut self, conn: ConnId, ext: Extent) -> Result<(), SendError> {
        self.core.send(conn, ext)
    }

    /// Copy `data` into pool buffers and queue them on `conn`: for small replies.
    pub fn send_copy(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendCopyError> {
        let exts = copy_into(&mut TxSource(self), data).ok_or(SendCopyError::PoolExhausted)?;
        let mut exts = exts.into_iter();
        for e in exts.by_ref() {
            // A refused send releases its extent; release the rest too.
            if self.core.send(conn, e).is_err() {
                for rest in exts {
                    self.release(rest);
                }
                return Err(SendCopyError::Closed);
            }
        }
        Ok(())
    }

    /// Extents queued on `conn` and not yet fully sent (each holds a reference on a buffer).
    pub fn tx_pieces(&self, conn: ConnId) -> usize {
        self.core.tx_pieces(conn)
    }

    /// Bytes the kernel holds in `conn`'s socket that the peer has not acknowledged yet
    /// (`SIOCOUTQ`; `None` for a closed connection). Falls while the peer reads, even when a
    /// send waiting on a full socket buffer has not completed for seconds: how a caller tells
    /// a slow reader from a peer that reads nothing.
    pub fn unacked_bytes(&self, conn: ConnId) -> Option<u32> {
        let fd = self.core.fd(conn)?;
        pst_uring::unacked_send_bytes(fd).ok()
    }

    /// Bytes sent on `conn` since it opened.
    pub fn tx_sent_total(&self, conn: ConnId) -> u64 {
        self.core.tx_sent_total(conn)
    }

    /// Bytes queued on `conn` and not yet sent.
    pub fn tx_queued(&self, conn: ConnId) -> usize {
        self.core.tx_queued(conn)
    }

    /// Close `conn` after its queued data is sent.
    pub fn close(&mut self, conn: ConnId) {
        self.core.close(conn)
    }

    /// Abortive close of a peer that does not read: queued data is dropped and its buffers
    /// come back at once (those of the send in flight when it completes: the sending side is
    /// shut down so that it does), then the socket closes. No more slots for `conn`.
    pub fn abort(&mut self, conn: ConnId) {
        self.core.abort(conn)
    }

    /// Stop receiving on `conn` (its multishot receive is cancelled at the next sync): what the
    /// peer sends waits in the socket, and TCP flow control slows the peer, until
    /// [`Port::resume_rx`]. For a peer that pipelines requests faster than it reads the
    /// replies: its input then stops filling the pool. Slots already under way may still come.
    pub fn pause_rx(&mut self, conn: ConnId) {
        self.core.pause_rx(conn)
    }

    /// Receive on `conn` again after [`Port::pause_rx`].
    pub fn resume_rx(&mut self, conn: ConnId) {
        self.core.resume_rx(conn)
    }

    /// Lingering close (after a final error reply): queued data, then FIN; the peer's further
    /// bytes are discarded and the socket closes when the peer closes. No more slots for `conn`.
    pub fn close_lingering(&mut self, conn: ConnId) {
        self.core.close_lingering(conn)
    }

    /// Close every connection (after their queued data is sent).
    pub fn close_all(&mut self) {
        self.core.close_all()
    }

    /// Open connections.
    pub fn open_conns(&self) -> usize {
        self.core.open_conns()
    }

    /// Zero-copy sends whose buffers the kernel may still read (no notification yet).
    pub fn zc_pending(&self) -> usize {
        self.core.zc_pending()
    }

    /// Free buffers in this port's partition.
    pub fn free_buffers(&self) -> usize {
        self.core.alloc().free_count()
    }

    /// Free buffers, plus those lent to the kernel beyond what a quiet port lends: after a
    /// burst the receive ring holds extra buffers until the kernel fills them, and they are
    /// receive capacity as good as free ones. What a write reserve should be checked against.
    pub fn spare_buffers(&self) -> usize {
        self.core.alloc().free_count() + self.core.lent_beyond_floor()
    }

    /// The receive ring is empty and the free buffers are down to the port's reserve: nothing
    /// more can be received on any connection until something is released.
    pub fn rx_starved(&self) -> bool {
        self.core.rx_starved()
    }

    /// Buffers in this port's partition.
    pub fn capacity(&self) -> usize {
        self.core.alloc().capacity()
    }

    /// Counters, including the system calls made.
    pub fn stats(&self) -> PortStats {
        PortStats {
            core: self.core.stats(),
            driver: self.driver.stats(),
        }
    }
}

/// Something that hands out whole pool buffers to fill: a [`Port`] or [`Buffers`].
pub trait BufferSource {
    /// A whole free buffer; `None` when exhausted.
    fn alloc_extent(&mut self) -> Option<Extent>;
    /// Write access to an extent.
    fn extent_mut(&mut self, ext: &mut Extent) -> &mut [u8];
    /// Give an extent back.
    fn release_extent(&mut self, ext: Extent);
}

impl pst_ring::PackTarget for Port {
    fn pack_alloc(&mut self) -> Option<Extent> {
        self.core.alloc_extent()
    }
    fn pack_write(&mut self, token: &pst_ring::PackToken, b: BufIdx, off: u32, bytes: &[u8]) {
        self.driver.write_packed(token, b, off, bytes)
    }
    fn pack_retain(&mut self, b: BufIdx, off: u32, len: u32) -> Option<Extent> {
        self.core.retain(b, off, len)
    }
    fn pack_release(&mut self, e: Extent) {
        self.core.release(e)
    }
}

impl BufferSource for Port {
    fn alloc_extent(&mut self) -> Option<Extent> {
        self.alloc()
    }
    fn extent_mut(&mut self, ext: &mut Extent) -> &mut [u8] {
        self.bytes_mut(ext)
    }
    fn release_extent(&mut self, ext: Extent) {
        self.release(ext)
    }
}

impl BufferSource for Buffers {
    fn alloc_extent(&mut self) -> Option<Extent> {
        self.alloc()
    }
    fn extent_mut(&mut self, ext: &mut Extent) -> &mut [u8] {
        self.bytes_mut(ext)
    }
    fn release_extent(&mut self, ext: Extent) {
        self.release(ext)
    }
}

/// A port's transient TX buffers (anonymous scratch first, then the pool) as a source.
struct TxSource<'a>(&'a mut Port);

impl BufferSource for TxSource<'_> {
    fn alloc_extent(&mut self) -> Option<Extent> {
        self.0.core.alloc_tx_extent()
    }
    fn extent_mut(&mut self, ext: &mut Extent) -> &mut [u8] {
        self.0.bytes_mut(ext)
    }
    fn release_extent(&mut self, ext: Extent) {
        self.0.release(ext)
    }
}

/// Copy `bytes` into fresh buffers of `src`, one extent per buffer; all or nothing (`None`
/// when the buffers run out, with nothing held). Up to two buffers' worth allocates no list.
pub fn copy_into(src: &mut impl BufferSource, mut bytes: &[u8]) -> Option<ExtentList> {
    let mut out = ExtentList::new();
    while !bytes.is_empty() {
        let Some(mut e) = src.alloc_extent() else {
            for e in out {
                src.release_extent(e);
            }
            return None;
        };
        let n = bytes.len().min(e.len() as usize);
        e.narrow(0, n as u32);
        src.extent_mut(&mut e).copy_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        out.push(e);
    }
    Some(out)
}
