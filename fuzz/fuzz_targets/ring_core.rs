//! Operation sequences on the I/O-free port core against the model of the kernel side,
//! `pst_ring::sim::Kernel` (shared with the core's unit tests).
//!
//! The model plays io_uring honestly: it completes only operations the core submitted, picks
//! provided buffers only from those lent, ends multishot receives the way the kernel does
//! (EOF, errors, ENOBUFS when the ring is empty, ECANCELED after a close), and completes sends
//! fully, partially or with an error. The input decides what the kernel does and when; the
//! application side keeps, splits, shares, sends and releases buffers, closes and lingers in
//! any order, and pauses and resumes receiving.
//!
//! Checked: no panic (the core asserts its own reference counting); every slot is sane; and
//! after shutdown every buffer is back — free or lent to the kernel — with no connection left.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pst_ring::sim::{Kernel, SendOutcome};
use pst_ring::{BufAlloc, ConnId, Core, CoreConfig, Errno, Extent, SlotKind};

const BUF_SIZE: u32 = 2048;

#[derive(Debug, Arbitrary)]
enum Op {
    Sync,
    Accept {
        more: bool,
    },
    Data {
        recv: u8,
        bid: u8,
        len: u16,
        more: bool,
        /// Extra buffers in a bundle receive (0: a single buffer).
        bundle: u8,
    },
    Eof {
        recv: u8,
    },
    RecvError {
        recv: u8,
        errno: u8,
    },
    Enobufs {
        recv: u8,
    },
    SendDone {
        send: u8,
        partial: Option<u16>,
        error: bool,
    },
    Notif {
        which: u8,
        copied: bool,
    },
    Keep {
        slot: u8,
    },
    Release {
        ext: u8,
    },
    Send {
        ext: u8,
        conn: u8,
    },
    Split {
        ext: u8,
        at: u16,
    },
    Share {
        ext: u8,
        skip: u16,
        len: u16,
    },
    AllocTx,
    Close {
        conn: u8,
    },
    Linger {
        conn: u8,
    },
    CloseAll,
    /// `pause_rx` (cancels the armed receive) and `resume_rx`.
    Pause {
        conn: u8,
    },
    Resume {
        conn: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    bufs: u8,
    ring_log2: u8,
    max_iov: u8,
    tx_bufs: u8,
    /// Which sends the driver submits as zero-copy (bit i: send i mod 8).
    zc_mask: u8,
    ops: Vec<Op>,
}

fn pick<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| i as usize % v.len())
}

/// One sync against the model kernel; new connections join `conns`.
fn sync(core: &mut Core, k: &mut Kernel, conns: &mut Vec<ConnId>) {
    k.sync(core);
    conns.extend(
        core.rx()
            .iter()
            .filter(|s| s.kind == SlotKind::Accepted)
            .map(|s| s.conn),
    );
}

