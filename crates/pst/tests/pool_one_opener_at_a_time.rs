//! A pool belongs to one opener at a time: a second open — read-write or read-only, in this
//! process or another — is refused with `PoolError::InUse` naming the holder, and the pool is
//! left byte-for-byte untouched. Closing the first opener frees it.
use std::path::PathBuf;

use pst::{Pool, PoolError, PoolOptions};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp_pool(&format!("lock-{name}"))
}

fn opts() -> PoolOptions {
    common::small_pool_opts()
}

fn assert_in_use_by_us(err: PoolError, path: &std::path::Path) {
    let msg = err.to_string();
    match err {
        PoolError::InUse {
            holder: Some(h), ..
        } => assert_eq!(h.pid, std::process::id(), "{msg}"),
        other => panic!("expected InUse naming a holder, got {other:?}"),
    }
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn second_open_is_refused_and_the_pool_is_untouched() {
    let p = tmp("second");
    let first = Pool::open(&p, &opts()).unwrap();
    let before = std::fs::read(&p).unwrap();

    assert_in_use_by_us(Pool::open(&p, &opts()).unwrap_err(), &p);
    let ro = PoolOptions {
        read_only: true,
        ..opts()
    };
    assert_in_use_by_us(Pool::open(&p, &ro).unwrap_err(), &p);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "a refused open wrote to the pool"
    );

    drop(first);
    let again = Pool::open(&p, &opts()).expect("free once the first opener is gone");
    drop(again);
}

#[test]
fn readers_share_but_exclude_a_writer() {
    let p = tmp("readers");
    drop(Pool::open(&p, &opts()).unwrap());
    let ro = PoolOptions {
        read_only: true,
        ..opts()
    };
    let r1 = Pool::open(&p, &ro).unwrap();
    let r2 = Pool::open(&p, &ro).expect("read-only openers share the pool");
    assert_in_use_by_us(Pool::open(&p, &opts()).unwrap_err(), &p);
    drop((r1, r2));
    drop(Pool::open(&p, &opts()).unwrap());
}

#[test]
fn another_process_is_refused_while_we_hold_it() {
    let p = tmp("other-process");
    let _held = Pool::open(&p, &opts()).unwrap();
    // `flock` from another process (util-linux): non-blocking, must fail while we hold it.
    let out = std::process::Command::new("flock")
        .args(["--nonblock", "--shared"])
        .arg(&p)
        .arg("true")
        .status();
    match out {
        Ok(st) => assert!(!st.success(), "another process got a lock on a held pool"),
        Err(e) => panic!("flock(1) from util-linux is needed for this test: {e}"),
    }
}
