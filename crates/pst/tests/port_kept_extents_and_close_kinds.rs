//! Kept extents stay intact while traffic continues; half-close and reset arrive as slots.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{Extent, Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};

fn port(bufs: u32) -> Port {
    let pool = Pool::anonymous(
        Geometry {
            buf_size: 1024,
            buf_count: bufs,
            log_len: 0,
        },
        PersistMode::None,
    )
    .unwrap();
    Port::whole(Arc::new(pool), PortConfig::default()).unwrap()
}

/// Sync until `pred` has seen what it wants or the deadline passes.
fn pump(port: &mut Port, mut f: impl FnMut(&mut Port) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        port.sync(Some(Duration::from_millis(5))).unwrap();
        if f(port) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out");
    }
}

#[test]
fn kept_extents_survive_continuing_traffic() {
    let mut port = port(256);
    let addr = port.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).unwrap();
    });
    let mut kept: Vec<(Extent, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    let mut seen = 0u64;
    pump(&mut port, |p| {
        for i in 0..p.rx().len() {
            let s = p.rx()[i];
            if s.kind == SlotKind::Data {
                let copy = p.payload(&s).to_vec();
                total += copy.len();
                seen += 1;
                // Keep one slot in 16 (bounded, so the pool keeps flowing).
                if seen.is_multiple_of(16) && kept.len() < 100 {
                    let e = p.keep(&s).unwrap();
                    kept.push((e, copy));
                }
            }
        }
        total == 2_000_000
    });
    writer.join().unwrap();
    assert!(kept.len() > 10);
    for (e, copy) in &kept {
        assert_eq!(
            port.bytes(e),
            &copy[..],
            "kept extent changed while traffic continued"
        );
    }
    let free = port.free_buffers();
    let n = kept.len();
    for (e, _) in kept {
        port.release(e);
    }
    assert_eq!(port.free_buffers(), free + n);
}

#[test]
fn half_close_and_reset_are_slots() {
    let mut port = port(64);
    let addr = port.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    // Half-close: the peer shuts its write side, then still reads our reply.
    let mut a = TcpStream::connect(addr).unwrap();
    a.write_all(b"ping").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let mut end = None;
    pump(&mut port, |p| {
        for s in p.rx().to_vec() {
            match s.kind {
                SlotKind::Data => got.extend_from_slice(p.payload(&s)),
                SlotKind::End => end = Some(s.conn),
                _ => {}
            }
        }
        end.is_some()
    });
    assert_eq!(got, b"ping");
    let conn = end.unwrap();
    port.send_copy(conn, b"pong").unwrap();
    port.close(conn);
    pump(&mut port, |p| p.open_conns() == 0);
    port.sync(Some(Duration::ZERO)).unwrap(); // submits the queued shutdown + close
    let mut reply = Vec::new();
    a.read_to_end(&mut reply).unwrap();
    assert_eq!(
        reply, b"pong",
        "the half-closed peer still gets our reply, then EOF"
    );

    // Reset: SO_LINGER 0 makes close() send RST.
    let b = socket2::Socket::from(TcpStream::connect(addr).unwrap());
    b.set_linger(Some(Duration::ZERO)).unwrap();
    let mut accepted = false;
    pump(&mut port, |p| {
        accepted |= p.rx().iter().any(|s| s.kind == SlotKind::Accepted);
        accepted
    });
    drop(b);
    let mut err = None;
    pump(&mut port, |p| {
        for s in p.rx() {
            if let SlotKind::Error(e) = s.kind {
                err = Some((s.conn, e));
            }
        }
        err.is_some()
    });
    let (conn, errno) = err.unwrap();
    assert_eq!(errno, libc::ECONNRESET);
    port.close(conn);
    pump(&mut port, |p| p.open_conns() == 0);
}
