//! A pool written by log format version 1 is checked in (`tests/fixtures/pool-v1.bin`); this
//! build must recover it exactly. (It was written by the v1 build's `write_fixture`; this build
//! creates version 2 pools, whose fixture is `format_v2_fixture`'s.)

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use pst_pool::{Geometry, PersistMode, Pool, PoolOptions};
use pst_store::Store;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pool-v1.bin")
}

fn opts() -> PoolOptions {
    PoolOptions {
        geometry: Geometry {
            buf_size: common::BUF,
            buf_count: 64,
            log_len: 64 << 10,
        },
        require_geometry: true,
        persist: PersistMode::Fsync,
        ..PoolOptions::default()
    }
}

#[test]
fn version_1_fixture_recovers_exactly() {
    let tmp = std::env::temp_dir().join(format!("pst-fixture-v1-{}", std::process::id()));
    std::fs::copy(fixture(), &tmp).expect("fixture is checked in");
    let pool = Arc::new(Pool::open(&tmp, &opts()).expect("v1 pool header"));
    assert_eq!(pool.header().version, 1);
    assert!(!pool.header().log_may_grow());
    let h = *pool.header();
    let (st, rep) = Store::open(
        pool.claim_log().unwrap(),
        h.log_off..h.log_off + h.geometry.log_len,
    )
    .unwrap();
    assert_eq!(rep.records, 7);
    assert_eq!(rep.torn, None);
    assert_eq!(st.len(), 3);
    common::check_named(&st);
    // A v1 pool's log never borrows buffers: its segment headers carry no salt.
    assert_eq!(st.segment_wanted(), None);
    let _ = std::fs::remove_file(tmp);
}
