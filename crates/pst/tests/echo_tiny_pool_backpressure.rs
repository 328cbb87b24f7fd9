//! A pool of 8 buffers under 64 connections: receives pause on ENOBUFS and resume when buffers
//! come back; nothing is lost, nothing panics.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn eight_buffers_sixty_four_connections() {
    let server = common::EchoServer::start(8, 512);
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut conns: Vec<TcpStream> =
                    (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
                let id = |k: usize| t * 8 + k;
                let len = 20_000;
                // Everyone writes first (the server is swamped), then reads.
                for (k, s) in conns.iter_mut().enumerate() {
                    let msg: Vec<u8> = (0..len).map(|i| common::pattern(id(k), i)).collect();
                    s.write_all(&msg).unwrap();
                }
                for (k, s) in conns.iter_mut().enumerate() {
                    let mut back = vec![0u8; len];
                    s.read_exact(&mut back).unwrap();
                    assert!(back
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == common::pattern(id(k), i)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = server.stop();
    assert_eq!(stats.core.rx_bytes, 64 * 20_000);
    assert!(
        stats.core.enobufs > 0,
        "the tiny pool must actually have run dry: {stats:?}"
    );
}
