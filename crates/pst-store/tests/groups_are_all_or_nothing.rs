//! Atomic groups (a Redis `EXEC`): crash at random points of writing a group of puts and
//! deletes on simulated persistent memory — before it ends, after it ends but before the
//! commit, after the commit — with a random subset of the unpersisted lines surviving. After
//! recovery the group is all there or not at all, the log takes new writes, and a second
//! recovery agrees.

use pst_pool::{Geometry, Header, PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::Store;
use rand::{Rng, SeedableRng};

fn header() -> Header {
    Header::layout(Geometry {
        buf_size: 512,
        buf_count: 256,
        log_len: 64 << 10,
    })
    .unwrap()
}

fn value(st: &Store<SimPm>, k: &str) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    st.read_value(k.as_bytes(), &mut v)
        .expect("no value fails its checksum")
        .then_some(v)
}

#[test]
fn a_group_is_recovered_whole_or_not_at_all() {
    let h = header();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut whole, mut none) = (0, 0);
    for round in 0..400 {
        let mode = if round % 2 == 0 {
            PersistMode::Pmem
        } else {
            PersistMode::Fsync
        };
        let media = SimPm::new(h, mode);
        let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
        let mut land = Landing::new(media.clone());
        let n = rng.gen_range(2..7);
        // Committed before the group: old values of every key, and one key to delete.
        for i in 0..n {
            let v = format!("old{i}");
            st.put(
                format!("k{i}").as_bytes(),
                land.land(v.as_bytes(), false).unwrap(),
            )
            .unwrap();
        }
        st.commit().unwrap();
        // The group: new values for k0..k(n-1) but the last, which is deleted; several
        // records per key sometimes (overwrites inside the group).
        let stop = rng.gen_range(0..=n + 2); // where the crash comes: n+1 = after end, n+2 = after commit
        st.begin_group();
        let mut crashed = None;
        for i in 0..n {
            if stop == i {
                crashed = Some(media.crash(|| rng.gen()));
                break;
            }
            let k = format!("k{i}");
            if i == n - 1 {
                st.delete(k.as_bytes()).unwrap();
            } else {
                for _ in 0..rng.gen_range(1..3) {
                    let v = format!("new{i}");
                    st.put(
                        k.as_bytes(),
                        land.land(v.as_bytes(), rng.gen_bool(0.5)).unwrap(),
                    )
                    .unwrap();
                }
            }
        }
        if crashed.is_none() {
            st.end_group();
            if stop == n + 2 {
                st.commit().unwrap();
            }
            crashed = Some(media.crash(|| rng.gen()));
        }
        let crashed = crashed.unwrap();
        drop(st);
        let (mut st, report) = Store::open(crashed.clone(), log.clone())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let new: Vec<bool> = (0..n)
            .map(|i| {
                let v = value(&st, &format!("k{i}"));
                if i == n - 1 {
                    v.is_none()
                } else {
                    v == Some(format!("new{i}").into_bytes())
                }
            })
            .collect();
        let olds =
            (0..n).all(|i| value(&st, &format!("k{i}")) == Some(format!("old{i}").into_bytes()));
        assert!(
            new.iter().all(|x| *x) || olds,
            "round {round} (crash at {stop} of {n}): group partly recovered {new:?}; {report:?}"
        );
        if stop == n + 2 {
            assert!(
                new.iter().all(|x| *x),
                "round {round}: a committed group is all there"
            );
        }
        if stop < n {
            assert!(olds, "round {round}: an unended group is not there");
        }
        if new.iter().all(|x| *x) {
            whole += 1;
        } else {
            none += 1;
        }
        let first: Vec<Option<Vec<u8>>> = (0..n).map(|i| value(&st, &format!("k{i}"))).collect();
        // The log goes on: a new write commits and survives another recovery.
        let mut land = Landing::with_live(crashed.clone(), |b| st.holds(b) as u16);
        st.put(b"after", land.land(b"x", false).unwrap()).unwrap();
        st.commit().unwrap();
        let again = crashed.crash(|| rng.gen());
        drop(st);
        let (st2, _) = Store::open(again, log.clone()).unwrap();
        assert_eq!(value(&st2, "after"), Some(b"x".to_vec()), "round {round}");
        for (i, want) in first.iter().enumerate() {
            assert_eq!(
                &value(&st2, &format!("k{i}")),
                want,
                "round {round}: second recovery agrees"
            );
        }
    }
    assert!(
        whole > 30 && none > 30,
        "both outcomes were exercised ({whole} whole, {none} none)"
    );
}

/// A group its writer never ended (a panic inside EXEC) is ended by the next commit, so the
/// records written after it by others are not flagged and dropped by recovery.
#[test]
fn commit_ends_an_abandoned_group() {
    let h = header();
    let log = h.log_off..h.log_off + h.geometry.log_len;
    let media = SimPm::new(h, PersistMode::Pmem);
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut land = Landing::new(media.clone());
    st.begin_group();
    st.put(b"in-group", land.land(b"a", false).unwrap())
        .unwrap();
    // The writer is gone; another writer carries on and commits.
    st.put(b"other", land.land(b"b", false).unwrap()).unwrap();
    st.commit().unwrap();
    assert!(!st.in_group());
    let crashed = media.crash(|| 0);
    drop(st);
    let (st, report) = Store::open(crashed, log).unwrap();
    assert_eq!(report.dropped_group, 0, "{report:?}");
    assert_eq!(value(&st, "other"), Some(b"b".to_vec()));
    assert_eq!(value(&st, "in-group"), Some(b"a".to_vec()));
}
