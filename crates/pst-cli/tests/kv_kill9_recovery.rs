//! Process-level crash test: `pst kv --persist fsync` (uring and epoll engines in turn) on a pool
//! file on disk, under load from several clients, is killed with SIGKILL at random moments (25
//! times) and restarted; every
//! acknowledged write must be present with its exact bytes (an unacknowledged overwrite may or
//! may not have landed).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Deterministic value for (key, version): size and bytes vary.
fn value(key: &str, version: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(
        version
            ^ key
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    );
    let len = if r.gen_bool(0.1) {
        r.gen_range(2000..9000)
    } else {
        r.gen_range(1..600)
    };
    (0..len).map(|_| r.gen()).collect()
}

#[derive(Default)]
struct Model {
    /// key → last acknowledged version.
    acked: HashMap<String, u64>,
    /// key → version sent but not acknowledged when the server died.
    inflight: HashMap<String, u64>,
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    let dir = common::tmpdir("kill9");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut version = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for round in 0..25 {
        let addr = common::free_addr();
        // Alternate engines: both must recover the same pool.
        let engine = if round % 2 == 0 { "uring" } else { "epoll" };
        let mut s = common::ServerProc::start(
            &[
                "kv",
                "--engine",
                engine,
                "--pool",
                &p,
                "--pool-size",
                "32MiB",
                "--persist",
                "fsync",
            ],
            addr,
        );
        // Verify everything acknowledged so far.
        {
            let m = model.lock().unwrap();
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut con = client.get_connection().unwrap();
            for (k, &v) in &m.acked {
                let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
                let ok = got.as_deref() == Some(&value(k, v)[..])
                    || m.inflight
                        .get(k)
                        .is_some_and(|&iv| got.as_deref() == Some(&value(k, iv)[..]));
                assert!(
                    ok,
                    "round {round}: acknowledged {k} v{v} lost or wrong ({} bytes)",
                    got.map(|g| g.len()).unwrap_or(0)
                );
            }
        }
        // Whatever landed of the in-flight writes is now the truth for those keys.
        {
            let mut m = model.lock().unwrap();
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut con = client.get_connection().unwrap();
            let inflight: Vec<(String, u64)> = m.inflight.drain().collect();
            for (k, iv) in inflight {
                let got: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(&mut con).unwrap();
                if got.as_deref() == Some(&value(&k, iv)[..]) {
                    m.acked.insert(k, iv);
                }
            }
        }
        // Load: 4 clients, each overwriting its own keys (one writer per key keeps the model
        // exact), then SIGKILL at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (model, stop) = (model.clone(), stop.clone());
                let base = version + t * 1_000_000;
                std::thread::spawn(move || {
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    let Ok(mut con) = client.get_connection() else {
                        return;
                    };
                    let mut r = rand::rngs::StdRng::seed_from_u64(base);
                    let mut v = base;
                    while !stop.load(Ordering::Relaxed) {
                        v += 1;
                        let k = format!("key{t}_{}", r.gen_range(0..75));
                        model.lock().unwrap().inflight.insert(k.clone(), v);
                        let res: redis::RedisResult<String> =
                            redis::cmd("SET").arg(&k).arg(value(&k, v)).query(&mut con);
                        let mut m = model.lock().unwrap();
                        match res {
                            Ok(ok) if ok == "OK" => {
                                m.inflight.remove(&k);
                                m.acked.insert(k, v);
                            }
                            _ => return, // server gone: `k` stays in flight
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
        s.child.kill().unwrap(); // SIGKILL
        let _ = s.child.wait();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        version += 10_000_000;
    }
    let m = model.lock().unwrap();
    assert!(
        m.acked.len() > 200,
        "the load must have written most keys ({})",
        m.acked.len()
    );
    drop(m);
    common::assert_inspect_ok(&p);
    let _ = std::fs::remove_dir_all(dir);
}
