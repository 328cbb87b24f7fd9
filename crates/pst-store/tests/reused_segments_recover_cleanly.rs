//! Regression (found by the SIGKILL test): a segment reused after compaction ends in records of
//! its earlier life. When equal-sized records make one of them sit exactly where the next
//! record would be, recovery must read it as the end of the segment's data — not as a torn or
//! corrupt record — and carry on into the next segment.

use pst_pool::PersistMode;
use pst_store::sim::Landing;
use pst_store::Store;

#[test]
fn equal_sized_records_over_many_segment_reuses() {
    let (media, log) = pst_store::sim::media(512, 512, 64 << 10, PersistMode::Fsync);
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut land = Landing::new(media.clone());
    let mut expect = std::collections::HashMap::new();
    let (mut compactions, mut seen) = (0, 0);
    for round in 0..40u32 {
        for k in 0..300u32 {
            // Same key length, one extent each: every record has the same size.
            let key = format!("key{:05}", k % 50);
            let val = format!("{round:04}-{k:05}");
            st.put(key.as_bytes(), land.land(val.as_bytes(), false).unwrap())
                .unwrap();
            expect.insert(key, val);
            if k % 10 == 9 {
                st.maintain(land.free_count() < 200).unwrap();
                compactions += st.stats().compactions - seen;
                seen = st.stats().compactions;
                st.commit().unwrap();
                land.release(st.take_released());
            }
        }
        // Reopen (a clean restart: everything committed) and check every key.
        st.commit().unwrap();
        drop(st);
        let (st2, rep) = Store::open(media.clone(), log.clone())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            rep.corrupt.is_none() && rep.torn.is_none(),
            "round {round}: {rep:?}"
        );
        let mut v = Vec::new();
        for (k, val) in &expect {
            assert!(
                st2.read_value(k.as_bytes(), &mut v).unwrap(),
                "round {round}: {k} missing"
            );
            assert_eq!(v, val.as_bytes(), "round {round}: {k}");
        }
        land = Landing::with_live(media.clone(), |b| st2.holds(b) as u16);
        st = st2;
        seen = 0;
    }
    assert!(
        compactions > 30,
        "segments must have been reused many times ({compactions})"
    );
}
