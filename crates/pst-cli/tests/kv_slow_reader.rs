//! A client that pipelines requests and never reads the replies must not take the server
//! down with it. On the uring engine every queued reply holds pool buffers (its head and the
//! stored value's buffer, shared zero copy), so 200,000 `GET`s of a 1 KiB value queued to one
//! such client used to drain the 64 MiB pool that every connection receives into — no other
//! client got an answer — or, before that, overflow the value buffer's reference count (a
//! panic). Now a connection whose replies hold more than a sixteenth of the pool waits, its
//! requests unparsed and its receiving paused (they wait in the socket), until its client
//! reads; one whose replies make no progress is reset once the pool runs short.
//! Both engines; the other clients are answered throughout and after.
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn ping(addr: std::net::SocketAddr) -> Duration {
    let t = Instant::now();
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pong: String = redis::cmd("PING").query(&mut c).expect("PING answered");
    assert_eq!(pong, "PONG");
    let v: Vec<u8> = redis::cmd("GET")
        .arg("v")
        .query(&mut c)
        .expect("GET answered");
    assert_eq!(v.len(), 1024);
    t.elapsed()
}

/// Server-side sockets on local port `port` that are closing (FIN_WAIT1, CLOSING, LAST_ACK)
/// with bytes still in their send queue (`/proc/net/tcp`).
fn sockets_with_queued_tx(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            let tx_queue = f[4].split(':').next().unwrap();
            u16::from_str_radix(local_port, 16) == Ok(port)
                && ["04", "0B", "09"].contains(&f[3])
                && u64::from_str_radix(tx_queue, 16).unwrap() > 0
        })
        .count()
}

/// A kv server (`--persist none`, a pool of `size`) and a client of it.
fn start(
    engine: &str,
    name: &str,
    size: &str,
) -> (common::ServerProc, std::net::SocketAddr, redis::Connection) {
    let dir = common::tmpdir(&format!("{name}-{engine}"));
    let args = common::kv_args(engine, &dir.join("pool"), size, &["--persist", "none"]);
    let addr = common::free_addr();
    let s = common::ServerProc::start(&args, addr);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    (s, addr, client.get_connection().unwrap())
}

/// [`start`], then `v` → 1 KiB stored.
fn start_with_value(
    engine: &str,
    name: &str,
    size: &str,
) -> (common::ServerProc, std::net::SocketAddr, redis::Connection) {
    let (s, addr, mut c) = start(engine, name, size);
    let _: () = redis::cmd("SET")
        .arg("v")
        .arg(vec![b'x'; 1024])
        .query(&mut c)
        .unwrap();
    (s, addr, c)
}

#[test]
fn a_client_that_never_reads_does_not_starve_the_others() {
    for engine in ["uring", "epoll"] {
        let (mut s, addr, _c) = start_with_value(engine, "slow-reader", "64MiB");

        // 200,000 GETs (4 MB), sent from a thread: the server may stop reading them.
        let slow = TcpStream::connect(addr).unwrap();
        let mut w = slow.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let one = b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n";
            let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            for _ in 0..200 {
                if w.write_all(&batch).is_err() {
                    break; // closed by the server: allowed
                }
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        for _ in 0..3 {
            let t = ping(addr);
            assert!(t < Duration::from_secs(3), "{engine}: PING took {t:?}");
        }
        slow.shutdown(std::net::Shutdown::Both).ok(); // also ends a blocked sender
        drop(slow);
        sender.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        ping(addr);
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "{engine}: the server died"
        );
        let st = s.term();
        assert!(st.success(), "{engine}: exit {st}");
    }
}

/// A client that writes its whole pipeline, half-closes, and only then reads (`nc -N` style)
/// gets every reply: the requests its stall left unparsed are answered before the close.
#[test]
fn a_half_closed_pipeline_is_answered_whole() {
    for engine in ["uring", "epoll"] {
        let (_s, addr, _c) = start_with_value(engine, "half-closed", "16MiB");
        let n = 50_000;
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let one = b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n";
        let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        s.write_all(&all).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
        let reply = 7 + 1024 + 2; // "$1024\r\n" + value + "\r\n"
        assert_eq!(
            got.len(),
            n * reply,
            "{engine}: {} replies",
            got.len() / reply
        );
    }
}

