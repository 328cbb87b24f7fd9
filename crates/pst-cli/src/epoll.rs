//! The epoll baseline engine: level-triggered `epoll_wait`, then per ready connection one
//! `read()` into a private buffer, the application's handler (which copies what it stores), and
//! one `write()` of the reply. The application commits once per `epoll_wait` batch (group
//! commit, like Redis `appendfsync always`). This is the strongest plain-sockets design we know,
//! so it is the honest baseline for the port.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use crate::stats::StatsFile;

/// What the handler wants done with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Continue,
    /// Send what was queued, then close.
    Close,
}

/// An application served by the epoll engine.
pub trait StreamApp {
    /// Per-connection state.
    type Conn: Default;
    /// Bytes arrived on a connection; append replies to `out`.
    fn on_data(&mut self, conn: &mut Self::Conn, data: &[u8], out: &mut Vec<u8>) -> Verdict;
    /// End of an `epoll_wait` batch: persist what the batch stored before replies leave.
    /// Returns false if persisting failed (replies are then withheld and connections closed).
    fn commit(&mut self) -> bool {
        true
    }
    /// Requests handled so far (for the stats file).
    fn requests(&self) -> u64 {
        0
    }
    /// System calls the application made itself (e.g. `fdatasync` in commit).
    fn extra_syscalls(&self) -> u64 {
        0
    }
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
}

const LISTENER: u64 = u64::MAX;

/// Serve `listener` until `stop` is set.
pub fn serve<A: StreamApp>(
    listener: TcpListener,
    mut app: A,
    stop: &AtomicBool,
    stats: Option<(&StatsFile, usize)>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    let mut conns: Vec<Option<Conn<A::Conn>>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    let mut syscalls = 0u64;
    // Connections that got reply bytes this batch: written after the batch commit.
    let mut dirty: Vec<usize> = Vec::new();
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        events.clear();
        syscalls += 1;
        match epoll::wait(&ep, spare(&mut events), Some(&timeout)) {
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
                        Ok(fd) => {
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
                                app: A::Conn::default(),
                                want_write: false,
                                peer_done: false,
                                lingering: false,
                            });
                        }
                        Err(Errno::AGAIN) => break,
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
                    // End of stream or error: reply to what we have, then close.
                    c.close_after = true;
                    c.peer_done = true;
                    dirty.push(i);
                }
                Ok(_) if c.lingering => {} // discarded after our final reply
                Ok(n) => {
                    if app.on_data(&mut c.app, &buf[..n], &mut c.out) == Verdict::Close {
                        c.close_after = true;
                    }
                    dirty.push(i);
                }
            }
        }
        if dirty.is_empty() {
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
                    Ok(n) => c.out_off += n,
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
                } else if !c.lingering {
                    // Lingering close: FIN now, close when the peer closes, so unread request
                    // bytes do not turn our final reply into a reset.
                    syscalls += 1;
                    let _ = rustix::net::shutdown(&c.fd, rustix::net::Shutdown::Write);
                    c.lingering = true;
                }
            }
        }
        if let Some((s, t)) = stats {
            s.set(t, syscalls + app.extra_syscalls(), app.requests());
        }
    }
    if let Some((s, t)) = stats {
        s.set(t, syscalls + app.extra_syscalls(), app.requests());
    }
    Ok(())
}

fn spare(v: &mut Vec<epoll::Event>) -> rustix::buffer::SpareCapacity<'_, epoll::Event> {
    rustix::buffer::spare_capacity(v)
}
