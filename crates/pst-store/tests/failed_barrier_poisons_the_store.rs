//! A persist barrier that fails poisons the store (fsync-gate): the commit reports it, every
//! later write and commit is refused with `Poisoned`, nothing after the failure is ever
//! acknowledged — and what was committed before it survives a crash and a reopen.
// SAFETY (every `Extent::from_raw` here): the test allocates these buffers itself (simulated
// PM, no port) and hands each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use pst_pool::{BufAlloc, Geometry, Header, Media, PersistMode, SimPm};
use pst_ring::Extent;
use pst_store::{Store, StoreError};

#[test]
fn failed_barrier_poisons_and_committed_data_survives() {
    let h = Header::layout(Geometry {
        buf_size: 512,
        buf_count: 64,
        log_len: 64 << 10,
    })
    .unwrap();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let media = SimPm::new(h, PersistMode::Fsync);
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut alloc = BufAlloc::new(0, 64);
    let mut put = |st: &mut Store<SimPm>, key: &str, val: &str| {
        let b = alloc.alloc().unwrap();
        media.write(h.data_off + b.0 as u64 * 512, val.as_bytes());
        st.put(
            key.as_bytes(),
            vec![unsafe { Extent::from_raw(b, 0, val.len() as u32) }],
        )
    };
    put(&mut st, "before", "committed").unwrap();
    st.commit().unwrap();

    put(&mut st, "during", "never acknowledged").unwrap();
    media.fail_barriers(1);
    let err = st.commit().unwrap_err();
    assert!(matches!(err, StoreError::Poisoned(_)), "{err}");
    // From now on: refused, even though barriers would work again.
    assert!(matches!(
        put(&mut st, "after", "x").unwrap_err(),
        StoreError::Poisoned(_)
    ));
    assert!(matches!(st.commit().unwrap_err(), StoreError::Poisoned(_)));
    assert!(matches!(
        st.delete(b"before").unwrap_err(),
        StoreError::Poisoned(_)
    ));

    // A crash (unpersisted lines dropped) and a reopen: the committed value is there.
    drop(st);
    let crashed = media.crash(|| 0);
    let (st, rep) = Store::open(crashed, log).unwrap();
    assert!(rep.corrupt.is_none(), "{rep:?}");
    let mut v = Vec::new();
    assert!(st.read_value(b"before", &mut v).unwrap());
    assert_eq!(v, b"committed");
    assert!(
        st.get(b"after").is_none(),
        "a write refused as poisoned came back"
    );
}
