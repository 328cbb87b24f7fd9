//! Deterministic unit tests of the core: first against hand-written completions (where a test
//! checks the exact ops, or feeds what no kernel would), then scenarios run through the model
//! kernel [`crate::sim::Kernel`].
// SAFETY (every `register`/`add_listener`/`complete` below): the fds are simulated; no driver runs
// these ops, so no I/O is ever done on them.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

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
        | Op::CancelRecv { ud, .. }
        | Op::ShutdownWrite { ud, .. } => ud,
    }
}

/// Refill, returning the posted (bid, buf) pairs.
fn refill(c: &mut Core) -> Vec<(u16, BufIdx)> {
    let mut v = Vec::new();
    c.refill(|bid, b| v.push((bid, b)));
    v
}

/// An operation's completion: `res` bytes (or an accepted fd), or `-errno`.
fn completion(user_data: u64, res: i32, buffer: Option<u16>, more: bool) -> Completion {
    Completion::Op {
        user_data,
        result: if res < 0 {
            Err(Errno(-res))
        } else {
            Ok(res as u32)
        },
        buffer,
        more,
    }
}

/// Found by fuzzing (`ring_core`): sharing an extent of a transient TX buffer retained it
/// in the pool's allocator instead of the TX buffers' one, and panicked.
#[test]
fn share_and_split_work_on_tx_buffers() {
    let mut c = core(8, 4).with_tx_buffers(BufAlloc::new(1000, 2));
    let e = c.alloc_tx_extent().unwrap();
    assert_eq!(e.buf(), BufIdx(1001), "transients come from the top");
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
    // The driver decides per send; the core learns it from the result's `more`.
    let e = c.alloc_extent().unwrap();
    c.send(id, e).unwrap();
    let Some(Op::Send { ud, .. }) = c.pop_op() else {
        panic!("expected a send")
    };
    for _ in 0..2 {
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
    }
    unsafe { c.complete(completion(ud, 2048, None, false)) };
    assert_eq!(c.alloc().free_count(), free0 - 2, "plain send released");
    let Some(Op::Send { ud, .. }) = c.pop_op() else {
        panic!("expected a send")
    };
    unsafe { c.complete(completion(ud, 4096, None, true)) };
    assert_eq!(c.zc_pending(), 1);
    assert_eq!(
        c.alloc().free_count(),
        free0 - 2,
        "held until the notification"
    );
    unsafe {
        c.complete(Completion::ZcNotif {
            user_data: ud,
            copied: true,
        })
    };
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
    unsafe {
        c.complete(Completion::ZcNotif {
            user_data: ud,
            copied: false,
        })
    };
    assert_eq!(c.stats().bad_cqes, 1);
}

#[test]
fn a_bundle_becomes_one_slot_per_buffer() {
    let mut c = core(8, 8);
    let id = unsafe { c.register(5) };
    let rop = c.pop_op().unwrap();
    let posted = refill(&mut c);
    // 2048 + 2048 + 100 bytes in the first three ring entries.
    unsafe { c.complete(completion(ud(rop), 4196, Some(posted[0].0), true)) };
    let lens: Vec<u32> = c.rx().iter().map(|s| s.len).collect();
    assert_eq!(lens, vec![2048, 2048, 100]);
    let bufs: Vec<BufIdx> = c.rx().iter().map(|s| s.buf).collect();
    assert_eq!(bufs, vec![posted[0].1, posted[1].1, posted[2].1]);
    assert!(c.rx().iter().all(|s| s.conn == id));
    assert_eq!(c.lent(), posted.len() - 3);
    assert_eq!(c.stats().rx_slots, 3);
    // The next single-buffer completion continues at the fourth entry.
    unsafe { c.complete(completion(ud(rop), 10, Some(posted[3].0), true)) };
    assert_eq!(c.rx()[3].buf, posted[3].1);
    // A bundle claiming more entries than are lent is refused and takes nothing.
    let lent = c.lent();
    unsafe { c.complete(completion(ud(rop), 2048 * 8, Some(posted[4].0), true)) };
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
        unsafe { c.complete(completion(ud(rop), 4 * 2048, Some(run[0].0), true)) };
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
    unsafe { c.complete(completion(ud(op), 9, None, true)) };
    assert_eq!(c.rx().len(), 1);
    assert_eq!(c.rx()[0].kind, SlotKind::Accepted);
    assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 9, .. })));
    assert_eq!(c.pop_op(), None, "accept still armed (more)");
    c.begin_sync();
    unsafe { c.complete(completion(ud(op), 10, None, false)) };
    assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 10, .. })));
    assert!(
        matches!(c.pop_op(), Some(Op::Accept { fd: 3, .. })),
        "re-armed without more"
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
    unsafe { c.complete(completion(ud(rop), 100, Some(bid), true)) };
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
    unsafe { c.complete(completion(ud(rop), 7, Some(bid), true)) };
    let s = c.rx()[0];
    let e = c.keep(&s).unwrap();
    assert!(c.keep(&s).is_none(), "a slot is kept once");
    let free = c.alloc().free_count();
    c.begin_sync();
    assert_eq!(c.alloc().free_count(), free);
    c.release(e);
    assert_eq!(c.alloc().free_count(), free + 1);
}

