//! Key expiry is durable (issue 12): deadlines set with `SET .. EX`, `SETEX`, `EXPIRE` and
//! cleared with `PERSIST` or a plain `SET` are the same after `kill -9` and a restart; a key
//! whose deadline passed while the server was down is gone after the restart (and stays gone:
//! its expiry is logged); a key that expired while the server ran stays expired. Both engines,
//! driven by redis-cli and the Rust `redis` client.
mod common;

use std::time::Duration;

fn cli(port: u16, args: &[&str]) -> String {
    common::redis_cli(port, args)
}

fn int(port: u16, args: &[&str]) -> i64 {
    let s = cli(port, args);
    s.parse()
        .unwrap_or_else(|_| panic!("{args:?} answered {s:?}"))
}

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("kv-expiry-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let port = addr.port();
    let args = common::kv_args(engine, &pool, "64MiB", &["--persist", "fsync"]);
    let mut s = common::ServerProc::start(&args, addr);
    assert_eq!(cli(port, &["SET", "long", "1", "EX", "1000"]), "OK");
    assert_eq!(cli(port, &["SETEX", "setex", "2000", "2"]), "OK");
    assert_eq!(cli(port, &["SET", "persisted", "3", "EX", "1000"]), "OK");
    assert_eq!(int(port, &["PERSIST", "persisted"]), 1);
    assert_eq!(cli(port, &["SET", "overwritten", "4", "EX", "1000"]), "OK");
    assert_eq!(cli(port, &["SET", "overwritten", "5"]), "OK");
    assert_eq!(cli(port, &["SET", "short", "6", "PX", "400"]), "OK");
    assert_eq!(cli(port, &["SET", "gone", "7", "PX", "50"]), "OK");
    // The Rust client sees the same deadlines.
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let ttl: i64 = redis::cmd("TTL").arg("long").query(&mut con).unwrap();
    assert!((999..=1000).contains(&ttl), "{ttl}");
    // "gone" expires while the server runs.
    std::thread::sleep(Duration::from_millis(100));
    let v: Option<String> = redis::cmd("GET").arg("gone").query(&mut con).unwrap();
    assert_eq!(v, None);
    drop(con);

    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    // "short" expires while the server is down.
    std::thread::sleep(Duration::from_millis(500));
    let _s = common::ServerProc::start(&args, addr);
    let long = int(port, &["TTL", "long"]);
    assert!((990..=1000).contains(&long), "long: {long}");
    let setex = int(port, &["TTL", "setex"]);
    assert!((1990..=2000).contains(&setex), "setex: {setex}");
    assert_eq!(int(port, &["TTL", "persisted"]), -1);
    assert_eq!(cli(port, &["GET", "persisted"]), "3");
    assert_eq!(int(port, &["TTL", "overwritten"]), -1);
    assert_eq!(cli(port, &["GET", "overwritten"]), "5");
    assert_eq!(
        cli(port, &["GET", "short"]),
        "",
        "expired while the server was down"
    );
    assert_eq!(int(port, &["TTL", "gone"]), -2);
    assert_eq!(int(port, &["DBSIZE"]), 4);
    let keys = cli(port, &["KEYS", "*"]);
    assert_eq!(
        keys.lines().count(),
        4,
        "deadline records are not keys: {keys}"
    );
    assert!(cli(port, &["INFO", "keyspace"]).contains("db0:keys=4,expires=2"));
}

#[test]
fn expiry_survives_kill9_uring() {
    scenario("uring");
}

#[test]
fn expiry_survives_kill9_epoll() {
    scenario("epoll");
}
