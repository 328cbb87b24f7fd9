//! A deterministic model of the kernel side of a port, for tests and fuzzing — not a driver.
//!
//! [`Kernel`] plays io_uring honestly: it completes only operations the core submitted, picks
//! provided buffers only from those lent (bundles take a run from the ring head), ends
//! multishot receives the way the kernel does (end of stream, errors, `ENOBUFS` only when the
//! ring is empty, `ECANCELED` when the socket is closed), completes sends fully, partially or
//! with an error, and delivers a zero-copy send's notification after its result. The test
//! says what happens and when; [`Kernel::sync`] then runs one sync of the core against it.
//! It does no I/O: sockets are numbers it makes up.

use std::collections::VecDeque;

use pst_pool::BufIdx;

use crate::completion::{Completion, Errno};
use crate::core::{Core, Op};
use crate::slot::SlotKind;

/// How a send in flight ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Every byte it covers was sent.
    Full,
    /// Only this many bytes were sent (at most what it covers).
    Partial(u32),
    /// It failed.
    Error(Errno),
}

#[derive(Debug)]
struct InFlightSend {
    fd: i32,
    ud: u64,
    bytes: u32,
    zero_copy: bool,
}

/// The kernel side of one port: the requests the core has armed, the buffers lent to it, and
/// the completions it will deliver at the next [`Kernel::sync`].
#[derive(Debug)]
pub struct Kernel {
    buf_size: u32,
    /// Lent buffers in ring order (posting order).
    lent: VecDeque<(u16, BufIdx)>,
    /// Armed accepts (their user data).
    accepts: Vec<u64>,
    /// Armed multishot receives: (fd, user data).
    recvs: Vec<(i32, u64)>,
    sends: Vec<InFlightSend>,
    /// Zero-copy notifications owed: (fd, send user data), oldest first.
    notifs: Vec<(i32, u64)>,
    /// Completions for the next sync.
    cqes: Vec<Completion>,
    /// Completions for the sync after it.
    later: Vec<Completion>,
    next_fd: i32,
    zero_copy: u8,
    sends_seen: u32,
    chunks: Vec<(BufIdx, u32, u32)>,
}

impl Kernel {
    /// A kernel for a core with `buf_size`-byte buffers; accepted sockets are numbered from
    /// `first_fd`.
    ///
    /// # Safety
    /// No real driver may ever run the operations of a core this kernel is used with: the
    /// model takes them all and hands the core socket numbers it made up, which a driver
    /// would then use and close.
    #[allow(unsafe_code)] // declares the caller's promise; the model does no I/O
    pub unsafe fn new(buf_size: u32, first_fd: i32) -> Kernel {
        Kernel {
            buf_size,
            lent: VecDeque::new(),
            accepts: Vec::new(),
            recvs: Vec::new(),
            sends: Vec::new(),
            notifs: Vec::new(),
            cqes: Vec::new(),
            later: Vec::new(),
            next_fd: first_fd,
            zero_copy: 0,
            sends_seen: 0,
            chunks: Vec::new(),
        }
    }

    /// Which sends go out as zero-copy: bit `i` for the sends numbered `i` modulo 8 (the real
    /// driver decides per send; the core learns it from the result).
    pub fn with_zero_copy(mut self, mask: u8) -> Kernel {
        self.zero_copy = mask;
        self
    }

