//! Pipelined group commit on simulated persistent memory: a commit is begun, its barrier runs
//! later (after more appends, as an io_uring `FSYNC` does while the next batch is applied), and
//! it is finished after that. Replies are modelled as an engine sends them: each carries the
//! store's dependency bound and leaves only once `durable_seq` reaches it. Crashes strike at
//! random points — commit begun and barrier not run, barrier run and commit not finished,
//! compaction and truncation in between — and every reply that left (every acknowledged write)
//! must survive with its exact bytes. Reads are checked too: a read's dependency covers the
//! record it saw (or, for an absent key, the delete that removed it).
use std::collections::{HashMap, VecDeque};

use pst_pool::{Geometry, Header, Media, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::{Store, StoreError};
use rand::{Rng, SeedableRng};

fn header() -> Header {
    Header::layout(Geometry {
        buf_size: 512,
        buf_count: 192,
        log_len: 64 << 10,
    })
    .unwrap()
}

fn log_range(h: &Header) -> std::ops::Range<u64> {
    h.log_off..h.log_off + h.geometry.log_len
}

fn recover(m: SimPm) -> (Store<SimPm>, Landing) {
    let (st, rep) = Store::open(m, log_range(&header())).expect("recovery");
    assert!(rep.corrupt.is_none(), "{rep:?}");
    let land = Landing::with_live(st.media().clone(), |b| st.holds(b) as u16);
    (st, land)
}

/// What a reply acknowledges when it leaves.
#[derive(Debug)]
enum Effect {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Read,
}

/// A commit's progress: begun, and whether its barrier has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Idle,
    Begun,
    BarrierDone,
}

