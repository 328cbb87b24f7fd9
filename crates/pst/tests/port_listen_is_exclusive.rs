//! `Port::listen` owns its address: a second listen on it fails with `EADDRINUSE` instead of
//! silently sharing it (a second instance of a service on the same address). Sharing is an
//! explicit choice: `Port::listen_reuse_port` on both.
use std::sync::Arc;

use pst::{Geometry, PersistMode, Pool, Port, PortConfig};

fn port() -> Port {
    let g = Geometry::for_size(4 << 20, 2048).unwrap();
    let pool = Arc::new(Pool::anonymous(g, PersistMode::None).unwrap());
    Port::whole(pool, PortConfig::default()).unwrap()
}

#[test]
fn second_listen_on_an_address_is_refused() {
    let (mut a, mut b) = (port(), port());
    let addr = a.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let err = b.listen(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
}

#[test]
fn reuse_port_is_explicit() {
    let (mut a, mut b) = (port(), port());
    let addr = a.listen_reuse_port("127.0.0.1:0".parse().unwrap()).unwrap();
    b.listen_reuse_port(addr)
        .expect("both opted in to SO_REUSEPORT");
    let mut c = port();
    assert!(
        c.listen(addr).is_err(),
        "a plain listen does not join the group"
    );
}
