//! Zero-copy sends (`SEND_ZC` / `SENDMSG_ZC`) over real loopback connections: large echoed
//! messages come back intact, sends at or above the threshold go out zero-copy, and every one
//! of them gets its notification (only then are its pool buffers released).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use pst::{Geometry, PersistMode, Pool, PortConfig};
use rand::{Rng, SeedableRng};

#[test]
fn large_echoes_go_zero_copy_and_are_all_notified() {
    let pool = Arc::new(
        Pool::anonymous(
            Geometry {
                buf_size: 4096,
                buf_count: 4096,
                log_len: 0,
            },
            PersistMode::None,
        )
        .unwrap(),
    );
    let mut cfg = PortConfig::default();
    cfg.driver.zc_min = 8192;
    let server = common::EchoServer::start_on(pool, cfg);
    let addr = server.addr;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut total = 0;
                for c in 0..4 {
                    let id = t as usize * 4 + c;
                    let mut s = TcpStream::connect(addr).unwrap();
                    let mut sent = 0;
                    for _ in 0..10 {
                        let len = rng.gen_range(1..=200_000);
                        let msg: Vec<u8> =
                            (sent..sent + len).map(|i| common::pattern(id, i)).collect();
                        s.write_all(&msg).unwrap();
                        let mut back = vec![0u8; len];
                        s.read_exact(&mut back).unwrap();
                        assert!(back == msg, "conn {id}: echoed bytes differ");
                        sent += len;
                    }
                    total += sent;
                }
                total
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // Let the last notifications arrive.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stats = server.stop();
    assert_eq!(stats.core.tx_bytes as usize, total);
    assert!(
        stats.core.zc_sends > 0,
        "no zero-copy send at all: {stats:?}"
    );
    assert_eq!(
        stats.core.zc_notifs, stats.core.zc_sends,
        "a zero-copy send without its notification"
    );
    eprintln!(
        "zero-copy sends {} of which the kernel copied {}",
        stats.core.zc_sends, stats.core.zc_copied
    );
}