/// `pause_rx` cancels the armed receive and arms none until `resume_rx`, whatever ends the
/// receive meanwhile (data without `more`, `-ENOBUFS` and a refill, the cancel itself).
#[test]
fn paused_receive_is_cancelled_and_rearmed_only_on_resume() {
    let mut c = core(8, 4);
    let id = unsafe { c.register(5) };
    let rop = c.pop_op().unwrap();
    let posted = refill(&mut c);
    c.pause_rx(id);
    c.pause_rx(id); // twice: one cancel
    let Some(Op::CancelRecv { target, ud: cud }) = c.pop_op() else {
        panic!("a cancel of the armed receive")
    };
    assert_eq!(target, ud(rop));
    assert_eq!(c.pop_op(), None);
    // Data under way before the cancel still arrives; its end does not re-arm.
    unsafe { c.complete(completion(ud(rop), 100, Some(posted[0].0), false)) };
    assert_eq!(c.rx().len(), 1);
    unsafe { c.complete(completion(cud, -2, None, false)) }; // ENOENT: it had ended
    assert_eq!(c.pop_op(), None, "no re-arm while paused");
    c.begin_sync();
    refill(&mut c);
    assert_eq!(
        c.pop_op(),
        None,
        "a refill does not re-arm a paused receive"
    );
    c.resume_rx(id);
    assert!(
        matches!(c.pop_op(), Some(Op::Recv { fd: 5, .. })),
        "resumed"
    );
    assert_eq!(c.stats().rx_pauses, 1);

    // Resumed before the cancel completed: the cancelled receive's end re-arms.
    let rop = Op::Recv { fd: 5, ud: target };
    c.pause_rx(id);
    assert!(matches!(c.pop_op(), Some(Op::CancelRecv { .. })));
    c.resume_rx(id);
    assert_eq!(c.pop_op(), None, "still armed until the cancel lands");
    unsafe { c.complete(completion(ud(rop), -Errno::CANCELED.0, None, false)) };
    assert!(
        matches!(c.pop_op(), Some(Op::Recv { fd: 5, .. })),
        "re-armed"
    );

    // A lingering close while the pause's cancel is under way: the cancelled receive's end
    // re-arms (the input is drained), it does not close the connection.
    c.pause_rx(id);
    assert!(matches!(c.pop_op(), Some(Op::CancelRecv { .. })));
    c.close_lingering(id);
    assert!(
        matches!(c.pop_op(), Some(Op::ShutdownWrite { fd: 5, .. })),
        "FIN"
    );
    assert_eq!(c.pop_op(), None, "still armed until the cancel lands");
    unsafe { c.complete(completion(ud(rop), -Errno::CANCELED.0, None, false)) };
    assert!(
        matches!(c.pop_op(), Some(Op::Recv { fd: 5, .. })),
        "drains on"
    );
    assert_eq!(c.open_conns(), 1);
    let mut c = core(8, 4);
    let id = unsafe { c.register(5) };
    let rop = c.pop_op().unwrap();

    // A lingering close drains the input: it receives even if paused.
    c.pause_rx(id);
    assert!(matches!(c.pop_op(), Some(Op::CancelRecv { .. })));
    unsafe { c.complete(completion(ud(rop), -Errno::CANCELED.0, None, false)) };
    assert_eq!(c.pop_op(), None);
    c.close_lingering(id);
    assert!(matches!(c.pop_op(), Some(Op::Recv { fd: 5, .. })));
}

