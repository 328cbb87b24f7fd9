//! A pool left by a review's SIGTERM / `kill -9` loop on a 1 MiB `fsync` pool (checked in,
//! gzipped: `tests/fixtures/cleaner-stuck-1MiB.pool.gz`): its log has no free segment, 78% of
//! it is dead, and the oldest segment's live records do not fit in the head. The cleaner
//! waited for a free segment that nothing would bring back, the log did not borrow a slot of
//! the data region (it does that only while most of the log is live), and every `DEL` was
//! refused with `-OOM … the log has no room` for good, with 263 buffers free. Now the log
//! borrows a slot when its cleaner is stuck: every key can be deleted, and writes work again.
mod common;

use std::io::Read;

/// A checked-in pool from `tests/fixtures`, decompressed.
fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[test]
fn a_log_whose_cleaner_was_stuck_empties_and_takes_writes() {
    let dir = common::tmpdir("cleaner-stuck");
    let pool = dir.join("pool");
    std::fs::write(&pool, fixture("cleaner-stuck-1MiB.pool.gz")).unwrap();
    for engine in ["uring", "epoll"] {
        let p = dir.join(format!("pool-{engine}"));
        std::fs::copy(&pool, &p).unwrap();
        let addr = common::free_addr();
        let args = [
            "kv",
            "--engine",
            engine,
            "--persist",
            "fsync",
            "--pool",
            p.to_str().unwrap(),
        ];
        let mut s = common::ServerProc::start(&args, addr);
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        assert_eq!(keys.len(), 272, "{engine}");
        for k in &keys {
            let n: redis::RedisResult<i64> = redis::cmd("DEL").arg(k).query(&mut c);
            assert_eq!(n, Ok(1), "{engine}: DEL {k}");
        }
        let r: String = redis::cmd("SET")
            .arg("after")
            .arg("works")
            .query(&mut c)
            .unwrap();
        assert_eq!(r, "OK", "{engine}");
        assert!(s.term().success(), "{engine}");
        common::assert_inspect_ok(p.to_str().unwrap());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A pool left by a review's `redis-benchmark -P 16` SET then INCR flood on 8 MiB
/// (`tests/fixtures/puts-blocked-8MiB.pool.gz`): two free log segments (puts need three), 72%
/// dead, the oldest segment half dead and the head full. The cleaner rotates such a segment
/// only with fewer than two free, so it never did, and every `SET` waited 5 s for log space
/// and got `-OOM`, also after a restart. Now the log borrows a slot then: `SET` answers at once.
#[test]
fn a_log_with_puts_blocked_takes_a_set_at_once() {
    let dir = common::tmpdir("puts-blocked");
    let bytes = fixture("puts-blocked-8MiB.pool.gz");
    for engine in ["uring", "epoll"] {
        let p = dir.join(format!("pool-{engine}"));
        std::fs::write(&p, &bytes).unwrap();
        let addr = common::free_addr();
        let args = [
            "kv",
            "--engine",
            engine,
            "--persist",
            "fsync",
            "--pool",
            p.to_str().unwrap(),
        ];
        let _s = common::ServerProc::start(&args, addr);
        let t = std::time::Instant::now();
        assert_eq!(
            common::redis_cli(addr.port(), &["SET", "foo", "bar"]),
            "OK",
            "{engine}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{engine}: {:?}",
            t.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
