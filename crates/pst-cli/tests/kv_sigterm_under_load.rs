//! Graceful shutdown: SIGTERM while clients are writing. The server stops accepting, finishes
//! and commits the batch in flight, replies, closes, syncs; after a restart every acknowledged
//! write is present with its exact bytes. Both engines.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn run(engine: &str) {
    let dir = common::tmpdir(&format!("sigterm-{engine}"));
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let addr = common::free_addr();
    let args = [
        "kv",
        "--engine",
        engine,
        "--pool",
        &p,
        "--pool-size",
        "32MiB",
        "--persist",
        "fsync",
    ];
    let mut s = common::ServerProc::start(&args, addr);
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let Ok(mut con) = client.get_connection() else {
                    return;
                };
                for i in 0.. {
                    let k = format!("t{t}k{}", i % 50);
                    let v = format!("{t}-{i}-").repeat(1 + i % 40).into_bytes();
                    let r: redis::RedisResult<String> =
                        redis::cmd("SET").arg(&k).arg(&v).query(&mut con);
                    match r {
                        Ok(ok) if ok == "OK" => {
                            acked.lock().unwrap().insert(k, v);
                        }
                        _ => return, // the server is shutting down
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let st = s.term();
    assert!(st.success(), "clean exit on SIGTERM under load: {st}");
    for h in handles {
        h.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load ran ({} keys)", acked.len());
    let mut s = common::ServerProc::start(&args, addr);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    for (k, v) in &acked {
        let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        // A write sent after its predecessor's ack may have landed without its own ack; only
        // the acknowledged value or a later one of the same writer can be there.
        let got = got.unwrap_or_else(|| panic!("{k} lost"));
        let later_or_equal = got == *v || {
            let tag = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .split('-')
                    .nth(1)
                    .and_then(|x| x.parse::<u64>().ok())
            };
            tag(&got) > tag(v)
        };
        assert!(later_or_equal, "{k}: acknowledged value lost");
    }
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_under_load_uring() {
    run("uring");
}

#[test]
fn sigterm_under_load_epoll() {
    run("epoll");
}
