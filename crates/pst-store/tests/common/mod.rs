//! Shared by the format fixture tests: the records every fixture holds, written through a
//! real pool file, and the check that a recovered store holds exactly them.
// SAFETY (every `Extent::from_raw` here): the tests allocate these buffers themselves (a
// fresh pool, no port) and hand each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks, dead_code)]

use pst_pool::{BufAlloc, BufIdx, Pool, PoolMedia};
use pst_ring::Extent;
use pst_store::Store;

/// Buffer size of every fixture.
pub const BUF: u32 = 512;

/// The keys and values every fixture ends with (`delta` was deleted, `gamma` overwritten).
pub fn expected() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("alpha", b"first value".to_vec()),
        ("beta", (0..1500u32).map(|i| (i % 251) as u8).collect()), // spans three buffers
        ("gamma", b"overwritten".to_vec()),
    ]
}

/// Write `data` at `off` of the data region through a second, test-only path (buffers are
/// outside the log).
pub fn write_at(pool: &Pool, off: u64, data: &[u8]) {
    let off = pool.header().data_off + off;
    std::fs::OpenOptions::new()
        .write(true)
        .open(pool.path().unwrap())
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, data, off))
        .unwrap();
}

/// Land bytes in fresh buffers (as the kernel would) and return extents.
pub fn land(pool: &Pool, alloc: &mut BufAlloc, data: &[u8]) -> Vec<Extent> {
    data.chunks(BUF as usize)
        .map(|c| {
            let b = alloc.alloc().unwrap();
            write_at(pool, b.0 as u64 * BUF as u64, c);
            unsafe { Extent::from_raw(b, 0, c.len() as u32) }
        })
        .collect()
}

/// The seven records of every fixture: puts, an overwrite, a delete and a WAL append, in two
/// commits.
pub fn write_named(st: &mut Store<PoolMedia>, pool: &Pool, alloc: &mut BufAlloc) {
    let mut put = |st: &mut Store<_>, k: &str, v: &[u8]| {
        let e = land(pool, alloc, v);
        st.put(k.as_bytes(), e).unwrap();
    };
    put(st, "alpha", b"first value");
    put(st, "gamma", b"original");
    put(st, "delta", b"to be deleted");
    let wal = land(pool, alloc, b"a wal record");
    st.append(wal).unwrap();
    st.commit().unwrap();
    let mut put = |st: &mut Store<_>, k: &str, v: &[u8]| {
        let e = land(pool, alloc, v);
        st.put(k.as_bytes(), e).unwrap();
    };
    put(st, "beta", &expected()[1].1);
    put(st, "gamma", b"overwritten");
    st.delete(b"delta").unwrap();
    st.commit().unwrap();
}

/// The recovered store holds exactly the named records' outcome (besides any others the
/// caller checks).
pub fn check_named(st: &Store<PoolMedia>) {
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
}
