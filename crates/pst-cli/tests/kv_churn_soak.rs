//! Churn soak (issue 10; ignored by default, bounded, self-terminating): a key set of about
//! half the pool's capacity is overwritten with random sizes from 10 B to 64 KiB
//! (log-uniform, so small values are as common as large ones per decade) until ten times the
//! pool has been written, on each engine with `--persist fsync`. It must never be refused —
//! half the capacity is live, the rest is the cleaner's to reclaim — and space amplification
//! (`INFO used_memory` over the bytes of the live values) stays within 2×. It prints, per
//! tenth of the run, SET p50/p99 latency, amplification and compactions, for the closing note;
//! the last tenth's p99 must stay within 4× the first's (flat, not a timing target).
//!
//! `cargo test --release -p pst-cli --test kv_churn_soak -- --ignored --nocapture`
//! (`PST_CHURN_MIB`: pool size, default 64).

mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn info_field(con: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in INFO"))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

fn churn(engine: &str, mib: u64) {
    let dir = common::tmpdir(&format!("churn-{engine}"));
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let size = format!("{mib}MiB");
    let args = [
        "kv",
        "--engine",
        engine,
        "--pool",
        &p,
        "--pool-size",
        &size,
        "--persist",
        "fsync",
    ];
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(&args, addr);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let capacity = mib << 20;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let draw = |rng: &mut rand::rngs::StdRng| -> usize {
        (10f64 * (65536f64 / 10.0).powf(rng.gen::<f64>())) as usize
    };
    // The key set: filled to half the capacity first.
    let mut sizes: Vec<usize> = Vec::new();
    let mut live = 0u64;
    while live < capacity / 2 {
        let len = draw(&mut rng);
        let k = sizes.len();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("c{k}"))
            .arg(vec![b'a'; len])
            .query(&mut con);
        r.unwrap_or_else(|e| panic!("{engine}: filling key {k} ({live} live bytes): {e}"));
        sizes.push(len);
        live += len as u64;
    }
    let keys = sizes.len();
    println!("{engine}: {keys} keys, {live} live bytes in a {mib} MiB pool");
    let total = 10 * capacity;
    let (mut written, mut tenth) = (0u64, 1u64);
    let mut lat: Vec<Duration> = Vec::new();
    let mut p99s = Vec::new();
    let mut worst_amp = 0f64;
    let t0 = Instant::now();
    while written < total {
        let k = rng.gen_range(0..keys);
        let len = draw(&mut rng);
        let fill = b'a' + (written % 26) as u8;
        let t = Instant::now();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("c{k}"))
            .arg(vec![fill; len])
            .query(&mut con);
        lat.push(t.elapsed());
        r.unwrap_or_else(|e| {
            panic!("{engine}: refused after {written} bytes written, {live} live: {e}")
        });
        live = live - sizes[k] as u64 + len as u64;
        sizes[k] = len;
        written += len as u64;
        if written >= tenth * total / 10 {
            lat.sort_unstable();
            let used = info_field(&mut con, "used_memory:");
            let amp = used as f64 / live as f64;
            worst_amp = worst_amp.max(amp);
            let comp = info_field(&mut con, "pst_compactions:");
            println!(
                "{engine} {:>3}% {:>6.1}s  SET p50 {:>7.0} us  p99 {:>7.0} us  live {:>9}  used {:>9}  amp {amp:.2}  compactions {comp}",
                tenth * 10,
                t0.elapsed().as_secs_f64(),
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                live,
                used
            );
            p99s.push(pct(&lat, 0.99));
            lat.clear();
            tenth += 1;
        }
    }
    assert!(
        worst_amp <= 2.0,
        "{engine}: space amplification reached {worst_amp:.2}"
    );
    let (first, last) = (p99s[0], *p99s.last().unwrap());
    assert!(
        last <= first * 4.0,
        "{engine}: p99 grew from {first:.0} us to {last:.0} us over the run"
    );
    // Every key holds its last size after a restart.
    assert!(s.term().success());
    drop(s);
    let _s = common::ServerProc::start(&args, addr);
    let mut con = client.get_connection().unwrap();
    for (k, &len) in sizes.iter().enumerate() {
        let n: usize = redis::cmd("STRLEN")
            .arg(format!("c{k}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(n, len, "{engine}: c{k} after the restart");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "soak: a few minutes; run explicitly"]
fn churn_half_capacity_ten_times_over() {
    let mib = std::env::var("PST_CHURN_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    for engine in ["uring", "epoll"] {
        churn(engine, mib);
    }
}
