//! The I/O-free core of a pst port: netmap-style RX ring, per-connection TX queues, the
//! provided-buffer id table and the batching state machine.
//!
//! The core never performs a system call. A driver (the io_uring one in `pst-uring`, or a
//! simulated one in tests) feeds it completions with [`Core::complete`] and drains the
//! operations it wants submitted with [`Core::pop_op`]; buffers to lend to the kernel come from
//! [`Core::refill`]. Everything here is deterministic, which is what lets the ring bookkeeping be
//! tested without sockets: the `sim` module (feature `sim`) is a model of the kernel side that
//! the unit tests and the `ring_core` fuzz target drive the core with.
//!
//! Buffer lifecycle: free (in the partition's [`BufAlloc`]) → lent to the kernel (in the
//! [`BidTable`]) → an RX [`Slot`] owned by the app until the next sync → either recycled, or
//! kept as an [`Extent`] → sent and/or logged → released back to the free list.
#![deny(unsafe_code)] // allowed where stated: four `unsafe fn`s (fd ownership, completions, Extent::from_raw), `Buffers`' byte access, and the model kernel (`sim`) that plays the driver

mod bid;
mod buffers;
mod completion;
mod core;
pub mod pack;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod slot;
mod userdata;

pub use bid::BidTable;
pub use buffers::Buffers;
pub use completion::{Completion, Errno};
pub use core::{Core, CoreConfig, CoreStats, Op, SendError, LINGER_MAX};
pub use pack::{PackTarget, PackToken, Packer};
pub use pst_pool::{BufAlloc, BufIdx, Partition};
pub use slot::{ConnId, Extent, Slot, SlotKind};

/// A list of extents, up to two inline: a value or a reply in one or two buffers (the common
/// case) needs no heap allocation for its list.
pub type ExtentList = smallvec::SmallVec<[Extent; 2]>;
pub use userdata::{OpKind, UserData};
