//! Test fixtures over simulated persistent memory ([`SimPm`]): a deterministic stand-in for
//! the kernel landing received bytes in pool buffers, so store tests (and the `wal_recovery`
//! fuzz target) need not re-derive buffer offsets, allocation and extent bookkeeping. Not a
//! driver: nothing here touches real memory the kernel writes.

use pst_pool::{BufAlloc, BufIdx, Geometry, Header, Media, PersistMode, SimPm};
use pst_ring::Extent;

/// A zeroed simulated pool of `buf_count` buffers of `buf_size` bytes and a `log_len`-byte log
/// in `mode`, with the byte range of its log (what [`crate::Store::open`] takes).
pub fn media(
    buf_size: u32,
    buf_count: u32,
    log_len: u64,
    mode: PersistMode,
) -> (SimPm, std::ops::Range<u64>) {
    let h = Header::layout(Geometry {
        buf_size,
        buf_count,
        log_len,
    })
    .expect("a valid test geometry");
    (SimPm::new(h, mode), h.log_off..h.log_off + log_len)
}

/// Lands bytes in the buffers of a [`SimPm`] like the kernel lands received data: in fresh
/// buffers (dirty, unflushed lines), optionally packed behind the previous value in a partly
/// used buffer, as extents holding one buffer reference each. It owns the buffer allocator, so
/// every reference it hands out is one it took.
#[derive(Debug)]
pub struct Landing {
    media: SimPm,
    alloc: BufAlloc,
    data_off: u64,
    buf_size: u32,
    /// A buffer with room left, held open for sharing: (buffer, bytes used).
    open: Option<(BufIdx, u32)>,
}

impl Landing {
    /// A landing zone over every buffer of `media`, all free.
    pub fn new(media: SimPm) -> Landing {
        Self::with_live(media, |_| 0)
    }

    /// A landing zone where `live(b)` references on buffer `b` are already held (by a
    /// recovered store: `|b| store.holds(b) as u16`).
    pub fn with_live(media: SimPm, live: impl FnMut(BufIdx) -> u16) -> Landing {
        let h = media.header();
        Landing {
            alloc: BufAlloc::with_live(0, h.geometry.buf_count, live),
            data_off: h.data_off,
            buf_size: h.geometry.buf_size,
            media,
            open: None,
        }
    }

    /// The media bytes land in.
    pub fn media(&self) -> &SimPm {
        &self.media
    }

    /// Free buffers.
    pub fn free_count(&self) -> usize {
        self.alloc.free_count()
    }

    fn off(&self, b: BufIdx, o: u32) -> u64 {
        self.data_off + b.0 as u64 * self.buf_size as u64 + o as u64
    }

    fn extent(b: BufIdx, off: u32, len: u32) -> Extent {
        // SAFETY: `b` was allocated (or retained) from this landing's own allocator just now,
        // so the extent carries exactly the one reference taken for it; nothing else (no port,
        // no kernel) hands out references on these buffers.
        #[allow(unsafe_code)]
        unsafe {
            Extent::from_raw(b, off, len)
        }
    }

    /// Land `data`; with `share_tail`, its first bytes go behind the previous value in a
    /// partly used buffer. `None` (nothing held) when the buffers run out.
    pub fn land(&mut self, data: &[u8], share_tail: bool) -> Option<Vec<Extent>> {
        let bs = self.buf_size;
        let mut out = Vec::new();
        let mut rest = data;
        if let Some((b, used)) = self.open.take() {
            if share_tail && used < bs && !rest.is_empty() && self.alloc.retain(b).is_ok() {
                let n = rest.len().min((bs - used) as usize);
                self.media.write(self.off(b, used), &rest[..n]);
                out.push(Self::extent(b, used, n as u32));
                rest = &rest[n..];
                if used + (n as u32) < bs {
                    self.open = Some((b, used + n as u32));
                } else {
                    self.alloc.release(b).expect("held open");
                }
            } else {
                self.open = Some((b, used));
            }
        }
        while !rest.is_empty() {
            let Some(b) = self.alloc.alloc() else {
                self.release(out);
                return None;
            };
            let n = rest.len().min(bs as usize);
            self.media.write(self.off(b, 0), &rest[..n]);
            out.push(Self::extent(b, 0, n as u32));
            rest = &rest[n..];
            if (n as u32) < bs {
                self.alloc.retain(b).expect("just allocated"); // held open for sharing
                if let Some((old, _)) = self.open.replace((b, n as u32)) {
                    self.alloc.release(old).expect("held open");
                }
            }
        }
        Some(out)
    }

    /// A whole free slot of `k` buffers for a store's log to borrow (`Store::segment_wanted`,
    /// `Store::grant_segment`), one extent per buffer; `None` when none is free.
    pub fn take_run(&mut self, k: u32) -> Option<Vec<Extent>> {
        let first = self.alloc.alloc_run(k)?;
        Some(
            (first.0..first.0 + k)
                .map(|b| Self::extent(BufIdx(b), 0, self.buf_size))
                .collect(),
        )
    }

    /// Give back extents (a store's `take_released`, or values not stored). Panics on a
    /// reference that was never taken: a store releasing what it did not own is a bug.
    pub fn release(&mut self, extents: impl IntoIterator<Item = Extent>) {
        for e in extents {
            let (b, _, _) = e.into_raw();
            self.alloc
                .release(b)
                .expect("released a buffer reference nobody held");
        }
    }

    /// Stop sharing the partly used buffer (drop the landing zone's own reference on it).
    pub fn close_open(&mut self) {
        if let Some((b, _)) = self.open.take() {
            self.alloc.release(b).expect("held open");
        }
    }
}