#[test]
fn enobufs_pauses_then_rearms_after_refill() {
    let mut c = core(3, 4);
    let id = unsafe { c.register(5) };
    let rop = c.pop_op().unwrap();
    let posted = refill(&mut c);
    assert_eq!(posted.len(), 2);
    unsafe { c.complete(completion(ud(rop), 10, Some(posted[0].0), true)) };
    unsafe { c.complete(completion(ud(rop), 10, Some(posted[1].0), true)) };
    unsafe { c.complete(completion(ud(rop), -Errno::NOBUFS.0, None, false)) };
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
    unsafe { c.complete(completion(ud(op), 13, None, false)) }; // short send: first chunk + 3 bytes of the second
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
    unsafe { c.complete(completion(ud(op2), 17, None, false)) };
    assert_eq!(c.tx_backlog(), 0);
    let Some(op3 @ Op::Send { .. }) = c.pop_op() else {
        panic!()
    };
    unsafe { c.complete(completion(ud(op3), 2048, None, false)) };
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
    unsafe { c.complete(completion(ud(sop), 2048, None, false)) };
    // An orderly close: the kernel still delivers what the socket holds.
    assert!(matches!(
        c.pop_op(),
        Some(Op::Close {
            fd: 5,
            reset: false,
            ..
        })
    ));
    assert_eq!(c.open_conns(), 0);
    // A late recv completion for the closed connection returns its buffer.
    let free = c.alloc().free_count();
    unsafe { c.complete(completion(ud(rop), 50, Some(posted[0].0), false)) };
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
fn abort_releases_what_is_queued_at_once_and_the_in_flight_send_on_its_completion() {
    let mut c = core(16, 4);
    let id = unsafe { c.register(5) };
    let _rop = c.pop_op().unwrap();
    refill(&mut c);
    let free0 = c.alloc().free_count();
    let e = c.alloc_extent().unwrap();
    c.send(id, e).unwrap();
    let sop = c.pop_op().unwrap();
    // Six more queued behind the in-flight send, which covers four (`max_iov`).
    for _ in 0..6 {
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
    }
    let mut ch = Vec::new();
    c.tx_chunks(id, &mut ch);
    let covered = ch.len();
    assert_eq!(covered, 4);
    c.abort(id);
    assert_eq!(
        c.alloc().free_count(),
        free0 - covered,
        "only the in-flight send's buffers are still held"
    );
    assert_eq!(c.tx_backlog(), 0);
    // The sending side is shut down so that the blocked send completes.
    assert!(matches!(c.pop_op(), Some(Op::ShutdownWrite { fd: 5, .. })));
    assert_eq!(c.pop_op(), None, "the close waits for the send");
    let e2 = c.alloc_extent().unwrap();
    assert_eq!(c.send(id, e2), Err(SendError::Closed));
    // The send fails (EPIPE); an aborted connection is then reset, not left to the kernel to
    // flush.
    unsafe { c.complete(completion(ud(sop), -32, None, false)) };
    assert!(matches!(
        c.pop_op(),
        Some(Op::Close {
            fd: 5,
            reset: true,
            ..
        })
    ));
    assert_eq!(c.alloc().free_count(), free0);
    assert_eq!(c.open_conns(), 0);
}

#[test]
fn abort_with_nothing_in_flight_closes_now() {
    let mut c = core(8, 4);
    let id = unsafe { c.register(5) };
    let _rop = c.pop_op().unwrap();
    refill(&mut c);
    c.abort(id);
    assert!(matches!(
        c.pop_op(),
        Some(Op::Close {
            fd: 5,
            reset: true,
            ..
        })
    ));
    assert_eq!(c.open_conns(), 0);
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
    unsafe { c.complete(completion(ud(sop), 2048, None, false)) };
    assert!(matches!(c.pop_op(), Some(Op::ShutdownWrite { fd: 5, .. })));
    // Peer data after our FIN is discarded, not reported.
    let free = c.alloc().free_count();
    unsafe { c.complete(completion(ud(rop), 100, Some(posted[0].0), true)) };
    assert!(c.rx().is_empty());
    assert_eq!(c.alloc().free_count(), free + 1);
    unsafe { c.complete(completion(ud(rop), 0, None, false)) };
    assert!(matches!(c.pop_op(), Some(Op::Close { fd: 5, .. })));
    assert_eq!(c.open_conns(), 0);
}

#[test]
fn garbage_completions_do_not_leak_or_panic() {
    let mut c = core(8, 4);
    let posted = refill(&mut c);
    let free = c.alloc().free_count();
    unsafe { c.complete(completion(0xdead, 5, Some(posted[0].0), false)) };
    unsafe { c.complete(completion(0xdead, 5, Some(posted[0].0), false)) }; // bid no longer lent
    unsafe {
        c.complete(completion(
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
            None,
            false,
        ))
    };
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

#[test]
fn a_lent_buffer_cannot_be_retained() {
    let mut c = core(8, 4);
    let lent = refill(&mut c);
    let (_, b) = lent[0];
    assert!(
        c.retain(b, 0, 16).is_none(),
        "the kernel may write a lent buffer: no extent on it"
    );
    let mine = c.alloc_extent().expect("a free buffer");
    let shared = c
        .retain(mine.buf(), 0, 16)
        .expect("an owned buffer can be shared");
    c.release(shared);
    c.release(mine);
}

#[test]
fn forget_all_hands_back_queued_closes() {
    let mut c = core(8, 4);
    let id = unsafe { c.register(5) };
    c.close(id);
    let fds = c.forget_all();
    assert!(
        fds.contains(&5),
        "a close queued but not submitted is handed back: {fds:?}"
    );
    assert!(c.pop_op().is_none());
}

// Scenarios driven through the model kernel (`crate::sim`), shared with the `ring_core` fuzz
// target: the test says what the kernel does, `Kernel::sync` runs the core against it.

use crate::sim::{Kernel, SendOutcome};

const BUF: u32 = 2048;

/// A core with one listener on fd 3, and a model kernel that numbers accepted sockets from 10.
fn port(bufs: u32, zero_copy: u8) -> (Core, Kernel) {
    let mut c = core(bufs, 8);
    let mut k = unsafe { Kernel::new(BUF, 10) }.with_zero_copy(zero_copy);
    unsafe { c.add_listener(3) };
    k.sync(&mut c);
    (c, k)
}

/// Accept one connection: its id and socket.
fn connect(c: &mut Core, k: &mut Kernel) -> (ConnId, i32) {
    let fd = k.accept(0, true).expect("an armed accept");
    k.sync(c);
    let s = *c.rx().last().expect("an accepted slot");
    assert_eq!(s.kind, SlotKind::Accepted);
    assert_eq!(c.fd(s.conn), Some(fd));
    k.sync(c); // the receive is armed
    assert!(k.receiving().contains(&fd));
    (s.conn, fd)
}

/// Every buffer is free or lent, and nothing is held for the kernel.
fn assert_all_back(c: &Core, bufs: u32) {
    assert_eq!(c.zc_pending(), 0);
    assert_eq!(c.alloc().free_count() + c.lent(), bufs as usize);
}

#[test]
fn sim_echo_returns_every_buffer() {
    let (mut c, mut k) = port(16, 0);
    let (id, fd) = connect(&mut c, &mut k);
    assert!(k.receive(fd, 100, true));
    k.sync(&mut c);
    let s = c.rx()[0];
    assert_eq!((s.conn, s.len, s.kind), (id, 100, SlotKind::Data));
    let e = c.keep(&s).unwrap();
    c.send(id, e).unwrap();
    k.sync(&mut c);
    assert_eq!(k.sending(), vec![(fd, 100)]);
    assert!(k.complete_send(fd, SendOutcome::Full));
    c.close(id);
    k.sync(&mut c);
    k.sync(&mut c);
    assert_eq!(c.open_conns(), 0);
    assert!(k.receiving().is_empty(), "the close cancelled the receive");
    assert_eq!(c.stats().tx_bytes, 100);
    assert_all_back(&c, 16);
}

#[test]
fn sim_eof_and_reset_become_slots_once() {
    let (mut c, mut k) = port(16, 0);
    let (a, fa) = connect(&mut c, &mut k);
    let (b, fb) = connect(&mut c, &mut k);
    assert!(k.end(fa));
    assert!(k.fail_recv(fb, Errno::CONNRESET));
    k.sync(&mut c);
    let kinds: Vec<_> = c.rx().iter().map(|s| (s.conn, s.kind)).collect();
    assert_eq!(kinds, vec![(a, SlotKind::End), (b, SlotKind::Error(104))]);
    k.sync(&mut c);
    assert!(k.receiving().is_empty(), "no re-arm after end of stream");
    // A connection whose peer is done can still send.
    let e = c.alloc_extent().unwrap();
    c.send(a, e).unwrap();
    k.sync(&mut c);
    assert_eq!(k.sending(), vec![(fa, BUF)]);
}

#[test]
fn sim_zero_copy_buffers_return_on_the_notification() {
    let (mut c, mut k) = port(16, 0xff);
    let (id, fd) = connect(&mut c, &mut k);
    let free0 = c.alloc().free_count();
    let e = c.alloc_extent().unwrap();
    c.send(id, e).unwrap();
    k.sync(&mut c);
    assert!(k.complete_send(fd, SendOutcome::Full));
    k.sync(&mut c);
    assert_eq!((c.zc_pending(), k.notifs_owed()), (1, 1));
    assert_eq!(c.alloc().free_count(), free0 - 1, "held for the kernel");
    assert!(k.notify(0, true));
    k.sync(&mut c);
    assert_eq!(c.alloc().free_count(), free0);
    assert_eq!(c.stats().zc_copied, 1);
}

#[test]
fn sim_a_close_during_a_lingering_close_keeps_discarding() {
    let (mut c, mut k) = port(16, 0);
    let (id, fd) = connect(&mut c, &mut k);
    let e = c.alloc_extent().unwrap();
    c.send(id, e).unwrap();
    c.close_lingering(id);
    c.close(id);
    k.sync(&mut c);
    // Still sending the reply; what the peer sends meanwhile is dropped, not reported.
    assert!(k.receive(fd, 300, true));
    k.sync(&mut c);
    assert!(c.rx().is_empty());
    assert_eq!(c.open_conns(), 1, "the close waits for the send");
    let e = c.alloc_extent().unwrap();
    assert_eq!(c.send(id, e), Err(SendError::Closed));
    assert!(k.complete_send(fd, SendOutcome::Full));
    k.sync(&mut c);
    k.sync(&mut c);
    assert_eq!(c.open_conns(), 0);
    assert_all_back(&c, 16);
}

#[test]
fn sim_a_lingering_peer_that_keeps_sending_is_cut_off() {
    let (mut c, mut k) = port(64, 0);
    let (id, fd) = connect(&mut c, &mut k);
    c.close_lingering(id);
    k.sync(&mut c);
    let mut sent = 0;
    while c.open_conns() == 1 {
        assert!(
            k.receive(fd, BUF, true),
            "still receiving after {sent} bytes"
        );
        sent += BUF as u64;
        k.sync(&mut c);
        assert!(c.rx().is_empty(), "discarded, not reported");
    }
    assert_eq!(
        sent,
        LINGER_MAX + BUF as u64,
        "closed at the first byte past the limit"
    );
    k.sync(&mut c);
    assert_all_back(&c, 64);
}

#[test]
fn sim_a_failed_send_reports_once_and_refuses_more() {
    let (mut c, mut k) = port(16, 0);
    let (id, fd) = connect(&mut c, &mut k);
    for _ in 0..2 {
        let e = c.alloc_extent().unwrap();
        c.send(id, e).unwrap();
    }
    k.sync(&mut c);
    assert!(k.complete_send(fd, SendOutcome::Error(Errno::PIPE)));
    k.sync(&mut c);
    assert_eq!(c.rx()[0].kind, SlotKind::Error(32));
    assert_eq!(c.tx_queued(id), 0, "the queue was dropped");
    let e = c.alloc_extent().unwrap();
    assert_eq!(c.send(id, e), Err(SendError::Closed));
    // The receive side then fails too; the application already knows.
    c.close(id);
    k.sync(&mut c);
    k.sync(&mut c);
    assert_eq!(c.open_conns(), 0);
    assert_all_back(&c, 16);
}
