//! A log full of live data can always be emptied: fill it with puts until `LogFull` (a
//! 16 MiB pool's log: 16 segments of 64 KiB, 100-byte values), then delete the keys — in
//! random order and in the order they were written, one per batch and many per batch, with
//! and without a restart on the full log. One delete per batch is never refused; with many
//! per batch a refused one is retried after the next batch's maintenance and refusals stay
//! under 1%; once half the keys are gone new puts are accepted again.
//!
//! The regressions: the cleaner compacted an oldest segment as soon as it held one dead
//! record, so deletes in write order moved each segment's remaining keys to the head (where
//! they were deleted next) and used up the free segment deletes need — `DEL` was refused from
//! the second delete on; and a compaction that ran out of log space part-way failed with
//! half its records moved.

use pst_pool::{Geometry, Header, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::{Store, StoreError};
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn header() -> Header {
    Header::layout(Geometry {
        buf_size: 512,
        buf_count: 8192,
        log_len: 1 << 20, // a 16 MiB pool's log: 16 segments of 64 KiB
    })
    .unwrap()
}

fn open(media: SimPm) -> (Store<SimPm>, Landing) {
    let h = header();
    let (st, rep) = Store::open(media, h.log_off..h.log_off + h.geometry.log_len).unwrap();
    assert!(rep.corrupt.is_none() && rep.torn.is_none(), "{rep:?}");
    let land = Landing::with_live(st.media().clone(), |b| st.holds(b) as u16);
    (st, land)
}

fn end_batch(st: &mut Store<SimPm>, land: &mut Landing) {
    st.maintain(land.free_count() < 64).unwrap();
    st.commit().unwrap();
    land.release(st.take_released());
}

/// Fill until the first refusal; returns the keys stored.
fn fill(st: &mut Store<SimPm>, land: &mut Landing, batch: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0.. {
        let key = format!("key:{i:06}");
        let ext = land.land(&[b'v'; 100], true).unwrap();
        match st.put(key.as_bytes(), ext) {
            Ok(_) => keys.push(key),
            Err(StoreError::LogFull) => break,
            Err(e) => panic!("{e}"),
        }
        if i % batch == batch - 1 {
            end_batch(st, land);
        }
    }
    end_batch(st, land);
    keys
}

/// Delete every key in random order, `batch` per commit; returns how many deletes were
/// refused (and retried). Half-way, puts must be accepted again.
fn empty(
    st: &mut Store<SimPm>,
    land: &mut Landing,
    mut keys: Vec<String>,
    batch: usize,
    shuffle: bool,
) -> u64 {
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64);
        keys.shuffle(&mut rng);
    }
    let half = keys.len() / 2;
    let (mut refused, mut rounds, mut deleted) = (0u64, 0u64, 0usize);
    let mut pending: std::collections::VecDeque<String> = keys.into();
    while let Some(k) = pending.pop_front() {
        match st.delete(k.as_bytes()) {
            Ok(Some(_)) => deleted += 1,
            Ok(None) => panic!("{k} was stored"),
            Err(StoreError::LogFull) => {
                refused += 1;
                pending.push_front(k);
                end_batch(st, land);
                rounds += 1;
                assert!(
                    rounds < 10_000,
                    "deletes stay refused: the log cannot be emptied"
                );
                continue;
            }
            Err(e) => panic!("{e}"),
        }
        if deleted % batch == 0 {
            end_batch(st, land);
        }
        if deleted == half {
            // Half the keys are gone: after the maintenance of a few batches, writes succeed.
            let mut ok = false;
            for _ in 0..st.stats().segments * 2 {
                let ext = land.land(b"new value", true).unwrap();
                match st.put(b"fresh", ext) {
                    Ok(_) => {
                        ok = true;
                        break;
                    }
                    Err(StoreError::LogFull) => end_batch(st, land),
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(ok, "half the keys deleted and puts are still refused");
            st.delete(b"fresh").unwrap();
        }
    }
    end_batch(st, land);
    assert_eq!(st.stats().live_keys, 0);
    refused
}

#[test]
fn a_full_log_empties_one_delete_per_batch() {
    let media = SimPm::new(header(), PersistMode::Fsync);
    let (mut st, mut land) = open(media);
    let keys = fill(&mut st, &mut land, 1);
    assert!(keys.len() > 1000, "{}", keys.len());
    let refused = empty(&mut st, &mut land, keys, 1, true);
    assert_eq!(refused, 0, "one delete per batch is never refused");
}

#[test]
fn a_full_log_empties_many_deletes_per_batch() {
    let media = SimPm::new(header(), PersistMode::Fsync);
    let (mut st, mut land) = open(media);
    let keys = fill(&mut st, &mut land, 64);
    let n = keys.len() as u64;
    let refused = empty(&mut st, &mut land, keys, 64, true);
    assert!(refused * 100 < n, "{refused} of {n} deletes refused");
}

#[test]
fn a_full_log_empties_after_a_restart() {
    let media = SimPm::new(header(), PersistMode::Fsync);
    let (mut st, mut land) = open(media.clone());
    let keys = fill(&mut st, &mut land, 16);
    drop(st);
    drop(land);
    // A restart on the full log (what `kill -9` leaves, everything committed).
    let (mut st, mut land) = open(media);
    assert_eq!(st.stats().live_keys, keys.len() as u64);
    let n = keys.len() as u64;
    let refused = empty(&mut st, &mut land, keys, 16, true);
    assert!(refused * 100 < n, "{refused} of {n} deletes refused");
}

/// A clean stop on the full log seals it (a seal never takes a segment new data could not
/// take), and after the restart the log still empties: the seal left the deletes their room.
#[test]
fn a_full_log_empties_after_a_clean_stop() {
    for batch in [1, 16] {
        let media = SimPm::new(header(), PersistMode::Fsync);
        let (mut st, mut land) = open(media.clone());
        let keys = fill(&mut st, &mut land, batch);
        let _ = st.seal().unwrap();
        drop(st);
        drop(land);
        let (mut st, mut land) = open(media);
        assert_eq!(st.stats().live_keys, keys.len() as u64);
        let n = keys.len() as u64;
        let refused = empty(&mut st, &mut land, keys, batch, false);
        assert!(
            refused * 100 < n.max(100),
            "{batch}: {refused} of {n} deletes refused"
        );
        if batch == 1 {
            assert_eq!(refused, 0, "one delete per batch is never refused");
        }
    }
}

/// Deletes in the order the keys were written: the oldest segments empty first, while the
/// tombstones fill the head.
#[test]
fn a_full_log_empties_in_write_order_after_a_restart() {
    for batch in [1, 16, 100] {
        for shuffle in [false, true] {
            let media = SimPm::new(header(), PersistMode::Fsync);
            let (mut st, mut land) = open(media.clone());
            let keys = fill(&mut st, &mut land, 100);
            drop(st);
            drop(land);
            let (mut st, mut land) = open(media);
            let n = keys.len() as u64;
            let refused = empty(&mut st, &mut land, keys, batch, shuffle);
            match batch {
                1 => assert_eq!(
                    refused, 0,
                    "shuffled {shuffle}: one delete per batch refused"
                ),
                _ => assert!(
                    refused * 100 < n,
                    "batch {batch}, shuffled {shuffle}: {refused} of {n} deletes refused"
                ),
            }
        }
    }
}
