//! Hashes are durable (issue 12): fields written with `HSET`, changed with `HINCRBY`, removed
//! with `HDEL`, a hash deleted with `DEL` and one replaced by a string are exactly as they were
//! after `kill -9` and a restart; `redis-benchmark -t hset` runs against it. Both engines.
mod common;

use common::redis_cli as cli;

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("kv-hash-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let port = addr.port();
    let args = common::kv_args(engine, &pool, "64MiB", &["--persist", "fsync"]);
    let mut s = common::ServerProc::start(&args, addr);
    assert_eq!(
        cli(
            port,
            &["HSET", "user:1", "name", "ada", "visits", "1", "tmp", "x"]
        ),
        "3"
    );
    assert_eq!(cli(port, &["HINCRBY", "user:1", "visits", "41"]), "42");
    assert_eq!(cli(port, &["HDEL", "user:1", "tmp"]), "1");
    assert_eq!(cli(port, &["HSET", "gone", "f", "v"]), "1");
    assert_eq!(cli(port, &["DEL", "gone"]), "1");
    assert_eq!(cli(port, &["HSET", "replaced", "f", "v"]), "1");
    assert_eq!(cli(port, &["SET", "replaced", "now a string"]), "OK");
    let big = "v".repeat(10_000);
    assert_eq!(cli(port, &["HSET", "big", "f", &big]), "1");
    let bench = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", "hset", "-n", "2000", "-q"])
        .output()
        .expect("redis-benchmark (redis-tools)");
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success() && text.contains("HSET"),
        "redis-benchmark -t hset: {text}"
    );

    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let _s = common::ServerProc::start(&args, addr);
    assert_eq!(
        cli(port, &["HGETALL", "user:1"]),
        "name\nada\nvisits\n42",
        "fields and their values after the restart"
    );
    assert_eq!(cli(port, &["TYPE", "user:1"]), "hash");
    assert_eq!(cli(port, &["EXISTS", "gone"]), "0");
    assert_eq!(cli(port, &["HLEN", "gone"]), "0");
    assert_eq!(cli(port, &["TYPE", "replaced"]), "string");
    assert_eq!(cli(port, &["GET", "replaced"]), "now a string");
    assert_eq!(cli(port, &["HGET", "big", "f"]), big);
    // redis-benchmark's hash: one field, `myhash`.
    assert_eq!(cli(port, &["TYPE", "myhash"]), "hash");
    assert_eq!(
        cli(port, &["GET", "user:1"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
}

#[test]
fn hashes_survive_kill9_uring() {
    scenario("uring");
}

#[test]
fn hashes_survive_kill9_epoll() {
    scenario("epoll");
}