/// Many clients that pipeline requests and never read, together holding more than the pool:
/// each stays under its own share (a sixteenth), so none is stalled, yet together they took
/// every buffer of a 16 MiB pool and the uring engine answered nobody, for good: closing a
/// connection waited for its queued replies to be sent, which a peer that does not read never
/// allows. Now connections whose replies made no progress across two sweeps (a second apart)
/// are aborted, biggest first, while the pool is short: their queued replies are dropped at
/// once.
#[test]
fn many_clients_that_never_read_do_not_wedge_the_pool() {
    for engine in ["uring", "epoll"] {
        let (mut s, addr, mut c) = start_with_value(engine, "many-slow", "16MiB");
        let one = b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n";
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let mut socks = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..24 {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.connect(&addr.into()).unwrap();
            let sock: TcpStream = sock.into();
            let mut w = sock.try_clone().unwrap();
            let all = all.clone();
            senders.push(std::thread::spawn(move || {
                let _ = w.write_all(&all); // the server may close it: allowed
            }));
            socks.push(sock);
        }
        std::thread::sleep(Duration::from_secs(3));
        for _ in 0..3 {
            let t = ping(addr);
            assert!(t < Duration::from_secs(4), "{engine}: PING took {t:?}");
        }
        // Writes may be refused (-OOM) until the stuck connections are found (two sweeps, a
        // second apart) and aborted; then they go through.
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let r: redis::RedisResult<String> = redis::cmd("SET")
                .arg("w")
                .arg(vec![b'y'; 1024])
                .query(&mut c);
            match r {
                Ok(ok) => {
                    assert_eq!(ok, "OK", "{engine}");
                    break;
                }
                Err(e) => {
                    assert!(e.to_string().contains("OOM"), "{engine}: {e}");
                    assert!(
                        Instant::now() < deadline,
                        "{engine}: writes never came back"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if engine == "uring" {
            // The aborted connections were reset: no server socket lingers, orphaned, with
            // replies queued to a peer that will never take them (with a zero-copy send its
            // pages would stay pinned until the kernel gave up, minutes later).
            // An aborted connection's close waits for its send in flight to fail, which the
            // shutdown brings about within moments of the abort.
            let deadline = Instant::now() + Duration::from_secs(5);
            while sockets_with_queued_tx(addr.port()) > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{engine}: server sockets still holding replies"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for s in &socks {
            s.shutdown(std::net::Shutdown::Both).ok();
        }
        for t in senders {
            t.join().unwrap();
        }
        assert!(s.child.try_wait().unwrap().is_none(), "{engine}: died");
        let st = s.term();
        assert!(st.success(), "{engine}: exit {st}");
    }
}

/// On a full pool (short of buffers for good: writes are refused) clients that send a request
/// now and then and read the reply are never taken for clients that do not read. Found by
/// review: the first version marked a connection stuck at a single sweep that found this
/// batch's reply queued, and aborted dozens of healthy clients a minute.
#[test]
fn healthy_slow_clients_on_a_full_pool_are_not_aborted() {
    for engine in ["uring", "epoll"] {
        let (_s, addr, mut c) = start(engine, "full-slow", "16MiB");
        let v = vec![b'x'; 1024];
        let mut stored = 0;
        for i in 0..100_000 {
            let r: redis::RedisResult<String> =
                redis::cmd("SET").arg(format!("k{i}")).arg(&v).query(&mut c);
            if r.is_err() {
                break;
            }
            stored += 1;
        }
        assert!(stored > 1000, "{engine}: {stored}");
        let clients: Vec<_> = (0..12)
            .map(|n| {
                std::thread::spawn(move || {
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    let mut c = client.get_connection().unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    std::thread::sleep(Duration::from_millis(100 * n));
                    for _ in 0..5 {
                        let got: Vec<u8> = redis::cmd("GET")
                            .arg("k0")
                            .query(&mut c)
                            .expect("a healthy slow client was disconnected");
                        assert_eq!(got.len(), 1024);
                        std::thread::sleep(Duration::from_millis(1200));
                    }
                })
            })
            .collect();
        for t in clients {
            t.join()
                .unwrap_or_else(|_| panic!("{engine}: a client failed"));
        }
    }
}

/// A client that pipelines 25,000 `GET`s on a full pool while reading the replies as fast as
/// they come gets every reply. On the uring engine it used to be reset within milliseconds:
/// its requests arrived faster than its replies left, and once stalled, every arriving buffer
/// counted against a pool that is always short when full of live data. Now a stalled
/// connection stops receiving (its requests wait in the socket, and TCP slows the client to
/// its reading pace), so what it holds stays bounded and it is served to the end.
#[test]
fn a_fast_reader_on_a_full_pool_gets_every_reply() {
    for engine in ["uring", "epoll"] {
        let (_s, addr, mut c) = start(engine, "full-fast", "1MiB");
        let v = vec![b'x'; 1000];
        let mut stored = 0;
        for i in 0..10_000 {
            let r: redis::RedisResult<String> =
                redis::cmd("SET").arg(format!("k{i}")).arg(&v).query(&mut c);
            if r.is_err() {
                break;
            }
            stored += 1;
        }
        assert!((100..10_000).contains(&stored), "{engine}: {stored}");
        for round in 0..3 {
            let n = 25_000;
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut w = s.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                let one = b"*2\r\n$3\r\nGET\r\n$2\r\nk0\r\n";
                let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
                w.write_all(&all)
            });
            let reply = 7 + 1000 + 2; // "$1000\r\n" + value + "\r\n"
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            let mut r = &s;
            while got < n * reply {
                match std::io::Read::read(&mut r, &mut buf) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => panic!("{engine} round {round}: after {got} bytes: {e}"),
                }
            }
            assert_eq!(
                got,
                n * reply,
                "{engine} round {round}: {} replies",
                got / reply
            );
            sender.join().unwrap().expect("every request sent");
        }
        ping_full(addr);
    }
}

