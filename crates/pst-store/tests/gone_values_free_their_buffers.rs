//! A value that is overwritten, deleted or cleared gives its buffers back once the record that
//! ended it is durable — not when the cleaner retires its record, which on a full pool could be
//! never (`DEL` must make room). Recovery then meets a stale put whose buffer holds other data:
//! it is superseded, so its payload is not checked. A *live* value whose payload is damaged
//! still ends the log, and counts as corruption once a later record says it was committed.

use pst_pool::{Geometry, Header, Media, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::Store;

fn setup() -> (SimPm, std::ops::Range<u64>, Header) {
    let h = Header::layout(Geometry {
        buf_size: 512,
        buf_count: 64,
        log_len: 64 << 10,
    })
    .unwrap();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    (SimPm::new(h, PersistMode::Fsync), log, h)
}

/// A fresh store over `media` and a landing zone for its values.
fn open(media: &SimPm, log: &std::ops::Range<u64>) -> (Store<SimPm>, Landing) {
    let (st, _) = Store::open(media.clone(), log.clone()).unwrap();
    (st, Landing::new(media.clone()))
}

/// Put `k` → `v`, landed in a fresh buffer.
fn put(st: &mut Store<SimPm>, land: &mut Landing, k: &str, v: &str) -> u64 {
    st.put(k.as_bytes(), land.land(v.as_bytes(), false).unwrap())
        .unwrap()
}

/// Overwrite buffer `b` with other bytes and make them durable (the pool reused it).
fn scribble(media: &SimPm, h: &Header, b: u32) {
    let off = h.data_off + b as u64 * h.geometry.buf_size as u64;
    media.write(off, &[0x5a; 64]);
    media.flush(off, 64);
    media.barrier().unwrap();
}

#[test]
fn overwritten_deleted_and_cleared_values_release_after_their_successor_commits() {
    let (media, log, h) = setup();
    let (mut st, mut land) = open(&media, &log);
    put(&mut st, &mut land, "a", "first a");
    put(&mut st, &mut land, "b", "first b");
    put(&mut st, &mut land, "c", "first c");
    st.commit().unwrap();
    let buf_of = |st: &Store<SimPm>, k: &str| st.get(k.as_bytes()).unwrap().extents[0].0;
    let (a1, b1) = (buf_of(&st, "a"), buf_of(&st, "b"));
    assert!(st.take_released().is_empty());

    put(&mut st, &mut land, "a", "second a");
    st.delete(b"b").unwrap();
    // Not yet durable: the old buffers stay held.
    assert!(st.take_released().is_empty());
    assert!(st.holds(pst_pool::BufIdx(a1)) && st.holds(pst_pool::BufIdx(b1)));
    st.commit().unwrap();
    let freed: Vec<u32> = st.take_released().iter().map(|e| e.buf().0).collect();
    assert_eq!(freed.len(), 2, "{freed:?}");
    assert!(freed.contains(&a1) && freed.contains(&b1), "{freed:?}");
    assert_eq!(st.stats().compactions, 0, "released without the cleaner");

    // The pool reuses both buffers; a restart still recovers cleanly.
    scribble(&media, &h, a1);
    scribble(&media, &h, b1);
    drop(st);
    let (st, rep) = Store::open(media.clone(), log.clone()).unwrap();
    assert!(rep.torn.is_none() && rep.corrupt.is_none(), "{rep:?}");
    let mut v = Vec::new();
    assert!(st.read_value(b"a", &mut v).unwrap());
    assert_eq!(v, b"second a");
    assert!(!st.read_value(b"b", &mut v).unwrap());
    assert!(!st.holds(pst_pool::BufIdx(a1)) && !st.holds(pst_pool::BufIdx(b1)));
    assert_eq!(st.read_from(0).filter(|r| r.key == b"a").count(), 1);

    // FLUSHALL: every value's buffers come back after the clear record commits.
    let mut st = st;
    let c1 = buf_of(&st, "c");
    st.clear().unwrap();
    st.commit().unwrap();
    let freed: Vec<u32> = st.take_released().iter().map(|e| e.buf().0).collect();
    assert!(freed.contains(&c1), "{freed:?}");
    scribble(&media, &h, c1);
    drop(st);
    let (st, rep) = Store::open(media, log).unwrap();
    assert!(rep.torn.is_none() && rep.corrupt.is_none(), "{rep:?}");
    assert!(st.is_empty());
}

#[test]
fn a_damaged_live_value_still_ends_the_log_and_is_reported() {
    let (media, log, h) = setup();
    let (mut st, mut land) = open(&media, &log);
    put(&mut st, &mut land, "x", "old x");
    put(&mut st, &mut land, "live", "live value");
    put(&mut st, &mut land, "x", "new x");
    st.commit().unwrap();
    let live = st.get(b"live").unwrap().extents[0].0;
    // Later records, written after the commit, say "live" was committed.
    put(&mut st, &mut land, "y", "later");
    st.commit().unwrap();
    scribble(&media, &h, live);
    drop(st);
    let err = Store::open(media.clone(), log.clone()).unwrap_err();
    assert!(
        err.to_string()
            .contains("payload checksum mismatch for seq 2"),
        "{err}"
    );
    // An operator's salvage keeps what precedes the damage: the first x only (the record that
    // superseded it is cut with the damaged one), with its payload checked and intact.
    let (st, rep) = Store::open_salvage(media, log).unwrap();
    assert!(rep.corrupt.is_some(), "{rep:?}");
    let mut v = Vec::new();
    assert!(st.read_value(b"x", &mut v).unwrap());
    assert_eq!(v, b"old x");
    assert!(st.get(b"live").is_none() && st.get(b"y").is_none());
}

#[test]
fn a_torn_live_value_is_a_torn_tail_not_corruption() {
    let (media, log, _) = setup();
    let (mut st, mut land) = open(&media, &log);
    st.put(b"k", land.land(b"committed", false).unwrap())
        .unwrap();
    st.commit().unwrap();
    // Overwritten, and the crash comes before the commit: the new payload's lines are lost
    // while its record's may have persisted. Crash many ways; never corrupt, never a wrong
    // value.
    st.put(b"k", land.land(b"uncommitted", false).unwrap())
        .unwrap();
    drop(st);
    for seed in 0..64u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let crashed = media.crash(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        });
        let (st, rep) = Store::open(crashed, log.clone()).unwrap();
        assert!(rep.corrupt.is_none(), "seed {seed}: {rep:?}");
        let mut v = Vec::new();
        assert!(st.read_value(b"k", &mut v).unwrap(), "seed {seed}");
        assert!(
            v == b"committed" || v == b"uncommitted",
            "seed {seed}: {v:?}"
        );
    }
}

