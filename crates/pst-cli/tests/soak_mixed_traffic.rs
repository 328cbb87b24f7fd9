//! Bounded soak (ignored by default; `PST_SOAK_SECS`, default 600): mixed Redis-protocol traffic
//! — SET/GET/DEL/INCR/MSET over a fixed key space from 8 clients, plus connection churn — against
//! `pst kv --persist pmem`. Resident memory and pool usage must be flat after warm-up.
//!
//! `PST_SOAK_SECS=600 cargo test --release -p pst-cli --test soak_mixed_traffic -- --ignored --nocapture`

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn info_field(con: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "long-running soak; run explicitly"]
fn mixed_traffic_soak_is_flat() {
    let secs: u64 = std::env::var("PST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = common::tmpdir("soak-mixed");
    let pool = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from(format!("/dev/shm/pst-soak-{}", std::process::id()))
    } else {
        dir.join("pool")
    };
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(
        &[
            "kv",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "64MiB",
            "--persist",
            "pmem",
        ],
        addr,
    );
    let pid = s.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                while !stop.load(Ordering::Relaxed) {
                    // Connection churn: a fresh connection every few hundred commands.
                    let Ok(mut con) = client.get_connection() else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    for _ in 0..rng.gen_range(50..500) {
                        let k = format!("k{}", rng.gen_range(0..2000));
                        let r: redis::RedisResult<()> = match rng.gen_range(0..100) {
                            0..=39 => redis::cmd("SET")
                                .arg(&k)
                                .arg(vec![b'x'; rng.gen_range(1..4000)])
                                .query(&mut con),
                            40..=79 => redis::cmd("GET")
                                .arg(&k)
                                .query::<Option<Vec<u8>>>(&mut con)
                                .map(|_| ()),
                            80..=89 => redis::cmd("DEL").arg(&k).query::<i64>(&mut con).map(|_| ()),
                            90..=94 => redis::cmd("INCR")
                                .arg(format!("n{}", rng.gen_range(0..50)))
                                .query::<i64>(&mut con)
                                .map(|_| ()),
                            _ => redis::cmd("MSET")
                                .arg(&k)
                                .arg("a")
                                .arg(format!("{k}b"))
                                .arg("b")
                                .query(&mut con),
                        };
                        if r.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let start = Instant::now();
    let warm = Duration::from_secs((secs / 10).max(5));
    let mut after_warmup = None;
    let mut max_rss_after = 0;
    let mut max_held_after = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        let (rss, held) = (rss_kib(pid), info_field(&mut con, "pst_buffers_held:"));
        eprintln!(
            "soak {:>4}s: {:>10} ops, {} errors, server RSS {} KiB, pool buffers held {}",
            start.elapsed().as_secs(),
            ops.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            rss,
            held
        );
        if start.elapsed() >= warm {
            after_warmup.get_or_insert((rss, held));
            max_rss_after = max_rss_after.max(rss);
            max_held_after = max_held_after.max(held);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (rss0, held0) = after_warmup.expect("ran past warm-up");
    eprintln!("soak done: RSS after warm-up {rss0} KiB, max later {max_rss_after} KiB; buffers held after warm-up {held0}, max later {max_held_after}");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no command may fail");
    assert!(
        max_rss_after <= rss0 + rss0 / 5 + 4096,
        "resident memory grew: {rss0} -> {max_rss_after} KiB"
    );
    assert!(s.term().success());
    let _ = std::fs::remove_file(&pool);
    let _ = std::fs::remove_dir_all(dir);
}
