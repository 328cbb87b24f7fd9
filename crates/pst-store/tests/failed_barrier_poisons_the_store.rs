//! A persist barrier that fails poisons the store (fsync-gate): the commit reports it, every
//! later write and commit is refused with `Poisoned`, nothing after the failure is ever
//! acknowledged — and what was committed before it survives a crash and a reopen.

use pst_pool::{PersistMode, SimPm};
use pst_store::sim::Landing;
use pst_store::{Store, StoreError};

#[test]
fn failed_barrier_poisons_and_committed_data_survives() {
    let (media, log) = pst_store::sim::media(512, 64, 64 << 10, PersistMode::Fsync);
    let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
    let mut land = Landing::new(media.clone());
    let mut put = |st: &mut Store<SimPm>, key: &str, val: &str| {
        st.put(key.as_bytes(), land.land(val.as_bytes(), false).unwrap())
    };
    put(&mut st, "before", "committed").unwrap();
    st.commit().unwrap();

    put(&mut st, "during", "never acknowledged").unwrap();
    media.fail_barriers(1);
    let err = st.commit().unwrap_err();
    assert!(matches!(err, StoreError::Poisoned(_)), "{err}");
    // From now on: refused, even though barriers would work again.
    assert!(matches!(
        put(&mut st, "after", "x").unwrap_err(),
        StoreError::Poisoned(_)
    ));
    assert!(matches!(st.commit().unwrap_err(), StoreError::Poisoned(_)));
    assert!(matches!(
        st.delete(b"before").unwrap_err(),
        StoreError::Poisoned(_)
    ));

    // A crash (unpersisted lines dropped) and a reopen: the committed value is there.
    drop(st);
    let crashed = media.crash(|| 0);
    let (st, rep) = Store::open(crashed, log).unwrap();
    assert!(rep.corrupt.is_none(), "{rep:?}");
    let mut v = Vec::new();
    assert!(st.read_value(b"before", &mut v).unwrap());
    assert_eq!(v, b"committed");
    assert!(
        st.get(b"after").is_none(),
        "a write refused as poisoned came back"
    );
}
