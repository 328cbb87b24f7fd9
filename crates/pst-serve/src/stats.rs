//! Server counters shared with the benchmark through a small memory-mapped file, so the bench
//! reads the server's own system-call counts during the measured window without asking it
//! (asking would cost the server a wakeup, or a syscall, and perturb what is measured).
//!
//! Layout (little-endian u64 words): word 0 magic `PSTSTAT1`, word 1 thread count, then per
//! thread [`WORDS_PER_THREAD`] words: syscalls, requests.
#![allow(unsafe_code)] // the shared counters file is a memory mapping

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: u64 = u64::from_le_bytes(*b"PSTSTAT1");
/// Counters per thread.
pub const WORDS_PER_THREAD: usize = 2;
const MAX_THREADS: usize = 64;

/// A mapped stats file.
#[derive(Debug)]
pub struct StatsFile {
    map: memmap2::MmapMut,
}

impl StatsFile {
    /// Create (or reset) the file for `threads` threads.
    pub fn create(path: &Path, threads: usize) -> std::io::Result<StatsFile> {
        if threads > MAX_THREADS {
            return Err(std::io::Error::other(format!(
                "at most {MAX_THREADS} threads"
            )));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.set_len(Self::len() as u64)?;
        let s = Self::map(&f)?;
        s.word(1).store(threads as u64, Ordering::Relaxed);
        // Release: the thread count is visible before the magic that says the file is ready.
        s.word(0).store(MAGIC, Ordering::Release);
        Ok(s)
    }

    /// Open an existing file for reading.
    pub fn open(path: &Path) -> std::io::Result<StatsFile> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        if (f.metadata()?.len() as usize) < Self::len() {
            return Err(std::io::Error::other("stats file too short"));
        }
        Self::map(&f)
    }

    fn len() -> usize {
        8 * (2 + MAX_THREADS * WORDS_PER_THREAD)
    }

    fn map(f: &std::fs::File) -> std::io::Result<StatsFile> {
        // SAFETY: the file is private to one server and its benchmark; both access it only
        // through the atomics below, so concurrent modification is well-defined.
        let map = unsafe { memmap2::MmapMut::map_mut(f)? };
        Ok(StatsFile { map })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!((i + 1) * 8 <= self.map.len());
        // SAFETY: the mapping is page aligned, so every 8-byte word is aligned for AtomicU64;
        // the index is in bounds (asserted); AtomicU64 has the layout of u64 and all bit
        // patterns are valid; other processes touch the word only atomically.
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const AtomicU64) }
    }

    /// Publish thread `t`'s counters. Relaxed: each word is an independent monotonic counter.
    pub fn set(&self, t: usize, syscalls: u64, requests: u64) {
        self.word(2 + t * WORDS_PER_THREAD)
            .store(syscalls, Ordering::Relaxed);
        self.word(3 + t * WORDS_PER_THREAD)
            .store(requests, Ordering::Relaxed);
    }

    /// Sum over threads: (syscalls, requests); `None` until the server initialised the file.
    pub fn totals(&self) -> Option<(u64, u64)> {
        if self.word(0).load(Ordering::Acquire) != MAGIC {
            return None;
        }
        let n = (self.word(1).load(Ordering::Relaxed) as usize).min(MAX_THREADS);
        let mut s = (0, 0);
        for t in 0..n {
            s.0 += self.word(2 + t * WORDS_PER_THREAD).load(Ordering::Relaxed);
            s.1 += self.word(3 + t * WORDS_PER_THREAD).load(Ordering::Relaxed);
        }
        Some(s)
    }
}
