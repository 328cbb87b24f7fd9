//! The log and the values share one space (pool format v2): with small values the log region
//! fills long before the buffers do, so the log borrows slots of the data region; once the
//! keys are deleted the cleaner empties those slots and the log gives them back; a crash at
//! any point recovers every committed key, from borrowed slots too, with buffer accounting
//! exact; slots borrowed again after holding values recover cleanly (their earlier lives'
//! records never come back).

use std::collections::HashMap;

use pst_pool::{BufIdx, Geometry, Header, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::{Store, StoreError};
use rand::{Rng, SeedableRng};

const BUFS: u32 = 8192;

fn header() -> Header {
    Header::layout(Geometry {
        buf_size: 512,
        buf_count: BUFS,    // 4 MiB of buffers
        log_len: 256 << 10, // 16 segments of 16 KiB: slots of 32 buffers
    })
    .unwrap()
    .with_salt(0x5eed_cafe)
}

fn open(media: SimPm) -> (Store<SimPm>, Landing) {
    let h = header();
    let (st, rep) = Store::open(media, h.log_off..h.log_off + h.geometry.log_len).unwrap();
    assert!(rep.corrupt.is_none(), "{rep:?}");
    let land = Landing::with_live(st.media().clone(), |b| st.holds(b) as u16);
    (st, land)
}

/// What a server does at the end of a batch: clean, commit, take released buffers back, and
/// lend the log a slot while it wants one and a sixteenth of the buffers stays free.
fn end_batch(st: &mut Store<SimPm>, land: &mut Landing) -> usize {
    st.maintain(land.free_count() < BUFS as usize / 8).unwrap();
    st.commit().unwrap();
    land.release(st.take_released());
    let mut granted = 0;
    while let Some(k) = st.segment_wanted() {
        if (land.free_count().saturating_sub(2 * k as usize)) * 16 < BUFS as usize {
            break;
        }
        let Some(run) = land.take_run(k) else { break };
        st.grant_segment(run).expect("a whole aligned slot");
        granted += 1;
    }
    while st.spare_wanted() && land.free_count() * 32 > BUFS as usize {
        let Some(mut e) = land.take_run(1) else { break };
        st.grant_spare(e.pop().expect("one"));
    }
    granted
}

/// Put 100-byte values until the log or the pool refuses; returns the keys and values.
fn fill(
    st: &mut Store<SimPm>,
    land: &mut Landing,
    from: usize,
    seed: u8,
) -> HashMap<String, Vec<u8>> {
    let mut kv = HashMap::new();
    for i in from.. {
        let key = format!("key:{i:07}");
        let val: Vec<u8> = (0..100u32)
            .map(|j| (i as u32 * 7 + j) as u8 ^ seed)
            .collect();
        // The landing zone keeps a sixteenth free, like the server's admission.
        if land.free_count() * 16 < BUFS as usize {
            break;
        }
        let Some(ext) = land.land(&val, true) else {
            break;
        };
        match st.put(key.as_bytes(), ext) {
            Ok(_) => {
                kv.insert(key, val);
            }
            Err(StoreError::LogFull) => break,
            Err(e) => panic!("{e}"),
        }
        if i % 50 == 49 {
            end_batch(st, land);
        }
    }
    end_batch(st, land);
    kv
}

fn check(st: &Store<SimPm>, kv: &HashMap<String, Vec<u8>>) {
    let mut v = Vec::new();
    for (k, want) in kv {
        assert!(st.read_value(k.as_bytes(), &mut v).unwrap(), "{k} lost");
        assert_eq!(&v, want, "{k}");
    }
    assert_eq!(st.len(), kv.len());
    // Accounting: held buffers are those named by live records plus the borrowed slots'.
    let named: std::collections::HashSet<u32> = st
        .read_from(0)
        .flat_map(|r| r.extents.iter().map(|e| e.0))
        .collect();
    let own: std::collections::HashSet<u32> = st.own_buffers().into_iter().collect();
    assert_eq!(named.union(&own).count() as u64, st.stats().buffers_held);
    for b in named {
        assert!(st.holds(BufIdx(b)));
    }
}

#[test]
fn small_values_fill_the_pool_not_the_log_region_and_slots_come_back() {
    let media = SimPm::new(header(), PersistMode::Fsync);
    let (mut st, mut land) = open(media.clone());
    let kv = fill(&mut st, &mut land, 0, 0);
    let s = st.stats();
    // The log region alone holds about 3,000 such records (16 KiB segments of ~80-byte
    // records, three kept free); the buffers about 38,000 values.
    assert!(kv.len() > 15_000, "{} keys", kv.len());
    assert!(s.borrowed_segments > 10, "{s:?}");
    let region_only = 16 * (16 << 10) / 80;
    assert!(kv.len() > 4 * region_only, "{} keys", kv.len());

    // Crash with everything committed: every key recovers, from borrowed slots too.
    let crashed = media.crash(|| 0);
    drop(st);
    let (mut st, mut land) = open(crashed.clone());
    check(&st, &kv);
    // Slots in use come back as the log's; borrowed ones not yet written go back to the
    // buffers (a few: the log asks for slots before it runs out).
    let back = st.stats().borrowed_segments;
    assert!(
        back <= s.borrowed_segments && back + 6 > s.borrowed_segments,
        "{back} {s:?}"
    );

    // Delete everything: the cleaner empties the borrowed slots and they go back.
    let mut keys: Vec<_> = kv.keys().cloned().collect();
    keys.sort();
    let (mut i, mut refused) = (0, 0);
    while i < keys.len() {
        match st.delete(keys[i].as_bytes()) {
            Ok(_) => i += 1,
            Err(StoreError::LogFull) => {
                refused += 1;
                assert!(refused < 10_000, "deletes stay refused");
                end_batch(&mut st, &mut land);
                continue;
            }
            Err(e) => panic!("{e}"),
        }
        if i % 50 == 0 {
            end_batch(&mut st, &mut land);
        }
    }
    for _ in 0..400 {
        end_batch(&mut st, &mut land);
    }
    let s2 = st.stats();
    assert_eq!(s2.live_keys, 0);
    assert!(
        s2.borrowed_segments <= 2,
        "slots not given back: {s2:?} (was {})",
        s.borrowed_segments
    );
    assert!(
        land.free_count() > BUFS as usize * 9 / 10,
        "{} of {BUFS} buffers free",
        land.free_count()
    );

    // Fill again (slots borrowed anew, over buffers that held values) and crash at random
    // points mid-batch: committed keys recover exactly.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let kv2 = fill(&mut st, &mut land, 1_000_000, 0x55);
    assert!(st.stats().borrowed_segments > 10);
    let crashed = crashed.clone();
    drop(st);
    let (st, _) = open(crashed.crash(|| rng.gen()));
    check(&st, &kv2);
}

/// Random crash points while the log borrows and gives back slots under overwrites and
/// deletes of a key set that fills most of the pool.
#[test]
fn random_crashes_while_borrowing() {
    for seed in 0..6u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut media = SimPm::new(header(), PersistMode::Fsync);
        let (mut st, mut land) = open(media.clone());
        let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
        for round in 0..4 {
            let mut batch: Vec<(String, Option<Vec<u8>>)> = Vec::new();
            for op in 0..rng.gen_range(2_000..12_000) {
                let key = format!("k{}", rng.gen_range(0..20_000));
                if rng.gen_bool(0.8) {
                    let val: Vec<u8> = (0..rng.gen_range(1..180)).map(|_| rng.gen()).collect();
                    if land.free_count() * 16 < BUFS as usize {
                        end_batch(&mut st, &mut land);
                        continue;
                    }
                    let Some(ext) = land.land(&val, true) else {
                        continue;
                    };
                    match st.put(key.as_bytes(), ext) {
                        Ok(_) => batch.push((key, Some(val))),
                        Err(StoreError::LogFull) => {}
                        Err(e) => panic!("{e}"),
                    }
                } else if let Ok(Some(_)) = st.delete(key.as_bytes()) {
                    batch.push((key, None));
                }
                if op % 40 == 39 {
                    end_batch(&mut st, &mut land);
                    for (k, v) in batch.drain(..) {
                        match v {
                            Some(v) => acked.insert(k, v),
                            None => acked.remove(&k),
                        };
                    }
                }
            }
            // Crash mid-batch: the batch's writes may or may not survive; committed ones must.
            let pending: HashMap<String, Option<Vec<u8>>> = batch.into_iter().collect();
            media = media.crash(|| rng.gen());
            drop(st);
            (st, land) = open(media.clone());
            let mut v = Vec::new();
            for (k, want) in &acked {
                let present = st.read_value(k.as_bytes(), &mut v).unwrap();
                let ok = (present && &v == want)
                    || pending.get(k).is_some_and(|p| match p {
                        Some(p) => present && &v == p,
                        None => !present,
                    });
                assert!(ok, "seed {seed} round {round}: {k} lost or wrong");
            }
            acked.clear();
            let keys: Vec<Vec<u8>> = st.keys().map(<[u8]>::to_vec).collect();
            for k in keys {
                st.read_value(&k, &mut v).unwrap();
                acked.insert(String::from_utf8(k).unwrap(), v.clone());
            }
        }
    }
}
