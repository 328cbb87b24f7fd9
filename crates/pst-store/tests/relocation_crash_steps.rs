//! Relocation, crash between every two steps of a move. The cleaner moves a live record
//! forward and copies its value out of a mostly dead buffer into a spare; the steps are:
//! 1. copy and new record written (`maintain`), nothing durable yet;
//! 2. the first barrier: copy and record durable, the old segment's header zeroed;
//! 3. the second barrier: the zeroed header durable, the old buffers released;
//! 4. the released buffers reused: other bytes land in them.
//!
//! After each step the media is crashed (nothing unflushed survives, everything does, and
//! random subsets of lines in between) and recovered: every committed key holds exactly its
//! value, whichever copy recovery finds, and no value fails its checksum.

use std::collections::HashMap;

use pst_pool::{Geometry, Header, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::Store;
use rand::{Rng, SeedableRng};

fn header() -> Header {
    Header::layout(Geometry {
        buf_size: 512,
        buf_count: 2048,
        log_len: 256 << 10, // 16 segments of 16 KiB
    })
    .unwrap()
    .with_salt(7)
}

fn check(media: &SimPm, kv: &HashMap<String, Vec<u8>>, ctx: &str) {
    let h = header();
    let (st, rep) = Store::open(media.clone(), h.log_off..h.log_off + h.geometry.log_len)
        .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
    assert!(rep.corrupt.is_none(), "{ctx}: {rep:?}");
    let mut v = Vec::new();
    for (k, want) in kv {
        let found = st
            .read_value(k.as_bytes(), &mut v)
            .unwrap_or_else(|e| panic!("{ctx}: {k}: {e}"));
        assert!(found, "{ctx}: {k} lost");
        assert_eq!(&v, want, "{ctx}: {k}");
    }
    assert_eq!(st.len(), kv.len(), "{ctx}");
}

fn crash_and_check(media: &SimPm, kv: &HashMap<String, Vec<u8>>, step: &str, seed: u64) {
    check(
        &media.crash(|| 0),
        kv,
        &format!("{step}, nothing unflushed survives"),
    );
    check(
        &media.crash(|| 1),
        kv,
        &format!("{step}, everything survives"),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..4 {
        check(
            &media.crash(|| rng.gen()),
            kv,
            &format!("{step}, random lines {i}"),
        );
    }
}

#[test]
fn a_crash_between_any_two_steps_of_a_move_loses_nothing() {
    let h = header();
    let media = SimPm::new(h, PersistMode::Fsync);
    let (mut st, _) =
        Store::open(media.clone(), h.log_off..h.log_off + h.geometry.log_len).unwrap();
    let mut land = Landing::new(media.clone());
    let mut kv: HashMap<String, Vec<u8>> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // 300 keys of 40 bytes, packed a dozen to a buffer; then overwrite nine in ten of them
    // (the new values land elsewhere): the first buffers are left mostly dead.
    for round in 0..2 {
        for i in 0..300 {
            if round == 1 && i % 10 == 0 {
                continue;
            }
            let k = format!("key{i:03}");
            let v: Vec<u8> = (0..40).map(|_| rng.gen()).collect();
            let ext = land.land(&v, true).unwrap();
            st.put(k.as_bytes(), ext).unwrap();
            kv.insert(k, v);
            if i % 50 == 49 {
                st.commit().unwrap();
                land.release(st.take_released());
            }
        }
        st.commit().unwrap();
    }
    for _ in 0..8 {
        let mut e = land.take_run(1).unwrap();
        st.grant_spare(e.pop().unwrap());
    }
    let mut step_seed = 0;
    let mut rotations = 0;
    while st.stats().relocations < 30 && rotations < 40 {
        let before = st.stats().relocations;
        // Step 1: the move is written, not durable.
        if !st.maintain(true).unwrap() {
            st.commit().unwrap();
            land.release(st.take_released());
            rotations += 1;
            continue;
        }
        rotations += 1;
        let moved = st.stats().relocations > before;
        step_seed += 1;
        crash_and_check(
            &media,
            &kv,
            &format!("rotation {rotations} step 1"),
            step_seed,
        );
        // Step 2: first barrier.
        st.commit().unwrap();
        step_seed += 1;
        crash_and_check(
            &media,
            &kv,
            &format!("rotation {rotations} step 2"),
            step_seed,
        );
        // Step 3: second barrier; the old segment's buffers come back.
        st.commit().unwrap();
        let released = st.take_released();
        step_seed += 1;
        crash_and_check(
            &media,
            &kv,
            &format!("rotation {rotations} step 3"),
            step_seed,
        );
        // Step 4: reuse them: other bytes land where the old copies were.
        land.release(released);
        let mut junk = Vec::new();
        while land.free_count() > 64 && junk.len() < 40 {
            junk.push(land.land(&[0xa5; 512], false).unwrap());
        }
        step_seed += 1;
        crash_and_check(
            &media,
            &kv,
            &format!("rotation {rotations} step 4"),
            step_seed,
        );
        for j in junk {
            land.release(j);
        }
        let _ = moved;
    }
    assert!(
        st.stats().relocations >= 30,
        "the cleaner must relocate: {:?}",
        st.stats()
    );
}