/// Damage to an acknowledged live value, then a crash inside the next `EXEC`: the only
/// records proving the damaged value committed belong to the dropped group. Recovery must
/// still find them on media and refuse (found by review: the first version looked only at the
/// records it kept).
#[test]
fn damage_before_a_torn_group_is_still_corruption() {
    let (media, log, h) = setup();
    let (mut st, mut land) = open(&media, &log);
    st.put(b"live", land.land(b"acknowledged value", false).unwrap())
        .unwrap();
    st.commit().unwrap();
    let live = st.get(b"live").unwrap().extents[0].0;
    st.begin_group();
    st.put(b"g1", land.land(b"in group", false).unwrap())
        .unwrap();
    st.put(b"g2", land.land(b"in group", false).unwrap())
        .unwrap();
    let crashed = media.crash(|| 1); // every written line survives; the group never ended
    drop(st);
    scribble(&crashed, &h, live);
    let err = Store::open(crashed, log).unwrap_err();
    assert!(err.to_string().contains("says it was committed"), "{err}");
}

/// The same with the next batch's first record torn: the proof lies past the scan's end.
#[test]
fn damage_before_a_torn_record_is_still_corruption() {
    let (media, log, h) = setup();
    let (mut st, mut land) = open(&media, &log);
    st.put(b"live", land.land(b"acknowledged value", false).unwrap())
        .unwrap();
    st.commit().unwrap();
    let live = st.get(b"live").unwrap().extents[0].0;
    st.put(b"a", land.land(b"next batch a", false).unwrap())
        .unwrap();
    st.put(b"b", land.land(b"next batch b", false).unwrap())
        .unwrap();
    drop(st);
    let crashed = media.crash(|| 1);
    let first_len = pst_store::format::record_len(4, 1);
    let second = log.start + pst_store::format::SEG_HEADER as u64 + first_len as u64;
    crashed.write(second, &[0u8; 16]);
    crashed.flush(second, 16);
    crashed.barrier().unwrap();
    scribble(&crashed, &h, live);
    let err = Store::open(crashed, log).unwrap_err();
    assert!(err.to_string().contains("says it was committed"), "{err}");
}

/// Salvage after damage keeps the records before it and does not cascade further back: values
/// the cut makes current again whose buffers were reused (their successors committed after
/// the damaged record) cannot be given back, so their keys are deleted and counted; the
/// damage is reported at the damaged record. A second start is clean.
#[test]
fn salvage_keeps_what_precedes_the_damage_and_deletes_values_it_cannot_give_back() {
    let (media, log, h) = setup();
    let (mut st, mut land) = open(&media, &log);
    put(&mut st, &mut land, "keep", "intact before the damage");
    put(&mut st, &mut land, "x", "old x");
    put(&mut st, &mut land, "y", "old y");
    put(&mut st, &mut land, "live", "live value");
    st.commit().unwrap();
    let x1 = st.get(b"x").unwrap().extents[0].0;
    let y1 = st.get(b"y").unwrap().extents[0].0;
    let live = st.get(b"live").unwrap().extents[0].0;
    put(&mut st, &mut land, "x", "new x");
    put(&mut st, &mut land, "y", "new y");
    st.commit().unwrap();
    let freed: Vec<u32> = st.take_released().iter().map(|e| e.buf().0).collect();
    assert!(freed.contains(&x1) && freed.contains(&y1), "{freed:?}");
    scribble(&media, &h, x1); // reused by the pool
    scribble(&media, &h, y1);
    drop(st);
    scribble(&media, &h, live); // damaged
    let err = Store::open(media.clone(), log.clone()).unwrap_err();
    assert!(
        err.to_string()
            .contains("payload checksum mismatch for seq 4"),
        "the damaged record is named: {err}"
    );
    let (st, rep) = Store::open_salvage(media.clone(), log.clone()).unwrap();
    assert_eq!(rep.lost_values, 2, "{rep:?}");
    let mut v = Vec::new();
    assert!(st.read_value(b"keep", &mut v).unwrap());
    assert_eq!(v, b"intact before the damage");
    assert!(st.get(b"x").is_none() && st.get(b"y").is_none() && st.get(b"live").is_none());
    drop(st);
    let (st, rep) = Store::open(media, log).unwrap();
    assert!(rep.corrupt.is_none() && rep.torn.is_none(), "{rep:?}");
    assert_eq!(st.len(), 1);
}