/// Clients that pipeline 5,000 `GET`s on a full pool and read the replies slowly (400 KB/s,
/// three at once), under a 2 s request timeout, get every reply. Two ways they were reset
/// (review of the receive pause): a send waiting on a full socket buffer completes only
/// once much of it has drained, seconds at this pace, so the sweep took them for clients
/// that read nothing (now the socket's unacknowledged bytes falling counts as progress);
/// and the request clock ran while their receiving was paused, so the request timeout
/// closed them mid-transfer (now it does not run while the server holds their input back).
#[test]
fn slow_readers_on_a_full_pool_are_not_reset() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("full-slow-reader-{engine}"));
        let args = common::kv_args(
            engine,
            &dir.join("pool"),
            "1MiB",
            &["--persist", "none", "--request-timeout-secs", "2"],
        );
        let addr = common::free_addr();
        let _s = common::ServerProc::start(&args, addr);
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let v = vec![b'x'; 1000];
        for i in 0..10_000 {
            let r: redis::RedisResult<String> =
                redis::cmd("SET").arg(format!("k{i}")).arg(&v).query(&mut c);
            if r.is_err() {
                break;
            }
        }
        let n = 5_000;
        let reply = 7 + 1000 + 2;
        let readers: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    let s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let one = b"*2\r\n$3\r\nGET\r\n$2\r\nk0\r\n";
                        let all: Vec<u8> =
                            one.iter().copied().cycle().take(one.len() * n).collect();
                        let _ = w.write_all(&all);
                    });
                    let (t0, rate) = (Instant::now(), 400_000.0);
                    let (mut got, mut buf, mut r) = (0usize, vec![0u8; 16 << 10], &s);
                    while got < n * reply {
                        match std::io::Read::read(&mut r, &mut buf) {
                            Ok(0) => break,
                            Ok(k) => got += k,
                            Err(e) => return Err(format!("after {} replies: {e}", got / reply)),
                        }
                        let ahead = got as f64 / rate - t0.elapsed().as_secs_f64();
                        if ahead > 0.0 {
                            std::thread::sleep(Duration::from_secs_f64(ahead));
                        }
                    }
                    Ok(got / reply)
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), Ok(n), "{engine}");
        }
        ping_full(addr);
    }
}

/// `PING` answered (a full pool: no `GET v` as in [`ping`]).
fn ping_full(addr: std::net::SocketAddr) {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let pong: String = redis::cmd("PING").query(&mut c).expect("PING answered");
    assert_eq!(pong, "PONG");
}
