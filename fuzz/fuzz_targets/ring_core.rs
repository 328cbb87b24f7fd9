//! Operation sequences on the I/O-free port core against a model of the kernel side.
//!
//! The model plays io_uring honestly: it completes only operations the core submitted, picks
//! provided buffers only from those lent, ends multishot receives the way the kernel does
//! (EOF, errors, ENOBUFS when the ring is empty, ECANCELED after a close), and completes sends
//! fully, partially or with an error. The application side keeps, splits, shares, sends and
//! releases buffers, closes and lingers in any order.
//!
//! Checked: no panic (the core asserts its own reference counting); every slot is sane; and
//! after shutdown every buffer is back — free or lent to the kernel — with no connection left.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pst_ring::{BufAlloc, ConnId, Core, CoreConfig, Extent, Op as CoreOp, SlotKind};

const BUF_SIZE: u32 = 2048;
const F_BUFFER: u32 = 1;
const F_MORE: u32 = 2;
const F_NOTIF: u32 = 8;

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

#[derive(Default)]
struct Kernel {
    lent: Vec<u16>,
    accepts: Vec<u64>,
    /// Armed multishot receives: (fd, user_data).
    recvs: Vec<(i32, u64)>,
    /// Sends in flight: (user_data, bytes it covers, zero-copy).
    sends: Vec<(u64, u32, bool)>,
    /// Zero-copy notifications owed, oldest first (the kernel keeps a socket's in order).
    notifs: Vec<u64>,
    /// Completions to deliver at the next sync.
    cqes: Vec<(u64, i32, u32)>,
    /// Completions to deliver at the sync after (shutdown only).
    later: Vec<(u64, i32, u32)>,
    next_fd: i32,
    zc_mask: u8,
    sends_seen: u32,
    conns: Vec<ConnId>,
}

fn pick<T>(v: &[T], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| i as usize % v.len())
}

