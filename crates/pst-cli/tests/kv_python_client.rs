//! `pst kv` with Python's `redis` client (issue 12), on both engines, with its default RESP3
//! (`HELLO 3`) for the writes and RESP2 for the reads: strings with expiry,
//! hashes, sets, DUMP/RESTORE, a transactional pipeline (`transaction=True`, MULTI/EXEC under the hood), a
//! `WATCH` conflict raising `WatchError`, `SCAN` iteration, and, after `kill -9`, the same data.
//! `.ci/run` installs the client (`pip install redis`).
mod common;

use std::process::Command;

const SCRIPT: &str = r#"
import sys, redis
port, phase = int(sys.argv[1]), sys.argv[2]
# Writes with the client's default protocol (RESP3 through `HELLO 3` in redis-py 8), reads
# back with RESP2.
r = redis.Redis(port=port, decode_responses=True) if phase == "write" else redis.Redis(port=port, protocol=2, decode_responses=True)
if phase == "write":
    assert r.ping()
    assert r.set("s", "v", ex=1000)
    assert 990 <= r.ttl("s") <= 1000
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hincrby("h", "a", 41) == 42
    p = r.pipeline(transaction=True)
    p.set("t1", "x").incr("n").incr("n").hget("h", "a")
    assert p.execute() == [True, 1, 2, "42"], "transactional pipeline"
    with r.pipeline() as p:
        p.watch("n")
        p.multi()
        r.set("n", 100)  # another client touches the watched key
        p.set("t2", "y")
        try:
            p.execute()
            raise SystemExit("EXEC should have failed")
        except redis.WatchError:
            pass
    assert r.get("t2") is None and r.get("missing") is None
    assert r.hgetall("h") == {"a": "42", "b": "2"}, "a map in RESP3"
    assert r.config_get("maxmemory*") is not None
    assert r.sadd("st", "a", "b", "c") == 3 and r.srem("st", "c") == 1
    assert r.restore("hcopy", 0, r.dump("h")) and r.hgetall("hcopy") == {"a": "42", "b": "2"}
    for i in range(50):
        r.set(f"k:{i}", i)
    assert sorted(r.scan_iter(match="k:*", count=7)) == sorted(f"k:{i}" for i in range(50))
    print("written")
else:
    assert r.get("s") == "v" and 980 <= r.ttl("s") <= 1000, r.ttl("s")
    assert r.hgetall("h") == {"a": "42", "b": "2"}
    assert r.get("t1") == "x" and r.get("n") == "100"
    assert r.smembers("st") == {"a", "b"} and r.type("st") == "set"
    assert r.hgetall("hcopy") == {"a": "42", "b": "2"}
    assert r.type("h") == "hash" and r.dbsize() == 56, r.dbsize()
    print("recovered")
"#;

fn py(port: u16, phase: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &port.to_string(), phase])
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python redis client ({phase}) failed (.ci/run installs it):\n{text}"
    );
    text
}

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("kv-python-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let args = common::kv_args(engine, &pool, "64MiB", &["--persist", "fsync"]);
    let mut s = common::ServerProc::start(&args, addr);
    assert!(py(addr.port(), "write").contains("written"));
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let _s = common::ServerProc::start(&args, addr);
    assert!(py(addr.port(), "read").contains("recovered"));
}

#[test]
fn python_redis_client_uring() {
    scenario("uring");
}

#[test]
fn python_redis_client_epoll() {
    scenario("epoll");
}