    /// One sync of `core`: recycle its RX ring, take the buffers it lends, take its operations,
    /// then deliver the completions queued for this sync. Afterwards `core.rx()` holds the
    /// slots they produced.
    ///
    /// Panics if the core asks for something no kernel would do (an empty send, a chunk
    /// outside its buffer) or reports a slot that makes no sense.
    pub fn sync(&mut self, core: &mut Core) {
        core.begin_sync();
        core.refill(|bid, buf| self.lent.push_back((bid, buf)));
        while let Some(op) = core.pop_op() {
            match op {
                Op::Accept { ud, .. } => self.accepts.push(ud),
                Op::Recv { fd, ud } => self.recvs.push((fd, ud)),
                Op::Send { conn, fd, ud } => {
                    let zero_copy = self.zero_copy >> (self.sends_seen % 8) & 1 == 1;
                    self.sends_seen += 1;
                    core.tx_chunks(conn, &mut self.chunks);
                    assert!(!self.chunks.is_empty(), "a send with nothing to send");
                    for &(_, off, len) in &self.chunks {
                        assert!(off + len <= self.buf_size, "send chunk outside its buffer");
                    }
                    let bytes = self.chunks.iter().map(|c| c.2).sum();
                    self.sends.push(InFlightSend {
                        fd,
                        ud,
                        bytes,
                        zero_copy,
                    });
                }
                Op::ShutdownWrite { .. } => {}
                Op::CancelRecv { target, ud } => {
                    // The cancelled receive ends with `-ECANCELED`; the cancel itself
                    // succeeds, or finds nothing if the receive had already ended.
                    let found = self.recvs.iter().position(|r| r.1 == target);
                    let outcome = match found {
                        Some(i) => {
                            let (_, rud) = self.recvs.remove(i);
                            self.cqes
                                .push(result(rud, Err(Errno::CANCELED), None, false));
                            Ok(0)
                        }
                        None => Err(Errno::NOENT),
                    };
                    self.cqes.push(result(ud, outcome, None, false));
                }
                Op::Close { fd, .. } => {
                    // Closing the socket cancels its multishot receive.
                    let (gone, armed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recvs)
                        .into_iter()
                        .partition(|r| r.0 == fd);
                    self.recvs = armed;
                    for (_, ud) in gone {
                        self.cqes
                            .push(result(ud, Err(Errno::CANCELED), None, false));
                    }
                }
            }
        }
        for c in std::mem::take(&mut self.cqes) {
            // SAFETY: no real driver runs this core's ops (the promise of `Kernel::new`); the
            // completion answers an op the core submitted to this model.
            #[allow(unsafe_code)]
            unsafe {
                core.complete(c)
            };
        }
        self.cqes = std::mem::take(&mut self.later);
        for s in core.rx() {
            if s.kind == SlotKind::Data {
                assert!(
                    s.len > 0 && s.off + s.len <= self.buf_size,
                    "bad slot {s:?}"
                );
            }
        }
    }