fuzz_target!(|input: Input| {
    let bufs = 4 + input.bufs as u32 % 60;
    let entries = 1u16 << (1 + input.ring_log2 % 5);
    let tx = input.tx_bufs as u32 % 8;
    let mut core = Core::new(
        BufAlloc::new(0, bufs),
        CoreConfig {
            ring_entries: entries,
            reserve: 2,
            max_iov: 1 + input.max_iov as usize % 8,
            buf_size: BUF_SIZE,
        },
    );
    if tx > 0 {
        core = core.with_tx_buffers(BufAlloc::new(1000, tx));
    }
    // SAFETY: the model kernel runs all of this core's ops; nothing does real I/O.
    let mut k = unsafe { Kernel::new(BUF_SIZE, 10) }.with_zero_copy(input.zc_mask);
    let mut exts: Vec<Extent> = Vec::new();
    let mut conns = Vec::new();
    // SAFETY: a simulated fd; the model kernel runs the ops, nothing does real I/O.
    unsafe { core.add_listener(3) };
    sync(&mut core, &mut k, &mut conns);

    for a in input.ops.iter().take(500) {
        match *a {
            Op::Sync => sync(&mut core, &mut k, &mut conns),
            Op::Accept { more } => {
                k.accept(0, more);
            }
            Op::Data {
                recv,
                bid,
                len,
                more,
                bundle,
            } => {
                let fds = k.receiving();
                let lent = k.lent().len();
                let (Some(r), true) = (pick(&fds, recv), lent > 0) else {
                    continue;
                };
                let b = bid as usize % lent;
                // The kernel takes buffers from the ring head, in posting order; a bundle
                // takes a run of them. (A lone buffer from elsewhere is tolerated by the core
                // and exercised too.)
                let extra = (bundle % 4) as u32;
                let at = if extra > 0 { 0 } else { b };
                let len = extra * BUF_SIZE + 1 + len as u32 % BUF_SIZE;
                k.receive_at(fds[r], at, len, more);
            }
            Op::Eof { recv } => {
                let fds = k.receiving();
                if let Some(r) = pick(&fds, recv) {
                    k.end(fds[r]);
                }
            }
            Op::RecvError { recv, errno } => {
                let fds = k.receiving();
                if let Some(r) = pick(&fds, recv) {
                    let errno = [104, 110, 32, 22][errno as usize % 4];
                    k.fail_recv(fds[r], Errno(errno));
                }
            }
            Op::Enobufs { recv } => {
                let fds = k.receiving();
                if let Some(r) = pick(&fds, recv) {
                    k.run_dry(fds[r]);
                }
            }
            Op::SendDone {
                send,
                partial,
                error,
            } => {
                let sends = k.sending();
                if let Some(s) = pick(&sends, send) {
                    let (fd, total) = sends[s];
                    let outcome = match (error, partial) {
                        (true, _) => SendOutcome::Error(Errno::PIPE),
                        (false, Some(p)) => SendOutcome::Partial(p as u32 % (total + 1)),
                        (false, None) => SendOutcome::Full,
                    };
                    k.complete_send(fd, outcome);
                }
            }
            Op::Notif { which, copied } => {
                if k.notifs_owed() > 0 {
                    k.notify(which as usize % k.notifs_owed(), copied);
                }
            }
            Op::Keep { slot } => {
                let rx = core.rx();
                if let Some(i) = pick(rx, slot) {
                    let s = rx[i];
                    if let Some(e) = core.keep(&s) {
                        assert!(core.keep(&s).is_none(), "a slot kept twice");
                        exts.push(e);
                    }
                }
            }
            Op::Release { ext } => {
                if let Some(i) = pick(&exts, ext) {
                    core.release(exts.swap_remove(i));
                }
            }
            Op::Send { ext, conn } => {
                if let (Some(i), Some(c)) = (pick(&exts, ext), pick(&conns, conn)) {
                    let _ = core.send(conns[c], exts.swap_remove(i));
                }
            }
            Op::Split { ext, at } => {
                if let Some(i) = pick(&exts, ext) {
                    let e = exts.swap_remove(i);
                    let at = at as u32 % (e.len() + 1);
                    let (a, b) = core.split(e, at);
                    exts.push(a);
                    exts.push(b);
                }
            }
            Op::Share { ext, skip, len } => {
                if let Some(i) = pick(&exts, ext) {
                    let l = exts[i].len();
                    let skip = skip as u32 % (l + 1);
                    let len = len as u32 % (l - skip + 1);
                    let e = core.share(&exts[i], skip, len);
                    exts.push(e);
                }
            }
            Op::AllocTx => {
                if let Some(e) = core.alloc_tx_extent() {
                    exts.push(e);
                }
            }
            Op::Close { conn } => {
                if let Some(c) = pick(&conns, conn) {
                    core.close(conns[c]);
                }
            }
            Op::Linger { conn } => {
                if let Some(c) = pick(&conns, conn) {
                    core.close_lingering(conns[c]);
                }
            }
            Op::CloseAll => core.close_all(),
            Op::Pause { conn } => {
                if let Some(c) = pick(&conns, conn) {
                    core.pause_rx(conns[c]);
                }
            }
            Op::Resume { conn } => {
                if let Some(c) = pick(&conns, conn) {
                    core.resume_rx(conns[c]);
                }
            }
        }
    }

    // Shutdown: give everything back, close every connection, let the kernel finish.
    for e in exts.drain(..) {
        core.release(e);
    }
    core.close_listeners();
    for _ in 0..10_000 {
        core.close_all();
        sync(&mut core, &mut k, &mut conns);
        k.finish_in_flight();
        if core.open_conns() == 0 && k.is_quiet() && core.pending_ops() == 0 {
            break;
        }
    }
    sync(&mut core, &mut k, &mut conns);
    core.begin_sync();
    assert_eq!(core.open_conns(), 0, "connections left after shutdown");
    assert_eq!(core.zc_pending(), 0, "zero-copy sends still held");
    assert_eq!(
        core.alloc().free_count() + core.lent(),
        bufs as usize,
        "buffers leaked or double-counted"
    );
});