fn sync(core: &mut Core, k: &mut Kernel, chunks: &mut Vec<(pst_ring::BufIdx, u32, u32)>) {
    core.begin_sync();
    core.refill(|bid, _| k.lent.push(bid));
    while let Some(op) = core.pop_op() {
        match op {
            CoreOp::Accept { ud, .. } => k.accepts.push(ud),
            CoreOp::Recv { fd, ud } => k.recvs.push((fd, ud)),
            CoreOp::Send { conn, ud, .. } => {
                let zc = k.zc_mask >> (k.sends_seen % 8) & 1 == 1;
                k.sends_seen += 1;
                core.tx_chunks(conn, chunks);
                assert!(!chunks.is_empty(), "a send with nothing to send");
                let total: u32 = chunks.iter().map(|c| c.2).sum();
                for &(_, off, len) in chunks.iter() {
                    assert!(off + len <= BUF_SIZE, "send chunk outside its buffer");
                }
                k.sends.push((ud, total, zc));
            }
            CoreOp::ShutdownWrite { .. } => {}
            CoreOp::Close { fd, .. } => {
                // Closing the socket cancels its multishot receive.
                let (gone, keep): (Vec<_>, Vec<_>) = k.recvs.iter().partition(|r| r.0 == fd);
                k.recvs = keep;
                for (_, ud) in gone {
                    k.cqes.push((ud, -125, 0));
                }
            }
        }
    }
    for (ud, res, flags) in std::mem::take(&mut k.cqes) {
        // SAFETY: simulated fds; the model kernel runs the ops, nothing does real I/O.
        unsafe { core.complete(ud, res, flags) };
    }
    for s in core.rx() {
        match s.kind {
            SlotKind::Data => assert!(s.len > 0 && s.off + s.len <= BUF_SIZE),
            SlotKind::Accepted => k.conns.push(s.conn),
            _ => {}
        }
    }
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
    let mut k = Kernel {
        next_fd: 10,
        zc_mask: input.zc_mask,
        ..Kernel::default()
    };
    let mut exts: Vec<Extent> = Vec::new();
    let mut chunks = Vec::new();
    // SAFETY: a simulated fd; the model kernel below runs the ops, nothing does real I/O.
    unsafe { core.add_listener(3) };
    sync(&mut core, &mut k, &mut chunks);

    for a in input.ops.iter().take(500) {
        match *a {
            Op::Sync => sync(&mut core, &mut k, &mut chunks),
            Op::Accept { more } => {
                if let Some(i) = pick(&k.accepts, 0) {
                    let ud = if more {
                        k.accepts[i]
                    } else {
                        k.accepts.remove(i)
                    };
                    k.cqes.push((ud, k.next_fd, if more { F_MORE } else { 0 }));
                    k.next_fd += 1;
                }
            }
            Op::Data {
                recv,
                bid,
                len,
                more,
                bundle,
            } => {
                let (Some(r), Some(b)) = (pick(&k.recvs, recv), pick(&k.lent, bid)) else {
                    continue;
                };
                // The kernel takes buffers from the ring head, in posting order; a bundle
                // takes a run of them. (A lone buffer from elsewhere is tolerated by the core
                // and exercised too.)
                let extra = (bundle % 4) as usize;
                let at = if extra > 0 { 0 } else { b };
                if at + extra >= k.lent.len() {
                    continue;
                }
                let run: Vec<u16> = k.lent.drain(at..=at + extra).collect();
                let bid = run[0];
                let ud = if more {
                    k.recvs[r].1
                } else {
                    k.recvs.remove(r).1
                };
                let len = (extra as u32 * BUF_SIZE) as i32 + 1 + len as i32 % BUF_SIZE as i32;
                let flags = (bid as u32) << 16 | F_BUFFER | if more { F_MORE } else { 0 };
                k.cqes.push((ud, len, flags));
            }
            Op::Eof { recv } => {
                if let Some(r) = pick(&k.recvs, recv) {
                    k.cqes.push((k.recvs.remove(r).1, 0, 0));
                }
            }
            Op::RecvError { recv, errno } => {
                if let Some(r) = pick(&k.recvs, recv) {
                    let errno = [104, 110, 32, 22][errno as usize % 4];
                    k.cqes.push((k.recvs.remove(r).1, -errno, 0));
                }
            }
            Op::Enobufs { recv } => {
                // The kernel ends a multishot receive with ENOBUFS only when the ring is empty.
                if k.lent.is_empty() {
                    if let Some(r) = pick(&k.recvs, recv) {
                        k.cqes.push((k.recvs.remove(r).1, -105, 0));
                    }
                }
            }
            Op::SendDone {
                send,
                partial,
                error,
            } => {
                if let Some(s) = pick(&k.sends, send) {
                    let (ud, total, zc) = k.sends.remove(s);
                    let res = if error {
                        -32
                    } else {
                        partial.map_or(total, |p| p as u32 % (total + 1)) as i32
                    };
                    k.cqes.push((ud, res, if zc { F_MORE } else { 0 }));
                    if zc {
                        k.notifs.push(ud);
                    }
                }
            }
            Op::Notif { which, copied } => {
                if let Some(i) = pick(&k.notifs, which) {
                    // The oldest notification owed under that user data.
                    let ud = k.notifs[i];
                    let first = k.notifs.iter().position(|&u| u == ud).unwrap();
                    k.notifs.remove(first);
                    let res = if copied { i32::MIN } else { 0 };
                    k.cqes.push((ud, res, F_NOTIF));
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
                if let (Some(i), Some(c)) = (pick(&exts, ext), pick(&k.conns, conn)) {
                    let _ = core.send(k.conns[c], exts.swap_remove(i));
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
                if let Some(c) = pick(&k.conns, conn) {
                    core.close(k.conns[c]);
                }
            }
            Op::Linger { conn } => {
                if let Some(c) = pick(&k.conns, conn) {
                    core.close_lingering(k.conns[c]);
                }
            }
            Op::CloseAll => core.close_all(),
        }
    }

    // Shutdown: give everything back, close every connection, let the kernel finish.
    for e in exts.drain(..) {
        core.release(e);
    }
    core.close_listeners();
    for _ in 0..10_000 {
        core.close_all();
        let later = std::mem::take(&mut k.later);
        sync(&mut core, &mut k, &mut chunks);
        k.cqes.extend(later);
        for (ud, total, zc) in std::mem::take(&mut k.sends) {
            k.cqes.push((ud, total as i32, if zc { F_MORE } else { 0 }));
            if zc {
                k.notifs.push(ud);
            }
        }
        // Notifications come after their results (a later sync).
        for ud in std::mem::take(&mut k.notifs) {
            k.later.push((ud, 0, F_NOTIF));
        }
        // Peers of lingering connections close too.
        for (_, ud) in std::mem::take(&mut k.recvs) {
            k.cqes.push((ud, 0, 0));
        }
        if core.open_conns() == 0
            && k.cqes.is_empty()
            && k.later.is_empty()
            && core.pending_ops() == 0
        {
            break;
        }
    }
    sync(&mut core, &mut k, &mut chunks);
    core.begin_sync();
    assert_eq!(core.open_conns(), 0, "connections left after shutdown");
    assert_eq!(core.zc_pending(), 0, "zero-copy sends still held");
    assert_eq!(
        core.alloc().free_count() + core.lent(),
        bufs as usize,
        "buffers leaked or double-counted"
    );
});
