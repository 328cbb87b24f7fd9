//! A pool whose buffers are mostly dead is not full (issue 10): 100-byte values are packed
//! many to a buffer, so overwrites leave buffers partly live. A key set of about 40% of what a
//! 16 MiB pool holds, overwritten in random order until three times the pool has been written,
//! must never be refused (`-OOM`), and after a `kill -9` every key holds its last acknowledged
//! value. Without relocation (the cleaner moving live values out of mostly dead buffers into
//! fresh ones) the pool filled with sparse buffers and refused writes at about 44% live.
//! Both engines, `--persist fsync`.
mod common;

use std::time::Duration;

use rand::{Rng, SeedableRng};

#[test]
fn overwrites_of_small_values_never_fill_a_pool_of_sparse_buffers() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("sparse-{engine}"));
        let pool = dir.join("pool");
        let args = common::kv_args(engine, &pool, "16MiB", &["--persist", "fsync"]);
        let addr = common::free_addr();
        let mut s = common::ServerProc::start(&args, addr);
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A 16 MiB pool holds about 85,000 such keys (`pst bench fill`): 34,000 is 40%.
        let keys = 34_000u32;
        let mut last = vec![0u32; keys as usize];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let value = |k: u32, gen: u32| format!("{k:08}:{gen:08}:{}", "v".repeat(82));
        let writes = 3 * (16 << 20) / 100;
        let mut gen = 0;
        for round in 0..writes / 1000 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut batch = Vec::with_capacity(1000);
            for _ in 0..1000 {
                // The first pass writes every key once; then random overwrites.
                let k = if gen < keys {
                    gen
                } else {
                    rng.gen_range(0..keys)
                };
                gen += 1;
                pipe.cmd("SET").arg(k).arg(value(k, gen));
                batch.push((k, gen));
            }
            let replies: Vec<redis::Value> = pipe
                .query(&mut c)
                .unwrap_or_else(|e| panic!("{engine}: round {round} of {}: {e}", writes / 1000));
            for ((k, g), r) in batch.into_iter().zip(replies) {
                assert_eq!(r, redis::Value::Okay, "{engine}: SET {k} in round {round}");
                last[k as usize] = g;
            }
        }
        let info: String = redis::cmd("INFO").query(&mut c).unwrap();
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        eprintln!("{engine}: {gen} SETs over {keys} keys, used_memory {used}");
        drop(c);
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        drop(s);
        let _s = common::ServerProc::start(&args, addr);
        let mut c = client.get_connection().unwrap();
        let n: u32 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, keys, "{engine}: keys after kill -9");
        for k in (0..keys).step_by(7) {
            let v: String = redis::cmd("GET").arg(k).query(&mut c).unwrap();
            assert_eq!(
                v,
                value(k, last[k as usize]),
                "{engine}: key {k} after kill -9"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
