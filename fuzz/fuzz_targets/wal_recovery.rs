//! Log recovery over damaged and arbitrary log bytes.
//!
//! The input drives a real store on simulated persistent memory (puts, deletes, group commits, seals,
//! compaction, the log borrowing slots of the data region and giving them back), then optionally crashes it (a random subset of unpersisted cache lines
//! survives), then damages the log region: bit flips, arbitrary bytes, and valid log bytes
//! copied to other places (stale segment headers and records where they do not belong).
//!
//! Checked, always: opening, inspecting and salvaging never panic; `inspect` (read-only) and
//! `open` agree; salvage always yields a store; every recovered value reads back or fails its
//! checksum cleanly; a recovered store accepts a new committed put that survives a reopen.
//! Without damage (crash or not, pmem or fsync): recovery starts, and the recovered state is
//! exactly the state after some prefix of the operations that includes every committed one.
#![no_main]
// SAFETY (every `Extent::from_raw` here): the test allocates these buffers itself (a fresh
// pool or simulated PM, no port) and hands each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pst_pool::{BufAlloc, Geometry, Header, Media, PersistMode, SimPm};
use pst_ring::Extent;
use pst_store::Store;

const BUF: u32 = 512;
const BUFS: u32 = 64;
const KEYS: u8 = 12;

#[derive(Debug, Arbitrary)]
enum StoreOp {
    Put { key: u8, len: u16, fill: u8 },
    Delete { key: u8 },
    Commit,
    Maintain { pressure: bool },
    /// Lend the log a slot of the data region when it wants one (format v2), and spares for
    /// relocated values.
    Grow,
    /// A clean stop's seal (writes may follow it).
    Seal,
}

