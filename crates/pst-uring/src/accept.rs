//! Accepting connections without an io_uring request on the listening socket.
//!
//! A multishot `ACCEPT` would be the obvious path, but it holds a reference on the listening
//! socket for as long as it is armed, and when the process dies the kernel tears the ring
//! down asynchronously: measured here, a SIGKILLed server's socket went on accepting for
//! 6–22 ms (with `bench/kill9_listener_window.py`), and every connection accepted in that
//! window is reset a moment later. So instead the listeners go into an epoll set that nothing
//! but this driver reads, and io_uring polls *the epoll fd*. epoll keeps no reference on the
//! files it watches, so the listening socket's only reference is the process's fd: it closes
//! with the process (connections are refused from then on, as with a plain `accept` server).
//!
//! When the poll fires, the driver calls `accept4` on each listener until `EAGAIN` and feeds
//! each new socket to the core as the completion of its accept request (with `F_MORE`: the
//! "multishot accept" stays armed), then re-arms the one-shot poll in the next submit. The
//! cost is one `accept4` per connection plus one per burst — none on established traffic.

use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};

use pst_ring::{Completion, Errno};
use rustix::event::epoll;
use rustix::net::SocketFlags;

/// `user_data` of the poll on the epoll fd: a kind byte the core never encodes.
pub(crate) const ACCEPT_READY: u64 = 0xA5 << 56;
/// `user_data` of the back-off timer after an accept ran out of fds or memory.
pub(crate) const ACCEPT_BACKOFF: u64 = 0xA6 << 56;
/// How long to wait before accepting again after running out of fds or memory.
pub(crate) const BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// The listeners of one port and the epoll set that watches them.
#[derive(Debug)]
pub(crate) struct Acceptor {
    epoll: Option<OwnedFd>,
    /// (listener fd, the core's accept `user_data`).
    listeners: Vec<(i32, u64)>,
    /// A poll on the epoll fd is in flight.
    pub(crate) armed: bool,
    /// `accept4` calls made (the ones that returned `EAGAIN` included).
    pub(crate) calls: u64,
    /// The last accept loop ran out of a resource (fds, memory): back off before polling.
    pub(crate) starved: bool,
}

impl Acceptor {
    pub(crate) fn new() -> Acceptor {
        Acceptor {
            epoll: None,
            listeners: Vec::new(),
            armed: false,
            calls: 0,
            starved: false,
        }
    }

    /// The epoll fd to poll, once there is a listener.
    pub(crate) fn epoll_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.epoll.as_ref().map(|e| e.as_raw_fd())
    }

    /// Watch listener `fd`, whose accepts complete with `ud`. A listener already watched only
    /// gets its `ud` updated (the core re-arms after a failed accept).
    pub(crate) fn add(&mut self, fd: i32, ud: u64) -> io::Result<()> {
        if let Some(l) = self.listeners.iter_mut().find(|l| l.0 == fd) {
            l.1 = ud;
            return Ok(());
        }
        let lfd = borrow(fd);
        // Non-blocking, so the accept loop ends with EAGAIN instead of waiting.
        rustix::io::ioctl_fionbio(lfd, true)?;
        if self.epoll.is_none() {
            self.epoll = Some(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        }
        let ep = self.epoll.as_ref().expect("created above");
        // Ports sharing one listener are all woken by a connection (io_uring waits on the
        // epoll fd's own wait queue, where EPOLLEXCLUSIVE does not apply); the losers' accept4
        // returns EAGAIN. Level-triggered: a connection left pending wakes the next poll.
        epoll::add(
            ep,
            lfd,
            epoll::EventData::new_u64(fd as u64),
            epoll::EventFlags::IN,
        )?;
        self.listeners.push((fd, ud));
        Ok(())
    }

    /// Stop watching `fd` (before the port closes it, so its number is never used again here).
    pub(crate) fn remove(&mut self, fd: i32) {
        if let Some(i) = self.listeners.iter().position(|l| l.0 == fd) {
            self.listeners.swap_remove(i);
            if let Some(ep) = &self.epoll {
                let _ = epoll::delete(ep, borrow(fd));
            }
        }
    }

    /// Accept every pending connection on every listener. A listener that fails (shut down,
    /// say) is dropped from the set and its error reported without `F_MORE`, as a multishot
    /// accept's end would be.
    pub(crate) fn accept_all(&mut self, out: &mut Vec<Completion>) {
        let mut failed = Vec::new();
        for &(fd, ud) in &self.listeners {
            loop {
                self.calls += 1;
                match rustix::net::accept_with(borrow(fd), SocketFlags::CLOEXEC) {
                    Ok(s) => out.push(accepted(ud, Ok(OwnedFd::into_raw_fd(s) as u32), true)),
                    Err(e) if e == rustix::io::Errno::AGAIN => break,
                    // The peer gave up before we accepted it: try the next one.
                    Err(e)
                        if e == rustix::io::Errno::CONNABORTED || e == rustix::io::Errno::INTR => {}
                    // Out of fds or memory: the connection stays queued and the listener stays
                    // ready, so polling again at once would spin; the driver backs off.
                    Err(e)
                        if e == rustix::io::Errno::MFILE
                            || e == rustix::io::Errno::NFILE
                            || e == rustix::io::Errno::NOBUFS
                            || e == rustix::io::Errno::NOMEM =>
                    {
                        out.push(accepted(ud, Err(Errno(e.raw_os_error())), true));
                        self.starved = true;
                        break;
                    }
                    Err(e) => {
                        out.push(accepted(ud, Err(Errno(e.raw_os_error())), false));
                        failed.push(fd);
                        break;
                    }
                }
            }
        }
        for fd in failed {
            self.remove(fd);
        }
    }
}

/// An accept attempt's outcome as the completion of the listener's accept request `ud`;
/// `more`: the request stays armed, as a multishot accept's would.
fn accepted(ud: u64, result: Result<u32, Errno>, more: bool) -> Completion {
    Completion::Op {
        user_data: ud,
        result,
        buffer: None,
        more,
    }
}

/// Borrow a listener fd the core owns.
fn borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: `fd` is a listener the port adopted (`Driver::adopt`); the port removes it from
    // the acceptor (`Acceptor::remove`) before it closes it, so it is open whenever borrowed
    // here, and the borrow never outlives the call that made it.
    #[allow(unsafe_code)]
    unsafe {
        BorrowedFd::borrow_raw(fd)
    }
}
