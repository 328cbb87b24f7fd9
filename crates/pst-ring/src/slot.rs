//! RX slots, connection ids and owned extents.

use pst_pool::BufIdx;

/// A connection registered with a port. Carries a generation so that a stale id (of a closed
/// connection whose table slot was reused) is recognised and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The table index (stable while the connection is open; reused after).
    pub fn index(self) -> u32 {
        self.idx
    }
}

/// What an RX slot reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// In-order stream data in `buf[off..off + len]`.
    Data,
    /// The peer closed its sending side (read returned 0). The connection can still send.
    End,
    /// A listener accepted this new connection; it is registered and receiving.
    Accepted,
    /// The connection failed with this errno (e.g. `ECONNRESET`); it receives nothing more.
    Error(i32),
}

/// One entry of the RX ring: netmap's slot `{buf_idx, fd, doff, len}`.
///
/// A `Data` slot's buffer belongs to the application until the next sync, when it returns to
/// the kernel unless it was kept ([`crate::Core::keep`]). For other kinds `buf`, `off` and
/// `len` are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The connection.
    pub conn: ConnId,
    /// The pool buffer holding the data.
    pub buf: BufIdx,
    /// Offset of the data in the buffer.
    pub off: u32,
    /// Data length.
    pub len: u32,
    /// What happened.
    pub kind: SlotKind,
    pub(crate) pos: u32,
}

/// A byte range of one pool buffer owned by the application: one reference on the buffer.
///
/// Not `Clone`: duplicating it would duplicate the reference. Give it back with
/// `Core::release`, hand it to `Core::send`, or to a store. Dropping it leaks the buffer until
/// restart (for file pools, recovery reclaims it), so it is `#[must_use]`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an Extent holds a pool buffer; send, store or release it"]
pub struct Extent {
    buf: BufIdx,
    off: u32,
    len: u32,
}

impl Extent {
    /// Take over one existing reference on `buf` as the range `off..off + len`.
    ///
    /// For layers that rebuild ownership (recovery) or account for references themselves.
    ///
    /// # Safety
    /// The caller must hold the reference it hands over, in the allocator that owns `buf`,
    /// and give it up: an extent is what entitles its holder to the buffer's bytes, and write
    /// access is granted to an extent whose buffer has one reference
    /// ([`crate::Core::refs`]). A forged extent could write a buffer that a store is reading
    /// on another thread.
    #[allow(unsafe_code)] // declares the caller's promise; constructing is plain code
    pub unsafe fn from_raw(buf: BufIdx, off: u32, len: u32) -> Extent {
        Extent { buf, off, len }
    }

    /// An extent on a reference the calling allocator code (this crate) just accounted for.
    pub(crate) fn owned(buf: BufIdx, off: u32, len: u32) -> Extent {
        Extent { buf, off, len }
    }

    /// A whole free slot of `k` buffers of `alloc` (see [`pst_pool::BufAlloc::alloc_run`]),
    /// one whole-buffer extent each: what a port or a partition lends a store's log.
    pub(crate) fn owned_run(
        alloc: &mut pst_pool::BufAlloc,
        k: u32,
        buf_size: u32,
    ) -> Option<Vec<Extent>> {
        let first = alloc.alloc_run(k)?.0;
        Some(
            (first..first + k)
                .map(|b| Extent::owned(BufIdx(b), 0, buf_size))
                .collect(),
        )
    }

    /// Give up the handle without releasing the reference (the caller now accounts for it).
    pub fn into_raw(self) -> (BufIdx, u32, u32) {
        (self.buf, self.off, self.len)
    }

    /// The buffer.
    pub fn buf(&self) -> BufIdx {
        self.buf
    }

    /// Offset in the buffer.
    pub fn off(&self) -> u32 {
        self.off
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shrink to `off + skip .. off + skip + len` (no reference change).
    pub fn narrow(&mut self, skip: u32, len: u32) {
        assert!(
            skip as u64 + len as u64 <= self.len as u64,
            "narrow outside the extent"
        );
        self.off += skip;
        self.len = len;
    }
}
