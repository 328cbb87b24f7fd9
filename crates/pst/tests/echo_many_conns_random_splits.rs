//! 256 real loopback connections, random message sizes and random write splits: every byte
//! comes back, in order, per connection, through one port.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use rand::{Rng, SeedableRng};

#[test]
fn every_byte_in_order_per_connection() {
    let server = common::EchoServer::start(4096, 2048);
    let addr = server.addr;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut conns: Vec<(usize, TcpStream, usize, usize)> = (0..16)
                    .map(|k| (t as usize * 16 + k, TcpStream::connect(addr).unwrap(), 0, 0))
                    .collect();
                for round in 0..20 {
                    for (id, s, sent, got) in conns.iter_mut() {
                        let len = rng.gen_range(1..=if round % 5 == 0 { 40_000 } else { 3000 });
                        let msg: Vec<u8> = (*sent..*sent + len)
                            .map(|i| common::pattern(*id, i))
                            .collect();
                        let mut at = 0;
                        while at < len {
                            let n = rng.gen_range(1..=len - at);
                            s.write_all(&msg[at..at + n]).unwrap();
                            at += n;
                        }
                        *sent += len;
                        let mut back = vec![0u8; len];
                        s.read_exact(&mut back).unwrap();
                        for (j, b) in back.iter().enumerate() {
                            assert_eq!(
                                *b,
                                common::pattern(*id, *got + j),
                                "conn {id} byte {}",
                                *got + j
                            );
                        }
                        *got += len;
                    }
                }
                conns.iter().map(|c| c.2).sum::<usize>()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let stats = server.stop();
    assert_eq!(stats.core.rx_bytes as usize, total);
    assert_eq!(stats.core.tx_bytes as usize, total);
    assert_eq!(stats.core.accepted, 256);
    assert!(stats.driver.enters > 0);
    // Messages up to 40 KB over 2 KiB buffers: bundle receives fill several buffers per
    // completion (Linux 6.10+; this machine's kernel has them).
    assert!(
        stats.core.rx_completions < stats.core.rx_slots,
        "no bundle receive: {:?}",
        stats.core
    );
}
