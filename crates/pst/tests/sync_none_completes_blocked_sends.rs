//! `Port::sync(None)` returns when any submitted operation completes — including a send that
//! met a full socket buffer and completed only after the submit. An echo server looping on
//! `sync(None)` must deliver a 1 MiB echo and the FIN promptly; before the fix the last send's
//! completion sat unreaped and the tail and FIN never came (library-user review, bug 1).
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst::{Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};

fn echo_server_sync_none() -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: it blocks in sync(None) when idle, by design; the test process ends it.
    std::thread::spawn(move || {
        let g = Geometry::for_size(64 << 20, 2048).unwrap();
        let pool = Arc::new(Pool::anonymous(g, PersistMode::None).unwrap());
        let mut port = Port::whole(pool, PortConfig::default()).unwrap();
        tx.send(port.listen("127.0.0.1:0".parse().unwrap()).unwrap())
            .unwrap();
        loop {
            port.sync(None).unwrap();
            while let Some(s) = port.next_rx() {
                match s.kind {
                    SlotKind::Data => {
                        let e = port.keep(&s).expect("spare buffer");
                        let _ = port.send(s.conn, e);
                    }
                    SlotKind::End | SlotKind::Error(_) => port.close(s.conn),
                    SlotKind::Accepted => {}
                }
            }
        }
    });
    rx.recv().unwrap()
}

/// Echo `bytes` and wait for EOF; returns (bytes echoed, saw EOF, elapsed).
fn echo(addr: std::net::SocketAddr, bytes: usize) -> (usize, bool, Duration) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = c.try_clone().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        w.write_all(&vec![7u8; bytes]).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    let eof = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(_) => break false,
        }
    };
    writer.join().unwrap();
    (got, eof, t.elapsed())
}

#[test]
fn one_mib_echo_and_fin_arrive_within_a_second() {
    let addr = echo_server_sync_none();
    for (round, bytes) in [1 << 20, 1 << 20, 4 << 20, 1 << 20].into_iter().enumerate() {
        let (got, eof, took) = echo(addr, bytes);
        assert_eq!(got, bytes, "round {round}: echo incomplete after {took:?}");
        assert!(eof, "round {round}: no FIN after {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "round {round}: {bytes} bytes echoed and closed in {took:?}"
        );
    }
}
