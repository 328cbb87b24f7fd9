//! Cache-line flushing and the persist barrier's CPU side.
//!
//! PASTE flushes the cache lines of the data it keeps as it goes (so flushes overlap with the rest
//! of the batch) and issues one fence per batch. We do the same with the best flush instruction
//! the CPU has, detected once at run time: `clwb` (writes back, keeps the line cached), else
//! `clflushopt`, else `clflush`.
#![allow(unsafe_code)]

/// Which flush instruction the CPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushInsn {
    /// `clwb`: write back without evicting.
    Clwb,
    /// `clflushopt`: weakly ordered flush (evicts).
    Clflushopt,
    /// `clflush`: strongly ordered flush (evicts).
    Clflush,
    /// Not x86-64: no user-space cache flush; only a fence is issued.
    None,
}

/// Cache line size assumed for flushing.
pub const LINE: usize = 64;

impl FlushInsn {
    /// Detect the best available instruction.
    pub fn detect() -> FlushInsn {
        #[cfg(target_arch = "x86_64")]
        {
            // Leaf 7 subleaf 0 is valid when the max basic leaf is >= 7, which we check first.
            let max = core::arch::x86_64::__cpuid(0).eax;
            if max >= 7 {
                let l7 = core::arch::x86_64::__cpuid_count(7, 0);
                if l7.ebx & (1 << 24) != 0 {
                    return FlushInsn::Clwb;
                }
                if l7.ebx & (1 << 23) != 0 {
                    return FlushInsn::Clflushopt;
                }
            }
            FlushInsn::Clflush
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushInsn::None
    }

    /// Flush every cache line overlapping `[ptr, ptr + len)`.
    ///
    /// # Safety
    /// The whole range must be mapped for as long as the call runs (a flush of an unmapped
    /// address faults). Flushing changes no memory contents, so it may race with anything.
    pub unsafe fn flush(self, ptr: *const u8, len: usize) {
        if len == 0 {
            return;
        }
        let start = ptr as usize & !(LINE - 1);
        let end = ptr as usize + len;
        let mut line = start;
        while line < end {
            self.flush_line(line as *const u8);
            line += LINE;
        }
    }

    #[inline(always)]
    fn flush_line(self, p: *const u8) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the flush instructions only write back/evict the cache line holding `p`; they
        // do not modify memory. `p` lies inside a live mapping (the caller's range) so the access
        // cannot fault. The variant was detected via cpuid so the instruction exists.
        unsafe {
            match self {
                FlushInsn::Clwb => {
                    core::arch::asm!("clwb [{}]", in(reg) p, options(nostack, preserves_flags))
                }
                FlushInsn::Clflushopt => {
                    core::arch::asm!("clflushopt [{}]", in(reg) p, options(nostack, preserves_flags))
                }
                FlushInsn::Clflush => {
                    core::arch::asm!("clflush [{}]", in(reg) p, options(nostack, preserves_flags))
                }
                FlushInsn::None => {}
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }
}

/// Store fence ordering every earlier flush before later stores (the reply that acknowledges the
/// data, the next log record). `clwb`/`clflushopt` are weakly ordered; `sfence` is what the
/// Intel SDM prescribes to order them.
pub fn sfence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and no memory effects beyond ordering.
    unsafe {
        core::arch::asm!("sfence", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Busy-wait `ns` nanoseconds: the emulated extra write latency of slower persistent memory.
pub fn spin_ns(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = std::time::Instant::now() + std::time::Duration::from_nanos(ns);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_does_not_change_memory() {
        let v: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        // SAFETY: `v` is a live allocation covering the range.
        unsafe { FlushInsn::detect().flush(v.as_ptr().wrapping_add(3), 700) };
        sfence();
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}

/// What a persist barrier does, and so what survives what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PersistMode {
    /// Nothing. For a `MAP_SHARED` file pool, data survives a process crash (it is in the page
    /// cache) but not a power loss. Anonymous pools survive nothing.
    #[default]
    None,
    /// Flush each kept cache line (`clwb`/`clflushopt`) and issue one `sfence` per batch.
    /// Survives a process crash; survives power loss only on a DAX filesystem mapped with
    /// `MAP_SYNC` ([`Pool::is_dax`](crate::Pool::is_dax)), otherwise this is *emulated* persistent memory.
    Pmem,
    /// One `fdatasync` of the pool file per batch. Survives a process crash and a power loss on
    /// ordinary storage.
    Fsync,
}

impl std::str::FromStr for PersistMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PersistMode::None),
            "pmem" => Ok(PersistMode::Pmem),
            "fsync" => Ok(PersistMode::Fsync),
            _ => Err(format!(
                "unknown persist mode {s:?} (expected none, pmem or fsync)"
            )),
        }
    }
}

impl std::fmt::Display for PersistMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PersistMode::None => "none",
            PersistMode::Pmem => "pmem",
            PersistMode::Fsync => "fsync",
        })
    }
}
