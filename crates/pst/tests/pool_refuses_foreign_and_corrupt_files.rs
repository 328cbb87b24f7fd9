//! A file that is not a pool, or a pool whose header is damaged, is refused with a message
//! naming the problem, and is left byte-for-byte intact.
use std::path::PathBuf;

use pst::{Pool, PoolError, PoolOptions};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp_pool(&format!("refuse-{name}"))
}

fn opts() -> PoolOptions {
    common::small_pool_opts()
}

#[test]
fn foreign_file_is_refused_untouched() {
    let p = tmp("foreign");
    let content = b"just some text file that happens to sit where the pool should be\n".repeat(200);
    std::fs::write(&p, &content).unwrap();
    let err = Pool::open(&p, &opts()).unwrap_err();
    assert!(matches!(err, PoolError::BadHeader { .. }), "{err}");
    assert!(err.to_string().contains("not a pst pool"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), content);
}

#[test]
fn corrupt_header_is_refused_untouched() {
    let p = tmp("corrupt");
    drop(Pool::open(&p, &opts()).unwrap());
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[17] ^= 0x40; // inside buf_size
    std::fs::write(&p, &bytes).unwrap();
    let err = Pool::open(&p, &opts()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
}

#[test]
fn truncated_pool_is_refused_untouched() {
    let p = tmp("short");
    drop(Pool::open(&p, &opts()).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(8192).unwrap();
    let before = std::fs::read(&p).unwrap();
    let err = Pool::open(&p, &opts()).unwrap_err();
    assert!(err.to_string().contains("describes"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
}
