//! A pool written by log format version 1 is checked in (`tests/fixtures/pool-v1.bin`); this
//! build must recover it exactly. Regenerate only when deliberately creating a new version's
//! fixture: `cargo test -p pst-store --test format_v1_fixture -- --ignored write_fixture`.
// SAFETY (every `Extent::from_raw` here): the test allocates these buffers itself (a fresh
// pool or simulated PM, no port) and hands each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::sync::Arc;

use pst_pool::{BufAlloc, BufIdx, Geometry, PersistMode, Pool, PoolOptions};
use pst_ring::Extent;
use pst_store::Store;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pool-v1.bin")
}

fn opts() -> PoolOptions {
    PoolOptions {
        geometry: Geometry {
            buf_size: 512,
            buf_count: 64,
            log_len: 64 << 10,
        },
        require_geometry: true,
        persist: PersistMode::Fsync,
        ..PoolOptions::default()
    }
}

fn expected() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("alpha", b"first value".to_vec()),
        ("beta", (0..1500u32).map(|i| (i % 251) as u8).collect()), // spans three buffers
        ("gamma", b"overwritten".to_vec()),
    ]
}

/// Land bytes in fresh buffers through the media (as the kernel would) and return extents.
fn land(pool: &Pool, alloc: &mut BufAlloc, data: &[u8]) -> Vec<Extent> {
    let h = pool.header();
    data.chunks(512)
        .map(|c| {
            let b = alloc.alloc().unwrap();
            // Buffers are outside the log: write them through a second, test-only path.
            let off = h.data_off + b.0 as u64 * 512;
            std::fs::OpenOptions::new()
                .write(true)
                .open(pool.path().unwrap())
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, c, off))
                .unwrap();
            unsafe { Extent::from_raw(b, 0, c.len() as u32) }
        })
        .collect()
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
    let mut alloc = BufAlloc::new(0, 64);
    let put = |st: &mut Store<_>, alloc: &mut BufAlloc, k: &str, v: &[u8]| {
        let e = land(&pool, alloc, v);
        st.put(k.as_bytes(), e).unwrap();
    };
    put(&mut st, &mut alloc, "alpha", b"first value");
    put(&mut st, &mut alloc, "gamma", b"original");
    put(&mut st, &mut alloc, "delta", b"to be deleted");
    let wal = land(&pool, &mut alloc, b"a wal record");
    st.append(wal).unwrap();
    st.commit().unwrap();
    put(&mut st, &mut alloc, "beta", &expected()[1].1);
    put(&mut st, &mut alloc, "gamma", b"overwritten");
    st.delete(b"delta").unwrap();
    st.commit().unwrap();
}

#[test]
fn version_1_fixture_recovers_exactly() {
    let tmp = std::env::temp_dir().join(format!("pst-fixture-{}", std::process::id()));
    std::fs::copy(fixture(), &tmp).expect("fixture is checked in");
    let pool = Arc::new(Pool::open(&tmp, &opts()).expect("v1 pool header"));
    let h = *pool.header();
    let (st, rep) = Store::open(
        pool.claim_log().unwrap(),
        h.log_off..h.log_off + h.geometry.log_len,
    )
    .unwrap();
    assert_eq!(rep.records, 7);
    assert_eq!(rep.torn, None);
    assert_eq!(st.len(), 3);
    let mut v = Vec::new();
    for (k, want) in expected() {
        assert!(st.read_value(k.as_bytes(), &mut v).unwrap(), "{k} missing");
        assert_eq!(v, want, "{k}");
    }
    assert!(!st.read_value(b"delta", &mut v).unwrap());
    let wal: Vec<_> = st
        .read_from(0)
        .filter(|r| r.kind == pst_store::RecordKind::Append)
        .collect();
    assert_eq!(wal.len(), 1);
    assert!(st.holds(BufIdx(0)));
    let _ = std::fs::remove_file(tmp);
}
