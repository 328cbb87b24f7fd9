//! The pst buffer pool: one file (or anonymous memory) mapped `MAP_SHARED` and cut into
//! fixed-size buffers named by [`BufIdx`], netmap's `buf_idx`.
//!
//! This crate owns the mapping, the on-media header ([`header`]), the per-partition ownership
//! bookkeeping ([`alloc`]) and the persistence primitives ([`PersistMode`]). It is the only place
//! besides the io_uring driver that holds `unsafe` code; it does no networking.
//!
//! File layout: `[header region 4 KiB][log region][buffer 0][buffer 1]...`; see [`header`].
#![deny(unsafe_code)]

pub mod alloc;
pub mod geometry;
pub mod header;
mod lock;
mod map;
pub mod media;
pub mod partition;
pub mod persist;
mod pool;
mod writeback;

pub use alloc::{AllocError, BufAlloc};
pub use geometry::{BufIdx, Geometry, DEFAULT_BUF_SIZE, DEFAULT_POOL_SIZE};
pub use header::{Header, HeaderError};
pub use lock::Holder;
pub use media::{Media, PoolMedia, SimPm};
pub use partition::Partition;
pub use persist::{FlushInsn, PersistMode};
pub use pool::{PersistError, Pool, PoolError, PoolOptions};