#[derive(Debug, Arbitrary)]
enum Damage {
    /// XOR one byte of the log region.
    Flip { off: u16, mask: u8 },
    /// Overwrite log bytes with arbitrary ones.
    Raw { off: u16, bytes: Vec<u8> },
    /// Copy log bytes to another place in the log (valid-looking data out of place).
    Copy { from: u16, to: u16, len: u16 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    fsync: bool,
    ops: Vec<StoreOp>,
    crash: Option<u64>,
    damage: Vec<Damage>,
}

/// Logical state after the operations with sequence number <= `last`.
fn state_at(history: &[(u64, u8, Option<Vec<u8>>)], last: u64) -> BTreeMap<u8, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (seq, k, v) in history.iter().filter(|h| h.0 <= last) {
        let _ = seq;
        match v {
            Some(v) => m.insert(*k, v.clone()),
            None => m.remove(k),
        };
    }
    m
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fuzz_target!(|input: Input| {
    let h = Header::layout(Geometry {
        buf_size: BUF,
        buf_count: BUFS,
        log_len: 64 << 10,
    })
    .unwrap();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let mode = if input.fsync {
        PersistMode::Fsync
    } else {
        PersistMode::Pmem
    };
    let media = SimPm::new(h, mode);
    let (mut st, _) = Store::open(media.clone(), log.clone()).expect("a new log opens");
    let mut alloc = BufAlloc::new(0, BUFS);
    let mut history: Vec<(u64, u8, Option<Vec<u8>>)> = Vec::new();
    let mut ops = 0;
    for op in input.ops.iter().take(300) {
        ops += 1;
        let r = match *op {
            StoreOp::Put { key: k, len, fill } => {
                let k = k % KEYS;
                let len = (len % 1200) as usize;
                let need = len.div_ceil(BUF as usize).max(1);
                if alloc.free_count() < need {
                    continue; // back-pressure: the server would wait for a commit
                }
                let value: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let mut exts = Vec::new();
                for c in 0..need {
                    let b = alloc.alloc().unwrap();
                    let part =
                        &value[(c * BUF as usize).min(len)..((c + 1) * BUF as usize).min(len)];
                    media.write(h.data_off + b.0 as u64 * BUF as u64, part);
                    exts.push(unsafe { Extent::from_raw(b, 0, part.len() as u32) });
                }
                st.put(&key(k), exts)
                    .map(|seq| history.push((seq, k, Some(value))))
            }
            StoreOp::Delete { key: k } => {
                let k = k % KEYS;
                st.delete(&key(k)).map(|s| {
                    if let Some(seq) = s {
                        history.push((seq, k, None))
                    }
                })
            }
            StoreOp::Commit => st.commit().map(|_| ()),
            StoreOp::Seal => st.seal().map(|_| ()),
            StoreOp::Maintain { pressure } => st.maintain(pressure).map(|_| ()),
            StoreOp::Grow => {
                if let Some(first) = st.segment_wanted().and_then(|k| {
                    alloc.alloc_run(k).map(|f| (f.0..f.0 + k))
                }) {
                    let run = first
                        .map(|b| unsafe { Extent::from_raw(pst_pool::BufIdx(b), 0, BUF) })
                        .collect();
                    st.grant_segment(run).expect("a whole aligned slot");
                }
                // Spares for the values the cleaner relocates (a few; the pool is small).
                while st.spare_wanted() && alloc.free_count() > 16 && st.stats().spare_buffers < 4 {
                    let b = alloc.alloc().expect("counted");
                    st.grant_spare(unsafe { Extent::from_raw(b, 0, BUF) });
                }
                Ok(())
            }
        };
        if r.is_err() {
            break; // log full: the server would refuse the write
        }
        for e in st.take_released() {
            alloc.release(e.into_raw().0).unwrap();
        }
    }
    let durable = st.durable_seq();
    drop(st);

    let media = match input.crash {
        Some(seed) => {
            let mut x = seed | 1;
            media.crash(move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
        }
        None => media,
    };
    let span = h.geometry.log_len as usize;
    for d in input.damage.iter().take(8) {
        match d {
            Damage::Flip { off, mask } => {
                let at = log.start + (*off as usize % span) as u64;
                let mut b = [0u8];
                media.read(at, &mut b);
                media.write(at, &[b[0] ^ mask]);
            }
            Damage::Raw { off, bytes } => {
                let at = *off as usize % span;
                let n = bytes.len().min(span - at);
                media.write(log.start + at as u64, &bytes[..n]);
            }
            Damage::Copy { from, to, len } => {
                let (from, to) = (*from as usize % span, *to as usize % span);
                let n = (*len as usize).min(span - from).min(span - to);
                let mut tmp = vec![0u8; n];
                media.read(log.start + from as u64, &mut tmp);
                media.write(log.start + to as u64, &tmp);
            }
        }
    }
    let damaged = !input.damage.is_empty();

    // An exact copy of the media (every line, persisted or not) for the read-only pass.
    let copy = media.crash(|| 1);
    let inspected = Store::inspect(copy, log.clone());
    let opened = Store::open(media.clone(), log.clone());
    // `inspect` reports what `open` refuses: corruption of acknowledged records.
    match (&inspected, &opened) {
        (Ok((_, a)), Ok((_, b))) => {
            assert!(
                a.corrupt.is_none(),
                "open accepted what inspect calls corrupt"
            );
            assert_eq!(
                (a.records, a.last_seq, a.live_keys),
                (b.records, b.last_seq, b.live_keys)
            );
        }
        (Ok((_, a)), Err(e)) => assert!(
            a.corrupt.is_some(),
            "open refused ({e}) what inspect found clean: {a:?}"
        ),
        (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("inspect failed ({e}) but open succeeded"),
    }
    let (mut st, rep) = match opened {
        Ok(x) => x,
        Err(e) => {
            assert!(damaged, "undamaged log refused after {ops} ops: {e}");
            Store::open_salvage(media.clone(), log.clone()).expect("salvage always starts")
        }
    };

    if std::env::var_os("PST_FUZZ_DEBUG").is_some() {
        eprintln!("recovered: {rep:?}");
    }
    let mut v = Vec::new();
    if !damaged {
        assert!(
            rep.last_seq + 1 >= durable,
            "committed records lost: recovered to {} but {} was durable",
            rep.last_seq,
            durable
        );
        let want = state_at(&history, rep.last_seq);
        for k in 0..KEYS {
            let found = st
                .read_value(&key(k), &mut v)
                .expect("undamaged value verifies");
            match want.get(&k) {
                Some(w) => {
                    assert!(found, "key {k} lost (last_seq {})", rep.last_seq);
                    assert_eq!(&v, w, "key {k} has a wrong value");
                }
                None => assert!(!found, "key {k} resurrected (last_seq {})", rep.last_seq),
            }
        }
    } else {
        for k in 0..KEYS {
            let _ = st.read_value(&key(k), &mut v);
        }
    }

    // The recovered store takes a new write that survives a clean reopen.
    let mut alloc = BufAlloc::with_live(0, BUFS, |b| st.holds(b) as u16);
    let fresh = b"after-recovery";
    let b = loop {
        if let Some(b) = alloc.alloc() {
            break Some(b);
        }
        match st.maintain(true).and_then(|_| st.commit()) {
            Ok(_) => {
                let rel = st.take_released();
                if rel.is_empty() {
                    break None;
                }
                for e in rel {
                    alloc.release(e.into_raw().0).unwrap();
                }
            }
            Err(_) => break None,
        }
    };
    let Some(b) = b else { return };
    media.write(h.data_off + b.0 as u64 * BUF as u64, fresh);
    let put = st
        .put(
            b"fresh",
            vec![unsafe { Extent::from_raw(b, 0, fresh.len() as u32) }],
        )
        .and_then(|_| st.commit());
    if put.is_err() {
        return; // log full of live data: refused cleanly
    }
    drop(st);
    let (st, _) = Store::open(media.clone(), log.clone()).expect("reopen after recovery");
    assert!(
        st.read_value(b"fresh", &mut v).unwrap(),
        "write after recovery lost"
    );
    assert_eq!(&v[..], fresh);
});
