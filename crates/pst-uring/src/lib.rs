//! The io_uring driver of a pst port: turns the core's [`Op`](pst_ring::Op)s into SQEs and CQEs back into
//! [`Core::complete`](pst_ring::Core::complete) calls, and owns the provided-buffer ring whose entries point into the pool.
//!
//! One [`Driver::sync`] is one `io_uring_enter`: it submits every queued operation (sends,
//! re-armed receives, accepts, closes) and reaps every completion. The ring is created with
//! `SINGLE_ISSUER | DEFER_TASKRUN`, so completions run only inside our enter, on our thread.
//!
//! Not implemented: zero-copy receive (zcrx, `RecvZc`) needs a NIC with header split and the
//! queue-management API; this driver keeps one kernel copy (skb → pool buffer) on receive. The
//! place to add it is a second RX source beside the provided-buffer ring here.

#![deny(unsafe_code)]

mod accept;
mod bufring;
mod driver;
mod net;

pub use bufring::BufRing;
pub use driver::{Driver, DriverConfig, DriverStats, Waker, MAX_IOV};
pub use net::{listener, listener_with, set_nodelay, unacked_send_bytes};
