//! The raw memory mapping behind a pool.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// An owned `mmap` region, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    dax: bool,
}

// SAFETY: the mapping is plain shared memory; the pointer is never used to create references by
// this type itself. Access discipline (which thread/kernel op may touch which buffer) is enforced
// by the owners of the `BufIdx`es (partitions, ports), documented on `Pool::bytes`.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `file` shared. Tries `MAP_SYNC` first (DAX); falls back to plain
    /// `MAP_SHARED` when the filesystem does not support it (EOPNOTSUPP/EINVAL) — or, with
    /// `private`, to `MAP_PRIVATE` (the caller writes back what must persist: `writeback`).
    pub(crate) fn file(
        file: &File,
        len: u64,
        read_only: bool,
        private: bool,
    ) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        if !read_only {
            if let Ok(ptr) = Self::mmap(
                len,
                prot,
                libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
                file.as_raw_fd(),
            ) {
                return Ok(Mapping {
                    ptr,
                    len,
                    dax: true,
                });
            }
        }
        if private && !read_only {
            let ptr = Self::mmap(len, prot, libc::MAP_PRIVATE, file.as_raw_fd())?;
            Self::small_folios(file, ptr, len);
            Self::read_ahead(file, len);
            return Ok(Mapping {
                ptr,
                len,
                dax: false,
            });
        }
        let ptr = Self::mmap(len, prot, libc::MAP_SHARED, file.as_raw_fd())?;
        if !read_only {
            Self::small_folios(file, ptr, len);
            Self::read_ahead(file, len);
        }
        Ok(Mapping {
            ptr,
            len,
            dax: false,
        })
    }

    /// Keep the pool's page cache in single pages, so that a write dirties (and the next
    /// `fdatasync` writes) 4 KiB, not a whole large folio. Since Linux 6.x ext4 caches files in
    /// large folios (up to 2 MiB) built by readahead, and a write fault on a mapped folio marks
    /// every block of it dirty (`block_page_mkwrite`): one received 1 KiB value then cost
    /// ~30 KB of disk writes per request (measured with `/proc/<pid>/io` and
    /// `/proc/diskstats`; the `writeback_dirty_folio` tracepoint shows ~0.1 dirtying per
    /// request). `MADV_RANDOM` turns readahead off for faults on this mapping, so a fault
    /// brings in one page; dropping the file's clean cached pages first
    /// (`POSIX_FADV_DONTNEED`) discards large folios a reader (`pst inspect`, a previous run)
    /// left behind. Both are hints: failures only cost write amplification, so they are
    /// logged, not returned.
    fn small_folios(file: &File, ptr: NonNull<u8>, len: usize) {
        // SAFETY: fadvise on our own descriptor; it changes no memory.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(error = rc, "posix_fadvise(DONTNEED) on the pool failed");
        }
        // SAFETY: `ptr..ptr+len` is exactly the mapping just created; MADV_RANDOM changes
        // readahead policy only, never the contents.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_RANDOM) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "madvise(MADV_RANDOM) on the pool failed");
        }
    }

    /// Read the whole file into the page cache before recovery faults it in. With readahead
    /// off on the mapping (`small_folios`), each fault is one synchronous 4 KiB disk read: a
    /// 1 GiB pool of 400,000 1 KiB values took 8.4 s to recover, page cache warm or not (the
    /// `POSIX_FADV_DONTNEED` had just dropped it).
    ///
    /// `POSIX_FADV_WILLNEED` reads into folios of the mapping's minimum order — single pages
    /// on a 4 KiB-block filesystem (only the fault and read paths' readahead builds large
    /// ones), so `small_folios` still holds. The kernel reads at most the larger of the
    /// device's largest request (`max_sectors_kb`) and the readahead window (`read_ahead_kb`)
    /// per call — 128 KiB on many disks — hence `CHUNK`. The calls submit reads and block
    /// once the device's queue is full, so this takes about the file's size over the disk's
    /// read bandwidth (1 GiB: 0.8 s here), which recovery would spend anyway.
    ///
    /// Only for a file that fits in half the memory (the machine's, or the cgroup's limit): a
    /// larger pool would push itself, and everything else, out of the cache before recovery
    /// got to it. Not on tmpfs, where the pages are memory already. A hint: a failure is
    /// logged and ends it.
    fn read_ahead(file: &File, len: usize) {
        const CHUNK: usize = 128 << 10;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        if let Ok(st) = rustix::fs::fstatfs(file) {
            // `f_type` is an i64 here but narrower on other targets.
            #[allow(clippy::unnecessary_cast)]
            if matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC) {
                return;
            }
        }
        let memory = memory_limit();
        if len as u64 > memory / 2 {
            tracing::info!(
                pool_bytes = len,
                memory_bytes = memory,
                "pool larger than half the memory: not read ahead (recovery reads it as it goes)"
            );
            return;
        }
        let t0 = std::time::Instant::now();
        for off in (0..len).step_by(CHUNK) {
            let (Ok(o), Ok(n)) = (
                libc::off_t::try_from(off),
                libc::off_t::try_from(CHUNK.min(len - off)),
            ) else {
                return;
            };
            // SAFETY: fadvise on our own descriptor; it changes no memory.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), o, n, libc::POSIX_FADV_WILLNEED) };
            if rc != 0 {
                tracing::debug!(error = rc, "posix_fadvise(WILLNEED) on the pool failed");
                return;
            }
        }
        tracing::info!(
            bytes = len,
            ms = t0.elapsed().as_millis() as u64,
            "pool read into the page cache for recovery"
        );
    }

    /// Anonymous shared memory of `len` bytes.
    pub(crate) fn anonymous(len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let ptr = Self::mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        )?;
        Ok(Mapping {
            ptr,
            len,
            dax: false,
        })
    }

    fn mmap(len: usize, prot: i32, flags: i32, fd: i32) -> io::Result<NonNull<u8>> {
        // SAFETY: a fresh mapping at a kernel-chosen address; no existing memory is affected.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
    }

    pub(crate) fn dax(&self) -> bool {
        self.dax
    }

    /// Pointer to byte `off`. Panics when out of bounds.
    pub(crate) fn ptr_at(&self, off: u64) -> *mut u8 {
        assert!(
            off <= self.len as u64,
            "offset {off} outside a {}-byte mapping",
            self.len
        );
        // SAFETY: `off <= len`, so the result is within (or one past) the mapping.
        unsafe { self.ptr.as_ptr().add(off as usize) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; it was created by mmap with exactly this length. Anything
        // that borrowed it is gone because borrows are tied to the `Pool` that owns us.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The memory this process may use: the machine's, or its cgroup's (v2 `memory.max`) if lower.
fn memory_limit() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ram = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(ram, |c| c.min(ram))
}
