//! Process-level crash test of the pipelined group commit: `pst kv --engine uring --persist
//! fsync --threads 2` (commits in flight on either worker's port while both keep applying
//! writes) under writers and readers, killed with SIGKILL at random moments (16 rounds) and
//! restarted. Every acknowledged write must be there with its exact bytes, and so must every
//! value a reader was shown: a `GET` reply is an acknowledgement of what it returns too (one
//! writer per key, increasing versions, so after the restart the key holds that version or a
//! later one).
//!
//! A SIGKILL loses no page cache, so this cannot tell a reply sent before its `fdatasync` from
//! one sent after (the deterministic `reads_do_not_wait_for_commits_in_flight` test in
//! pst-serve does); what it proves is that killing the server with commits in flight, on
//! several workers, never costs an acknowledged write or a value shown to a reader.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// The value of `key` at `version`: the version up front, then padding of varying length.
fn value(key: &str, version: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(version);
    let pad = if r.gen_bool(0.1) {
        r.gen_range(2000..6000)
    } else {
        r.gen_range(0..600)
    };
    let mut v = format!("{key}:{version}:").into_bytes();
    v.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
    v
}

/// The version a value says it is, checking the rest of its bytes.
fn version_of(key: &str, v: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(v);
    let n: u64 = s
        .split(':')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{key}: garbage value"));
    assert_eq!(v, &value(key, n)[..], "{key}: value bytes wrong for v{n}");
    n
}

#[derive(Default)]
struct Model {
    /// key → newest version acknowledged (by a SET reply or shown by a GET reply).
    acked: HashMap<String, u64>,
}

#[test]
fn sigkill_with_commits_in_flight_loses_nothing_acknowledged_or_read() {
    let dir = common::tmpdir("kill9-inflight");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut version = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut reads = 0u64;
    for round in 0..16 {
        let addr = common::free_addr();
        let mut s = common::ServerProc::start(
            &[
                "kv",
                "--engine",
                "uring",
                "--threads",
                "2",
                "--pool",
                &p,
                "--pool-size",
                "32MiB",
                "--persist",
                "fsync",
            ],
            addr,
        );
        {
            let m = model.lock().unwrap();
            let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
            let mut con = client.get_connection().unwrap();
            for (k, &v) in &m.acked {
                let got: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
                let got = got.unwrap_or_else(|| panic!("round {round}: {k} v{v} lost"));
                let n = version_of(k, &got);
                assert!(n >= v, "round {round}: {k} went back from v{v} to v{n}");
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        // Writers: each owns its keys and writes increasing versions.
        for t in 0..3u64 {
            let (model, stop) = (model.clone(), stop.clone());
            let base = version + t * 1_000_000;
            handles.push(std::thread::spawn(move || -> u64 {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let Ok(mut con) = client.get_connection() else {
                    return 0;
                };
                let mut r = rand::rngs::StdRng::seed_from_u64(base);
                let mut v = base;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    let k = format!("key{t}_{}", r.gen_range(0..40));
                    let res: redis::RedisResult<String> =
                        redis::cmd("SET").arg(&k).arg(value(&k, v)).query(&mut con);
                    match res {
                        Ok(ok) if ok == "OK" => {
                            let mut m = model.lock().unwrap();
                            let e = m.acked.entry(k).or_insert(0);
                            *e = (*e).max(v);
                        }
                        _ => return 0,
                    }
                }
                0
            }));
        }
        // Readers: what they are shown counts as acknowledged.
        for t in 0..2u64 {
            let (model, stop) = (model.clone(), stop.clone());
            handles.push(std::thread::spawn(move || -> u64 {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let Ok(mut con) = client.get_connection() else {
                    return 0;
                };
                let mut r = rand::rngs::StdRng::seed_from_u64(round * 10 + t);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("key{}_{}", r.gen_range(0..3), r.gen_range(0..40));
                    let res: redis::RedisResult<Option<Vec<u8>>> =
                        redis::cmd("GET").arg(&k).query(&mut con);
                    match res {
                        Ok(Some(got)) => {
                            let v = version_of(&k, &got);
                            let mut m = model.lock().unwrap();
                            let e = m.acked.entry(k).or_insert(0);
                            *e = (*e).max(v);
                            n += 1;
                        }
                        Ok(None) => {}
                        Err(_) => return n,
                    }
                }
                n
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
        s.child.kill().unwrap(); // SIGKILL
        let _ = s.child.wait();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            reads += h.join().unwrap();
        }
        version += 10_000_000;
    }
    let m = model.lock().unwrap();
    assert!(m.acked.len() > 60, "the load must write most keys");
    assert!(reads > 100, "readers must have been shown values ({reads})");
    drop(m);
    common::assert_inspect_ok(&p);
    let _ = std::fs::remove_dir_all(dir);
}
