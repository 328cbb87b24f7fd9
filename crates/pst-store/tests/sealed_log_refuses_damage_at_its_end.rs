//! A clean shutdown seals the log ([`Store::seal`]): a record after the final commit whose
//! durable bound covers every record before it. Damage to the last records of a sealed log is
//! then refused as corruption, where an unsealed log (a crash) must treat it as a torn tail:
//! nothing later says those records were committed.

use pst_pool::{Media, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::{format, RecordKind, Store, StoreError};

fn setup() -> (SimPm, std::ops::Range<u64>) {
    pst_store::sim::media(512, 64, 64 << 10, PersistMode::Fsync)
}

/// Three acknowledged puts (`a`, `b`, `c`, in that order), committed; sealed if asked.
fn write(media: &SimPm, log: &std::ops::Range<u64>, seal: bool) {
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut land = Landing::new(media.clone());
    for (k, v) in [("a", "value a"), ("b", "value b"), ("c", "value c")] {
        st.put(k.as_bytes(), land.land(v.as_bytes(), false).unwrap())
            .unwrap();
    }
    st.commit().unwrap();
    if seal {
        assert!(st.seal().unwrap(), "a seal was written");
    }
}

/// Where `key`'s put record lies in the log: the 8-byte aligned offset whose record magic is
/// followed, at the key's place, by the key.
fn record_of(media: &SimPm, log: &std::ops::Range<u64>, key: &[u8]) -> u64 {
    let mut bytes = vec![0u8; (log.end - log.start) as usize];
    media.read(log.start, &mut bytes);
    let at = (0..bytes.len() - format::REC_HEADER - key.len())
        .step_by(8)
        .find(|&p| {
            bytes[p..p + 4] == format::REC_MAGIC.to_le_bytes()
                && bytes[p + 22..p + 24] == (key.len() as u16).to_le_bytes()
                && &bytes[p + format::REC_HEADER..p + format::REC_HEADER + key.len()] == key
        })
        .expect("the record is in the log");
    log.start + at as u64
}

/// Flip the first byte of `key` in its record, durably (a medium error after the fact).
fn damage_key(media: &SimPm, log: &std::ops::Range<u64>, key: &[u8]) {
    let off = record_of(media, log, key) + format::REC_HEADER as u64;
    media.write(off, &[key[0] ^ 0x20]);
    media.flush(off, 1);
    media.barrier().unwrap();
}

#[test]
fn damage_to_the_last_record_of_a_sealed_log_is_refused() {
    let (media, log) = setup();
    write(&media, &log, true);
    damage_key(&media, &log, b"c");
    match Store::open(media.clone(), log.clone()) {
        Err(StoreError::Corrupt(d)) => {
            let text = d.to_string();
            assert!(text.contains("committed"), "{text}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok((_, rep)) => panic!("a damaged acknowledged record passed for a torn tail: {rep:?}"),
    }
    // The operator may still salvage: what precedes the damage is kept.
    let (st, rep) = Store::open_salvage(media, log).unwrap();
    assert!(rep.corrupt.is_some(), "{rep:?}");
    assert!(st.get(b"a").is_some() && st.get(b"b").is_some() && st.get(b"c").is_none());
}

#[test]
fn without_a_seal_the_same_damage_is_a_torn_tail() {
    // What a crash leaves cannot be told from a torn write: this is why the seal exists.
    let (media, log) = setup();
    write(&media, &log, false);
    damage_key(&media, &log, b"c");
    let (st, rep) = Store::open(media, log).unwrap();
    assert!(rep.torn.is_some() && rep.corrupt.is_none(), "{rep:?}");
    assert!(st.get(b"b").is_some() && st.get(b"c").is_none());
}

#[test]
fn a_sealed_log_reopens_intact_and_is_sealed_once_per_write() {
    let (media, log) = setup();
    write(&media, &log, true);
    let (mut st, rep) = Store::open(media.clone(), log.clone()).unwrap();
    assert!(rep.torn.is_none() && rep.corrupt.is_none(), "{rep:?}");
    assert_eq!(rep.records, 4, "three puts and the seal");
    assert_eq!(rep.live_keys, 3);
    let seals = st
        .read_from(0)
        .filter(|r| r.kind == RecordKind::Seal)
        .count();
    assert_eq!(seals, 1);
    // Nothing written since the seal: no second one.
    assert!(!st.seal().unwrap());
    // A write, then a seal again; the new seal protects the new record.
    let mut land = Landing::with_live(media.clone(), |b| st.holds(b) as u16);
    st.put(b"d", land.land(b"value d", false).unwrap()).unwrap();
    assert!(st.seal().unwrap());
    assert!(!st.seal().unwrap());
    drop(st);
    damage_key(&media, &log, b"d");
    assert!(matches!(
        Store::open(media, log),
        Err(StoreError::Corrupt(_))
    ));
}
