//! A pipelined flood of writes finds the log grown within the batch (issue 10's leftover):
//! the log region of a 16 MiB pool holds about 12,800 records, and before each write command
//! the KV service lends the log a free slot of the worker's buffers when it runs short. So one
//! pipeline of 30,000 `SET`s of 100-byte values (about a third of what the pool holds) is
//! accepted whole, where growing only at the end of each batch answered `-OOM` to part of it
//! while the pool still had room. Both engines, `--persist none` (the log's space is the same
//! with any persistence).
mod common;

use std::time::Duration;

#[test]
fn one_pipeline_bigger_than_the_log_region_is_accepted_whole() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("flood-{engine}"));
        let pool = dir.join("pool");
        let args = common::kv_args(engine, &pool, "16MiB", &["--persist", "none"]);
        let addr = common::free_addr();
        let _s = common::ServerProc::start(&args, addr);
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let n = 30_000u32;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for k in 0..n {
            pipe.cmd("SET")
                .arg(format!("k{k:06}"))
                .arg([b'v'; 100].as_slice());
        }
        let replies: Vec<redis::Value> = pipe.query(&mut c).unwrap();
        let refused: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != redis::Value::Okay)
            .map(|(i, _)| i)
            .collect();
        assert!(
            refused.is_empty(),
            "{engine}: {} of {n} SETs refused, the first at {:?}: {:?}",
            refused.len(),
            refused.first(),
            refused.first().map(|&i| &replies[i])
        );
        let size: u32 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(size, n, "{engine}");
        let info: String = redis::cmd("INFO").query(&mut c).unwrap();
        let borrowed: u32 = info
            .lines()
            .find_map(|l| l.strip_prefix("pst_log_borrowed_segments:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO pst_log_borrowed_segments");
        assert!(borrowed > 0, "{engine}: the log grew into the buffers");
    }
}