fn run(seed: u64, mode: PersistMode, crashes: usize) -> (u64, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut media = SimPm::new(header(), mode);
    let (mut st, mut land) = recover(media.clone());
    let mut acked: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let (mut compactions, mut early_reads) = (0, 0);
    for c in 0..crashes {
        // Replies not sent yet, in order: (dependency, what they acknowledge).
        let mut queue: VecDeque<(u64, Effect)> = VecDeque::new();
        // The newest record affecting each key (put or delete) since recovery.
        let mut key_seq: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut commit = Commit::Idle;
        let ops = rng.gen_range(1..700);
        for _ in 0..ops {
            let key = format!("k{}", rng.gen_range(0..24)).into_bytes();
            st.take_dependency();
            match rng.gen_range(0..100) {
                0..=39 => {
                    let len = if rng.gen_bool(0.2) {
                        rng.gen_range(500..1600)
                    } else {
                        rng.gen_range(0..200)
                    };
                    let val: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    let Some(ext) = land.land(&val, rng.gen_bool(0.5)) else {
                        st.maintain(true).unwrap();
                        continue;
                    };
                    match st.put(&key, ext) {
                        Ok(seq) => {
                            let dep = st.take_dependency();
                            assert!(dep > seq, "a write's reply waits for its record");
                            key_seq.insert(key.clone(), seq);
                            queue.push_back((dep, Effect::Put(key, val)));
                        }
                        Err(StoreError::LogFull) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                40..=49 => match st.delete(&key).unwrap() {
                    Some(seq) => {
                        let dep = st.take_dependency();
                        assert!(dep > seq);
                        key_seq.insert(key.clone(), seq);
                        queue.push_back((dep, Effect::Del(key)));
                    }
                    None => {
                        let dep = st.take_dependency();
                        let need = key_seq.get(&key).map_or(0, |s| s + 1);
                        assert!(dep >= need, "a miss depends on the delete that made it");
                        queue.push_back((dep, Effect::Read));
                    }
                },
                50..=64 => {
                    let mut v = Vec::new();
                    let _ = st.read_value(&key, &mut v).unwrap();
                    let dep = st.take_dependency();
                    let need = key_seq.get(&key).map_or(0, |s| s + 1);
                    assert!(dep >= need, "a read depends on the record it saw");
                    if dep <= st.durable_seq() && st.commit_in_flight().is_some() {
                        early_reads += 1; // answered at once, with a commit in flight
                    }
                    queue.push_back((dep, Effect::Read));
                }
                65..=72 => {
                    let val: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
                    if let Some(ext) = land.land(&val, rng.gen_bool(0.5)) {
                        let _ = st.append(ext);
                    }
                }
                73..=75 => {
                    let upto = st.durable_seq().saturating_sub(rng.gen_range(0..50));
                    st.truncate_before(upto);
                }
                76..=83 => {
                    st.maintain(rng.gen_bool(0.5)).unwrap();
                }
                _ => {
                    // The commit pipeline advances one step.
                    commit = match commit {
                        Commit::Idle => match st.begin_commit().unwrap() {
                            Some(_) => Commit::Begun,
                            None => Commit::Idle,
                        },
                        Commit::Begun => {
                            assert!(matches!(st.begin_commit(), Err(StoreError::CommitInFlight)));
                            // The barrier runs now, after whatever was appended since the
                            // begin: it may make more durable than the commit promises.
                            media.barrier().unwrap();
                            Commit::BarrierDone
                        }
                        Commit::BarrierDone => {
                            st.finish_commit(Ok(())).unwrap();
                            Commit::Idle
                        }
                    };
                }
            }
            st.take_dependency();
            // Replies whose dependencies are durable leave, in order.
            while queue.front().is_some_and(|(d, _)| *d <= st.durable_seq()) {
                match queue.pop_front().expect("front").1 {
                    Effect::Put(k, v) => {
                        acked.insert(k, v);
                    }
                    Effect::Del(k) => {
                        acked.remove(&k);
                    }
                    Effect::Read => {}
                }
            }
            land.release(st.take_released());
        }
        // Unsent replies acknowledge nothing: any of their effects may or may not survive.
        let mut maybe: HashMap<Vec<u8>, Vec<Option<Vec<u8>>>> = HashMap::new();
        for (_, e) in &queue {
            let (k, v) = match e {
                Effect::Put(k, v) => (k, Some(v.clone())),
                Effect::Del(k) => (k, None),
                Effect::Read => continue,
            };
            maybe.entry(k.clone()).or_default().push(v);
        }
        compactions += st.stats().compactions;
        let crashed = media.crash(|| rng.gen());
        let ctx = format!("seed {seed} mode {mode} crash {c} (commit {commit:?})");
        let (st2, land2) = recover(crashed.clone());
        let mut got = Vec::new();
        for (k, v) in &acked {
            let present = st2.read_value(k, &mut got).unwrap();
            let ok = (present && &got == v)
                || maybe.get(k).is_some_and(|alts| {
                    alts.iter().any(|a| match a {
                        Some(a) => present && &got == a,
                        None => !present,
                    })
                });
            assert!(ok, "{ctx}: acknowledged key {k:?} lost or wrong");
        }
        for k in st2.keys() {
            let mut v = Vec::new();
            st2.read_value(k, &mut v)
                .unwrap_or_else(|e| panic!("{ctx}: corrupt value for {k:?}: {e}"));
            let known = acked.get(k) == Some(&v)
                || maybe
                    .get(k)
                    .is_some_and(|alts| alts.iter().any(|a| a.as_ref() == Some(&v)));
            assert!(known, "{ctx}: key {k:?} holds bytes never written");
        }
        // The recovered state is the new truth.
        acked.clear();
        for k in st2.keys() {
            let mut v = Vec::new();
            st2.read_value(k, &mut v).unwrap();
            acked.insert(k.to_vec(), v);
        }
        st = st2;
        land = land2;
        media = crashed;
        land.close_open();
    }
    (compactions, early_reads)
}

#[test]
fn fsync_crashes_with_commits_in_flight() {
    let (c, early): (Vec<u64>, Vec<u64>) =
        (0..80).map(|seed| run(seed, PersistMode::Fsync, 4)).unzip();
    assert!(
        c.iter().sum::<u64>() > 100,
        "the workload must compact with commits in flight"
    );
    assert!(
        early.iter().sum::<u64>() > 100,
        "reads of committed data must be answerable while a commit is in flight"
    );
}

#[test]
fn pmem_crashes_with_commits_in_flight() {
    let c: u64 = (500..580)
        .map(|seed| run(seed, PersistMode::Pmem, 4).0)
        .sum();
    assert!(c > 100, "the workload must compact ({c})");
}

/// The gating contract in one deterministic story: a write's reply waits for the commit that
/// covers it, a read of committed data does not wait for a commit in flight, a read of the
/// uncommitted write (or of a key whose delete is uncommitted) waits for its commit, and a
/// commit whose barrier fails never lets those replies go.
#[test]
fn replies_wait_only_for_what_they_depend_on() {
    let h = header();
    let media = SimPm::new(h, PersistMode::Fsync);
    let (mut st, _) = Store::open(media.clone(), log_range(&h)).unwrap();
    let mut land = Landing::new(media.clone());
    let mut put = |st: &mut Store<SimPm>, k: &str, v: &str| {
        st.put(k.as_bytes(), land.land(v.as_bytes(), false).unwrap())
            .unwrap();
        st.take_dependency()
    };
    put(&mut st, "old", "committed");
    put(&mut st, "gone", "committed, then deleted");
    st.commit().unwrap();
    let durable = st.durable_seq();

    let w = put(&mut st, "new", "in flight");
    st.delete(b"gone").unwrap();
    let d = st.take_dependency();
    assert!(w > durable && d > durable);
    let bound = st.begin_commit().unwrap().expect("something to commit");
    assert!(bound >= d);
    // Batch N+1 while the barrier runs.
    let late = put(&mut st, "later", "next commit");
    assert!(st.get(b"old").is_some());
    let r_old = st.take_dependency();
    assert!(
        r_old <= st.durable_seq(),
        "committed data is answered at once"
    );
    assert!(st.get(b"new").is_some());
    assert!(
        st.take_dependency() > st.durable_seq(),
        "waits for its commit"
    );
    assert!(st.get(b"gone").is_none());
    assert!(
        st.take_dependency() > st.durable_seq(),
        "a miss waits for the delete"
    );
    assert_eq!(st.take_dependency(), 0, "taking resets");

    media.barrier().unwrap();
    st.finish_commit(Ok(())).unwrap();
    assert!(st.durable_seq() >= w && st.durable_seq() >= d);
    assert!(
        st.durable_seq() < late,
        "the later write is the next commit's"
    );

    // A failed barrier: the reply of `later` never becomes sendable, writes are refused.
    st.begin_commit().unwrap().expect("later is pending");
    let e = st
        .finish_commit(Err(pst_pool::PersistError::Sync("injected".into())))
        .unwrap_err();
    assert!(matches!(e, StoreError::Poisoned(_)));
    assert!(st.is_poisoned());
    assert!(st.durable_seq() < late);
    assert!(matches!(st.commit(), Err(StoreError::Poisoned(_))));
}
