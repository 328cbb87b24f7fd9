//! A pool belongs to one process: while `pst kv` runs on a pool, a second `pst kv`, a
//! `pst httpd` and `pst inspect` on the same pool exit non-zero with a message naming the pool
//! and the holder's pid, touch nothing, and every write the first server acknowledged — under
//! load, while the second instances were tried — is there after a restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn value(k: &str) -> String {
    format!("{k}-{}", "v".repeat(k.len() * 7 % 300))
}

/// Run `pst args…` on the busy pool and check it is refused the right way.
fn assert_refused(args: &[&str], pool: &str, holder: u32) {
    let t = Instant::now();
    let out = common::pst().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} started on a busy pool: {err}"
    );
    assert!(
        err.contains(pool) && err.contains(&format!("pid {holder}")) && err.contains("in use"),
        "{args:?}: the message must name the pool and the holder: {err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "refusal took {:?}",
        t.elapsed()
    );
}

#[test]
fn second_instance_is_refused_and_no_acknowledged_write_is_lost() {
    let dir = common::tmpdir("busy-pool");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let addr = common::free_addr();
    let kv = |p: &str| {
        vec![
            "kv".to_owned(),
            "--pool".to_owned(),
            p.to_owned(),
            "--pool-size".to_owned(),
            "32MiB".to_owned(),
            "--persist".to_owned(),
            "fsync".to_owned(),
        ]
    };
    let args = kv(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = common::ServerProc::start(&args, addr);
    let holder = s.child.id();

    // Load: 4 clients writing distinct keys; each acknowledged key is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let mut con = client.get_connection().unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("k{t}_{i}");
                    let r: String = redis::cmd("SET")
                        .arg(&k)
                        .arg(value(&k))
                        .query(&mut con)
                        .unwrap();
                    assert_eq!(r, "OK");
                    acked.lock().unwrap().push(k);
                    i += 1;
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(200));
    let other = common::free_addr().to_string();
    let mut second = args.clone();
    second.extend(["--addr", &other]);
    assert_refused(&second, &p, holder);
    assert_refused(
        &["httpd", "--pool", &p, "--addr", &other, "--store", "kv"],
        &p,
        holder,
    );
    assert_refused(&["inspect", &p], &p, holder);
    assert_refused(
        &["kv", "--pool", &p, "--addr", &other, "--engine", "epoll"],
        &p,
        holder,
    );

    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    let n = acked.lock().unwrap().len();
    assert!(n > 50, "the load must have written something ({n})");

    // With the server idle, a refused opener must leave the file byte-for-byte as it was.
    let before = std::fs::read(&pool).unwrap();
    assert_refused(&second, &p, holder);
    assert_refused(&["inspect", &p], &p, holder);
    assert_eq!(
        std::fs::read(&pool).unwrap(),
        before,
        "a refused opener changed the pool"
    );

    assert!(s.term().success());
    common::assert_inspect_ok(&p);

    // Restart: every acknowledged write is there, exactly.
    let addr = common::free_addr();
    let _s = common::ServerProc::start(&args, addr);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    for k in acked.lock().unwrap().iter() {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut con).unwrap();
        assert_eq!(got.as_deref(), Some(&value(k)[..]), "acknowledged {k} lost");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A server that cannot listen (its address is taken) exits non-zero naming the address, and
/// leaves no pool file behind when it created one; a pool that already existed is kept intact.
#[test]
fn a_server_that_cannot_listen_leaves_no_new_pool_behind() {
    let dir = common::tmpdir("addr-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = |pool: &std::path::Path| {
        let out = common::pst()
            .args(["kv", "--addr", &addr, "--pool-size", "4MiB", "--pool"])
            .arg(pool)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "started on a taken address: {err}");
        assert!(
            err.contains(&addr),
            "the error must name the address: {err}"
        );
    };
    let new = dir.join("new-pool");
    run(&new);
    assert!(!new.exists(), "the pool this run created was left behind");

    let old = dir.join("old-pool");
    let free = common::free_addr();
    let mut s = common::ServerProc::start(
        &["kv", "--pool", old.to_str().unwrap(), "--pool-size", "4MiB"],
        free,
    );
    assert_eq!(common::redis_cli(free.port(), &["SET", "k", "kept"]), "OK");
    s.term();
    run(&old);
    assert!(old.exists(), "an existing pool was removed");
    let mut s = common::ServerProc::start(
        &["kv", "--pool", old.to_str().unwrap(), "--pool-size", "4MiB"],
        free,
    );
    assert_eq!(common::redis_cli(free.port(), &["GET", "k"]), "kept");
    s.term();
}
