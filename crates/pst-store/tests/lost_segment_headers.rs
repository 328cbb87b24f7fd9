//! Regression (found by the `wal_recovery` fuzz target): when every segment header is lost
//! (damaged), recovery starts an empty log. Epochs must not restart from 1 then: records of the
//! old life (epoch 1, sequence 1, 2, ...) still sit in the segments, and a new write with epoch
//! 1 and sequence 1 would make them look like its successors on the next recovery.

use pst_pool::{Media, PersistMode, SimPm};
use pst_store::format::SEG_HEADER;
use pst_store::sim::Landing;
use pst_store::Store;

#[test]
fn stale_records_stay_dead_after_all_headers_are_lost() {
    let (media, log) = pst_store::sim::media(512, 64, 64 << 10, PersistMode::Fsync);
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut land = Landing::new(media.clone());
    let mut put = |st: &mut Store<SimPm>, key: &str, val: &str| {
        st.put(key.as_bytes(), land.land(val.as_bytes(), false).unwrap())
            .unwrap();
    };
    for i in 0..5 {
        put(&mut st, &format!("old{i}"), "stale");
    }
    st.commit().unwrap();
    drop(st);

    // Lose every segment header.
    let seg = pst_store::format::segment_size(log.end - log.start);
    for s in 0..(log.end - log.start) / seg {
        media.write(log.start + s * seg, &[0u8; SEG_HEADER]);
    }
    let (mut st, rep) = Store::open(media.clone(), log.clone()).unwrap();
    assert_eq!(rep.records, 0);
    put(&mut st, "new", "fresh");
    st.commit().unwrap();
    drop(st);

    let (st, rep) = Store::open(media.clone(), log.clone()).unwrap();
    assert_eq!(rep.records, 1, "stale records came back: {rep:?}");
    let keys: Vec<&[u8]> = st.keys().collect();
    assert_eq!(keys, vec![&b"new"[..]]);
}