    /// Buffers lent to the kernel, in ring order: (buffer id, buffer).
    pub fn lent(&self) -> impl ExactSizeIterator<Item = (u16, BufIdx)> + '_ {
        self.lent.iter().copied()
    }

    /// Armed accepts.
    pub fn accepts(&self) -> usize {
        self.accepts.len()
    }

    /// Sockets with a multishot receive armed.
    pub fn receiving(&self) -> Vec<i32> {
        self.recvs.iter().map(|r| r.0).collect()
    }

    /// Sends in flight: (socket, bytes the send covers).
    pub fn sending(&self) -> Vec<(i32, u32)> {
        self.sends.iter().map(|s| (s.fd, s.bytes)).collect()
    }

    /// Zero-copy notifications owed.
    pub fn notifs_owed(&self) -> usize {
        self.notifs.len()
    }

    /// Nothing left to deliver.
    pub fn is_quiet(&self) -> bool {
        self.cqes.is_empty() && self.later.is_empty()
    }

    /// A connection arrives on armed accept `i`; `more`: the accept stays armed. Returns the
    /// new socket, or `None` if there is no such accept.
    pub fn accept(&mut self, i: usize, more: bool) -> Option<i32> {
        let ud = *self.accepts.get(i)?;
        if !more {
            self.accepts.remove(i);
        }
        let fd = self.next_fd;
        self.next_fd += 1;
        self.cqes.push(result(ud, Ok(fd as u32), None, more));
        Some(fd)
    }

    /// `len` bytes arrive on `fd` into the buffers lent at ring positions `at..at + n`, `n`
    /// the buffers `len` fills (a bundle when more than one). The kernel takes buffers from the
    /// ring head; a buffer from elsewhere (`at > 0`) is tolerated by the core, so it can be
    /// modelled too. `more`: the receive stays armed. False (nothing happens) without an armed
    /// receive on `fd`, with `len` zero, or without enough lent buffers there.
    pub fn receive_at(&mut self, fd: i32, at: usize, len: u32, more: bool) -> bool {
        let n = len.div_ceil(self.buf_size) as usize;
        let Some(r) = self.recvs.iter().position(|r| r.0 == fd) else {
            return false;
        };
        if len == 0 || at + n > self.lent.len() {
            return false;
        }
        let (bid, _) = self.lent[at];
        self.lent.drain(at..at + n);
        let ud = if more {
            self.recvs[r].1
        } else {
            self.recvs.remove(r).1
        };
        self.cqes.push(result(ud, Ok(len), Some(bid), more));
        true
    }

    /// `len` bytes arrive on `fd`, from the ring head (see [`Kernel::receive_at`]).
    pub fn receive(&mut self, fd: i32, len: u32, more: bool) -> bool {
        self.receive_at(fd, 0, len, more)
    }

    /// The peer closes its sending side: the receive on `fd` ends with 0.
    pub fn end(&mut self, fd: i32) -> bool {
        self.end_recv(fd, Ok(0))
    }

    /// The receive on `fd` fails with `errno`.
    pub fn fail_recv(&mut self, fd: i32, errno: Errno) -> bool {
        self.end_recv(fd, Err(errno))
    }

    /// The receive on `fd` finds the buffer ring empty and ends with `ENOBUFS` (only when the
    /// ring is empty, as in the kernel).
    pub fn run_dry(&mut self, fd: i32) -> bool {
        self.lent.is_empty() && self.end_recv(fd, Err(Errno::NOBUFS))
    }

    fn end_recv(&mut self, fd: i32, res: Result<u32, Errno>) -> bool {
        let Some(r) = self.recvs.iter().position(|r| r.0 == fd) else {
            return false;
        };
        let (_, ud) = self.recvs.remove(r);
        self.cqes.push(result(ud, res, None, false));
        true
    }

    /// The send in flight on `fd` ends with `outcome`. A zero-copy send's notification is then
    /// owed. False without a send in flight on `fd`.
    pub fn complete_send(&mut self, fd: i32, outcome: SendOutcome) -> bool {
        let Some(i) = self.sends.iter().position(|s| s.fd == fd) else {
            return false;
        };
        let s = self.sends.remove(i);
        let res = match outcome {
            SendOutcome::Full => Ok(s.bytes),
            SendOutcome::Partial(n) => Ok(n.min(s.bytes)),
            SendOutcome::Error(e) => Err(e),
        };
        self.cqes.push(result(s.ud, res, None, s.zero_copy));
        if s.zero_copy {
            self.notifs.push((s.fd, s.ud));
        }
        true
    }

    /// Deliver owed notification `i` — the oldest one of its send user data, as TCP frees a
    /// socket's data in order; `copied`: the kernel copied after all.
    pub fn notify(&mut self, i: usize, copied: bool) -> bool {
        let Some(&(_, ud)) = self.notifs.get(i) else {
            return false;
        };
        let first = self
            .notifs
            .iter()
            .position(|n| n.1 == ud)
            .expect("found above");
        self.notifs.remove(first);
        self.cqes.push(Completion::ZcNotif {
            user_data: ud,
            copied,
        });
        true
    }

    /// Everything in flight ends: sends complete in full (notifications owed follow one sync
    /// later), and every peer closes (armed receives end with 0).
    pub fn finish_in_flight(&mut self) {
        for (fd, _) in self.sending() {
            self.complete_send(fd, SendOutcome::Full);
        }
        for (_, ud) in self.notifs.drain(..) {
            self.later.push(Completion::ZcNotif {
                user_data: ud,
                copied: false,
            });
        }
        for fd in self.receiving() {
            self.end(fd);
        }
    }
}

fn result(
    user_data: u64,
    result: Result<u32, Errno>,
    buffer: Option<u16>,
    more: bool,
) -> Completion {
    Completion::Op {
        user_data,
        result,
        buffer,
        more,
    }
}
