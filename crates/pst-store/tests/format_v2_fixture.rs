//! A pool written by format version 2 is checked in (`tests/fixtures/pool-v2.bin`): its log
//! grew past its region into two slots of the data region (pool header and segment headers
//! version 2, salted). This build must recover it exactly. Regenerate only when deliberately
//! creating a new version's fixture:
//! `cargo test -p pst-store --test format_v2_fixture -- --ignored write_fixture`.
// SAFETY (every `Extent::from_raw` here): the test allocates these buffers itself (a fresh
// pool or simulated PM, no port) and hands each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::sync::Arc;

mod common;

use common::{write_at, BUF};
use pst_pool::{BufAlloc, BufIdx, Geometry, PersistMode, Pool, PoolOptions};
use pst_ring::Extent;
use pst_store::Store;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pool-v2.bin")
}

/// Filler records the fixture holds besides the named keys.
const FILLERS: u64 = 1000;

fn opts() -> PoolOptions {
    PoolOptions {
        geometry: Geometry {
            buf_size: BUF,
            buf_count: 256, // 8 slots of 32 buffers (16 KiB segments)
            log_len: 64 << 10,
        },
        require_geometry: true,
        persist: PersistMode::Fsync,
        ..PoolOptions::default()
    }
}

#[test]
#[ignore = "writes the checked-in fixture"]
fn write_fixture() {
    let path = fixture();
    let _ = std::fs::remove_file(&path);
    let pool = Arc::new(Pool::open(&path, &opts()).unwrap());
    let media = pool.claim_log().unwrap();
    let h = *pool.header();
    let (mut st, _) =
        Store::open(media.clone(), h.log_off..h.log_off + h.geometry.log_len).unwrap();
    let mut alloc = BufAlloc::new(0, 256);
    common::write_named(&mut st, &pool, &mut alloc);
    // Fillers sharing buffers (a key per record, 16 B values): more records than the four
    // segments of the log region hold, so the log borrows slots (when it wants them, as a
    // server lends them).
    let mut shared: Option<(BufIdx, u32)> = None;
    for i in 0..FILLERS {
        if let Some(k) = st.segment_wanted() {
            let first = alloc.alloc_run(k).unwrap_or_else(|| {
                panic!("filler {i}: {:?} free {}", st.stats(), alloc.free_count())
            });
            let run = (first.0..first.0 + k)
                .map(|b| unsafe { Extent::from_raw(BufIdx(b), 0, 512) })
                .collect();
            st.grant_segment(run).unwrap();
        }
        let (b, off) = match shared {
            Some((b, off)) if off + 16 <= 512 => (b, off),
            _ => (alloc.alloc().unwrap(), 0),
        };
        let val = format!("filler {i:09}");
        write_at(&pool, b.0 as u64 * 512 + off as u64, val.as_bytes());
        if off > 0 {
            alloc.retain(b).unwrap();
        }
        let e = unsafe { Extent::from_raw(b, off, 16) };
        st.put(format!("f{i:05}").as_bytes(), vec![e]).unwrap();
        shared = Some((b, off + 16));
        if i % 64 == 63 {
            st.commit().unwrap();
        }
    }
    st.commit().unwrap();
    assert!(st.stats().borrowed_segments >= 2, "{:?}", st.stats());
}

#[test]
fn version_2_fixture_recovers_exactly() {
    let tmp = std::env::temp_dir().join(format!("pst-fixture-{}", std::process::id()));
    std::fs::copy(fixture(), &tmp).expect("fixture is checked in");
    let pool = Arc::new(Pool::open(&tmp, &opts()).expect("v2 pool header"));
    assert_eq!(pool.header().version, 2);
    let h = *pool.header();
    let (st, rep) = Store::open(
        pool.claim_log().unwrap(),
        h.log_off..h.log_off + h.geometry.log_len,
    )
    .unwrap();
    assert_eq!(rep.records, 7 + FILLERS);
    assert_eq!(rep.torn, None);
    assert_eq!(st.len(), 3 + FILLERS as usize);
    // Records live in borrowed slots; unwritten borrowed slots went back to the buffers.
    let borrowed = st.stats().borrowed_segments;
    assert!(borrowed >= 1, "{:?}", st.stats());
    common::check_named(&st);
    let mut v = Vec::new();
    for i in 0..FILLERS {
        assert!(st
            .read_value(format!("f{i:05}").as_bytes(), &mut v)
            .unwrap());
        assert_eq!(v, format!("filler {i:09}").as_bytes());
    }
    let _ = std::fs::remove_file(tmp);
}
