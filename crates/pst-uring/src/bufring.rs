//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) whose entries point into the pool.
//!
//! The entry array itself must be memory the kernel can long-term pin: anonymous memory works
//! everywhere, while a file page on ext4 fails with EFAULT (see `linux-facts.md`). So the array
//! lives in its own anonymous mapping, and only the *buffers* it names are pool (file) memory.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// The entry array of one buffer ring plus our private tail counter.
#[derive(Debug)]
pub struct BufRing {
    base: NonNull<BufRingEntry>,
    entries: u16,
    bytes: usize,
    tail: u16,
}

impl BufRing {
    /// Map an entry array for `entries` buffers (power of two, 1..=32768).
    pub fn new(entries: u16) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring entries must be a power of two <= 32768",
            ));
        }
        let bytes = (entries as usize * std::mem::size_of::<BufRingEntry>()).max(4096);
        // SAFETY: fresh anonymous mapping; zero-filled, which is a valid (empty) ring.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(BufRing {
            base,
            entries,
            bytes,
            tail: 0,
        })
    }

    /// Register with a ring under buffer group `bgid`.
    ///
    /// # Safety
    /// `self` must outlive the registration (the ring that `submitter` belongs to must be torn
    /// down, or the group unregistered, before `self` is dropped).
    pub unsafe fn register(&self, submitter: &Submitter<'_>, bgid: u16) -> io::Result<()> {
        // SAFETY: the array is page aligned, `entries` long, and outlives the registration per
        // this function's contract.
        unsafe {
            submitter.register_buf_ring_with_flags(self.base.as_ptr() as u64, self.entries, bgid, 0)
        }
    }

    /// Write the next entry (not visible to the kernel until [`BufRing::publish`]). The caller
    /// never has more than `entries` buffers lent (the core's id table enforces it), so this
    /// never overwrites an entry the kernel has not consumed.
    ///
    /// # Safety
    /// Once published, the kernel may write `len` bytes at `addr` during any `io_uring_enter`
    /// of the ring this buffer ring is registered with, until the completion that consumes
    /// `bid`. So `addr..addr + len` must stay mapped that long, and no Rust reference to those
    /// bytes may be live during an enter of the ring (with `DEFER_TASKRUN`, the kernel writes
    /// only inside an enter of the issuing thread).
    #[allow(unsafe_code)]
    pub unsafe fn push(&mut self, bid: u16, addr: *mut u8, len: u32) {
        let i = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `i < entries`, inside our mapping; the kernel only reads entries between its
        // head and our published tail, and this index is beyond the published tail.
        let e = unsafe { &mut *self.base.as_ptr().add(i) };
        e.set_addr(addr as u64);
        e.set_len(len);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed entry visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: `base` is the first entry of a live ring, so `tail()` yields the address of
        // the shared tail field, which is 2-byte aligned and only written by us.
        let tail = unsafe { &*(BufRingEntry::tail(self.base.as_ptr()) as *const AtomicU16) };
        // Release: the entry stores above must be visible before the kernel sees the new tail.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `bytes` bytes; the registration ended with the ring (see
        // `register`'s contract).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}
