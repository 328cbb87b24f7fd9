//! The mapped pool: opening (validated, locked) or creating a pool file, anonymous pools, byte
//! access to buffers, and persist barriers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::geometry::{BufIdx, Geometry, DEFAULT_BUF_SIZE, DEFAULT_POOL_SIZE};
use crate::header::{self, Header, HeaderError};
use crate::lock::{self, Holder};
use crate::map;
use crate::persist::{FlushInsn, PersistMode};

/// Errors opening or creating a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// An I/O error on the pool file.
    #[error("{path}: {source}")]
    Io {
        /// The pool path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a usable pool; it was left untouched.
    #[error("{path}: refusing to use this file (left untouched): {source}")]
    BadHeader {
        /// The pool path.
        path: PathBuf,
        /// What is wrong with it.
        source: HeaderError,
    },
    /// The file is a valid pool with another geometry than the one asked for.
    #[error("{path}: existing pool has geometry {found}, but geometry {wanted} was requested (left untouched; omit --pool-size to open it as it is)")]
    GeometryMismatch {
        /// The pool path.
        path: PathBuf,
        /// Geometry in the file.
        found: Geometry,
        /// Geometry requested.
        wanted: Geometry,
    },
    /// Invalid geometry requested.
    #[error("invalid pool geometry: {0}")]
    Geometry(String),
    /// Another process (or another open in this one) holds the pool; it was left untouched.
    /// A pool belongs to one process at a time: two would lend the same buffers to two kernels
    /// and append to one log from two heads.
    #[error("{path}: pool is in use by {} (refusing to open it; left untouched)", holder.as_ref().map_or_else(|| "another process".to_owned(), |h| h.to_string()))]
    InUse {
        /// The pool path.
        path: PathBuf,
        /// The process holding it, when `/proc/locks` names it.
        holder: Option<Holder>,
    },
    /// A partition claim was refused.
    #[error("cannot claim buffers {range:?}: {why}")]
    Claim {
        /// The range asked for.
        range: std::ops::Range<u32>,
        /// Why not.
        why: &'static str,
    },
    /// The pool's filesystem cannot hold all of its blocks. A mapped file whose pages cannot
    /// be allocated kills its process with `SIGBUS` at the first touch of one, so a pool is
    /// allocated in full before it is mapped; a new file is removed, an existing one is left
    /// as it was (its contents untouched).
    #[error("{path}: {}", if *new {
        format!("no room on its filesystem for the pool's {needed} bytes; free some space or choose a smaller --pool-size (nothing was created)")
    } else {
        format!("the pool file is sparse and its filesystem has no room for the {needed} bytes it lacks; free some space (left untouched)")
    })]
    NoSpace {
        /// The pool path.
        path: PathBuf,
        /// Bytes that could not be allocated: the whole pool when new, the holes of a sparse
        /// existing one.
        needed: u64,
        /// Whether the pool was being created.
        new: bool,
        /// The underlying error (`ENOSPC` or `EDQUOT`).
        source: std::io::Error,
    },
    /// mmap failed.
    #[error("mmap of {len} bytes failed: {source}")]
    Map {
        /// Bytes requested.
        len: u64,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A persist barrier failed. After this the pool is poisoned: every later barrier fails too,
/// because the kernel may have dropped dirty pages it could not write (fsync-gate).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// `fdatasync` failed.
    #[error("fdatasync of the pool failed: {0}")]
    Sync(String),
    /// An earlier barrier failed; durability can no longer be promised.
    #[error("pool is poisoned by an earlier failed persist; restart to recover")]
    Poisoned,
}

/// How to open a pool file.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Geometry for a new pool; also required of an existing one when `require_geometry`.
    pub geometry: Geometry,
    /// Refuse an existing pool whose geometry differs from `geometry`.
    pub require_geometry: bool,
    /// The persist mode used by [`Pool::barrier`].
    pub persist: PersistMode,
    /// Busy-wait this long at each barrier (emulated slow persistent memory).
    pub pm_write_latency_ns: u64,
    /// Map read-only and never create (for `pst inspect`).
    pub read_only: bool,
    /// Anonymous scratch buffers for transient TX data (`None`: one per 8 pool buffers, at
    /// most 16384).
    pub scratch_buffers: Option<u32>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            geometry: Geometry::for_size(DEFAULT_POOL_SIZE, DEFAULT_BUF_SIZE)
                .expect("default geometry is valid"),
            require_geometry: false,
            persist: PersistMode::None,
            pm_write_latency_ns: 0,
            read_only: false,
            scratch_buffers: None,
        }
    }
}

/// A mapped pool.
#[derive(Debug)]
pub struct Pool {
    pub(crate) map: map::Mapping,
    /// Anonymous (never persisted) buffers numbered after the pool's: for replies and other
    /// transient TX data, so they do not dirty the pool file (an `fdatasync` would write them).
    scratch: map::Mapping,
    scratch_count: u32,
    file: Option<File>,
    path: Option<PathBuf>,
    pub(crate) header: Header,
    persist: PersistMode,
    pm_latency_ns: u64,
    flush: FlushInsn,
    poisoned: AtomicBool,
    /// Set once a store claimed the log region ([`Pool::claim_log`]).
    pub(crate) log_claimed: AtomicBool,
    /// Buffer ranges claimed by live partitions ([`Pool::claim`]).
    pub(crate) claims: std::sync::Mutex<Vec<std::ops::Range<u32>>>,
    /// `fsync` mode on a file mapped privately: the flushed ranges to write back at the
    /// barrier (module `writeback`); `None` when the mapping is shared (or DAX, or anonymous).
    writeback: Option<crate::writeback::WriteBack>,
}

/// A random 64-bit number for a new pool's log salt: std's `RandomState` draws its keys from
/// the operating system's random source; time and process id make each call differ too.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// `fallocate(2)`, retried when a signal interrupts it (a large tmpfs allocation can take
/// seconds).
fn fallocate(
    file: &File,
    mode: rustix::fs::FallocateFlags,
    off: u64,
    len: u64,
) -> rustix::io::Result<()> {
    loop {
        match rustix::fs::fallocate(file, mode, off, len) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r,
        }
    }
}

fn no_room(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT
}

fn unsupported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS
}

fn warn_sparse(path: &Path) {
    tracing::warn!(
        ?path,
        "the filesystem cannot preallocate the pool; it stays sparse, and a full filesystem \
         will stop the server with SIGBUS"
    );
}

/// Give a new pool file every block of its `len` bytes (`fallocate` mode 0, which grows it to
/// `len`). A filesystem without `fallocate` gets a sparse file of that length instead, with a
/// warning: its pages are then allocated when first written.
fn allocate_new(file: &File, path: &Path, len: u64) -> Result<(), PoolError> {
    let io = |source| PoolError::Io {
        path: path.to_owned(),
        source,
    };
    match fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if no_room(e) => Err(PoolError::NoSpace {
            path: path.to_owned(),
            needed: len,
            new: true,
            source: e.into(),
        }),
        Err(e) if unsupported(e) => {
            warn_sparse(path);
            file.set_len(len).map_err(io)
        }
        Err(e) => Err(io(e.into())),
    }
}

/// The holes of `file`'s first `len` bytes (`SEEK_HOLE`/`SEEK_DATA`). Empty when the
/// filesystem reports none — including one that cannot tell (it says "all data").
fn holes(file: &File, len: u64) -> std::io::Result<Vec<std::ops::Range<u64>>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut off = 0;
    while off < len {
        let hole = seek(file, SeekFrom::Hole(off))?.min(len);
        if hole >= len {
            break;
        }
        let data = match seek(file, SeekFrom::Data(hole)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len, // no data after it: a hole to the end
            Err(e) => return Err(e.into()),
        };
        out.push(hole..data);
        off = data;
    }
    Ok(out)
}

/// Give an existing (possibly sparse) pool file the blocks it lacks, or refuse it leaving it
/// as it was — the bytes *and* the filesystem's free space: a failed `fallocate` keeps the
/// blocks it got on ext4 and XFS, so a sparse pool is allocated hole by hole after a check of
/// the free space, and the holes filled are punched out again if one still fails.
fn allocate_existing(file: &File, path: &Path, len: u64) -> Result<(), PoolError> {
    use rustix::fs::FallocateFlags;
    use std::os::unix::fs::MetadataExt;
    let io = |source| PoolError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if meta.blocks() * 512 >= len {
        return Ok(()); // allocated already (the common case: every open after the first)
    }
    let holes = holes(file, len).map_err(io)?;
    let missing = if holes.is_empty() {
        len - meta.blocks() * 512
    } else {
        holes.iter().map(|h| h.end - h.start).sum()
    };
    let refuse = |e: std::io::Error| PoolError::NoSpace {
        path: path.to_owned(),
        needed: missing,
        new: false,
        source: e,
    };
    if let Ok(st) = rustix::fs::fstatvfs(file) {
        if st.f_bavail.saturating_mul(st.f_frsize) < missing {
            return Err(refuse(rustix::io::Errno::NOSPC.into()));
        }
    }
    // A filesystem that reports no holes although blocks are missing cannot say where they
    // are: allocate the whole range (no undo is possible there, but the check above passed).
    let whole = 0..len;
    let ranges: &[std::ops::Range<u64>] = if holes.is_empty() {
        std::slice::from_ref(&whole)
    } else {
        &holes
    };
    for (i, h) in ranges.iter().enumerate() {
        match fallocate(file, FallocateFlags::empty(), h.start, h.end - h.start) {
            Ok(()) => {}
            Err(e) if no_room(e) => {
                if !holes.is_empty() {
                    for h in &holes[..=i] {
                        let _ = fallocate(
                            file,
                            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                            h.start,
                            h.end - h.start,
                        );
                    }
                }
                return Err(refuse(e.into()));
            }
            Err(e) if unsupported(e) => {
                warn_sparse(path);
                return Ok(());
            }
            Err(e) => return Err(io(e.into())),
        }
    }
    Ok(())
}

/// Remove the temp files (`<pool>.tmp.…`, see `Pool::create`) that creators killed mid-way
/// left beside `path`. A creator holds an exclusive `flock` on its temp file from its first
/// byte until the file is linked into place and unlinked, so a temp file whose lock can be
/// taken has no creator any more (a lock dies with its process, whatever its pid namespace).
/// A temp file holds the pool's whole length on disk, since pools are allocated in full.
/// Best effort: what cannot be opened, locked or removed stays.
fn remove_stale_temps(path: &Path) {
    use rustix::fs::{flock, FlockOperation};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.tmp.");
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|f| f.starts_with(&prefix))
        {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // its creator is at work
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(path = ?e.path(), "removed a pool temp file left by an interrupted creation")
            }
            Err(err) => {
                tracing::warn!(path = ?e.path(), %err, "cannot remove a stale pool temp file")
            }
        }
    }
}

impl Pool {
    /// Open the pool at `path`, creating it (and its parent directories) if absent.
    ///
    /// An existing file is validated (magic, version, checksum, geometry, length) and refused
    /// untouched if anything is wrong. A new file is written to `path.tmp`, synced, and renamed
    /// into place, so a crash during creation never leaves a half-written pool at `path`.
    pub fn open(path: &Path, opts: &PoolOptions) -> Result<Pool, PoolError> {
        let io = |source| PoolError::Io {
            path: path.to_owned(),
            source,
        };
        if !opts.read_only {
            remove_stale_temps(path);
        }
        if !path.exists() {
            if opts.read_only {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such pool",
                )));
            }
            Self::create(path, opts.geometry)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)
            .map_err(io)?;
        // Locked before anything is read, held by `file` for the pool's lifetime (module `lock`).
        lock::lock(&file, opts.read_only).map_err(|e| match e {
            lock::LockError::Busy(holder) => PoolError::InUse {
                path: path.to_owned(),
                holder,
            },
            lock::LockError::Io(source) => io(source),
        })?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        let mut buf = [0u8; header::HEADER_LEN];
        let n = file.read_at(&mut buf, 0).map_err(io)?;
        let header =
            Header::decode(&buf[..n], meta.len()).map_err(|source| PoolError::BadHeader {
                path: path.to_owned(),
                source,
            })?;
        if opts.require_geometry && header.geometry != opts.geometry {
            return Err(PoolError::GeometryMismatch {
                path: path.to_owned(),
                found: header.geometry,
                wanted: opts.geometry,
            });
        }
        if !opts.read_only {
            // A pool made sparse (by an older version, or copied with `cp --sparse`) gets its
            // missing blocks now, or is refused, rather than dying of SIGBUS when a page
            // cannot be had. Idempotent and quick on a pool that is allocated already.
            allocate_existing(&file, path, header.total_len)?;
        }
        let private = opts.persist == PersistMode::Fsync && !opts.read_only;
        let map = map::Mapping::file(&file, header.total_len, opts.read_only, private).map_err(
            |source| PoolError::Map {
                len: header.total_len,
                source,
            },
        )?;
        let writeback = (private && !map.dax()).then(crate::writeback::WriteBack::default);
        let mut pool = Self::assemble(map, Some(file), Some(path.to_owned()), header, opts);
        pool.writeback = writeback;
        Ok(pool)
    }

    /// An anonymous (DRAM-only) pool: nothing survives the process.
    pub fn anonymous(geometry: Geometry, persist: PersistMode) -> Result<Pool, PoolError> {
        let header = Header::layout(geometry).map_err(|e| PoolError::Geometry(e.to_string()))?;
        let map = map::Mapping::anonymous(header.total_len).map_err(|source| PoolError::Map {
            len: header.total_len,
            source,
        })?;
        let opts = PoolOptions {
            geometry,
            persist,
            ..PoolOptions::default()
        };
        Ok(Self::assemble(map, None, None, header, &opts))
    }

    fn assemble(
        map: map::Mapping,
        file: Option<File>,
        path: Option<PathBuf>,
        header: Header,
        opts: &PoolOptions,
    ) -> Pool {
        let g = header.geometry;
        let scratch_count = opts
            .scratch_buffers
            .unwrap_or((g.buf_count / 8).clamp(8, 16384));
        // If the scratch area cannot be mapped, fall back to one buffer — and say so in the
        // count, which bounds every scratch index handed out.
        let (scratch, scratch_count) =
            match map::Mapping::anonymous(scratch_count as u64 * g.buf_size as u64) {
                Ok(m) => (m, scratch_count),
                Err(_) => (
                    map::Mapping::anonymous(g.buf_size as u64).expect("one anonymous buffer"),
                    1,
                ),
            };
        let pool = Pool {
            map,
            scratch,
            scratch_count,
            file,
            path,
            header,
            persist: opts.persist,
            pm_latency_ns: opts.pm_write_latency_ns,
            flush: FlushInsn::detect(),
            poisoned: AtomicBool::new(false),
            log_claimed: AtomicBool::new(false),
            claims: std::sync::Mutex::new(Vec::new()),
            writeback: None,
        };
        tracing::debug!(
            path = ?pool.path,
            buf_size = header.geometry.buf_size,
            buf_count = header.geometry.buf_count,
            persist = %pool.persist,
            pm = pool.pm_report(),
            flush = ?pool.flush,
            "pool mapped"
        );
        pool
    }

    fn create(path: &Path, geometry: Geometry) -> Result<(), PoolError> {
        let header = Header::layout(geometry)
            .map_err(|e| PoolError::Geometry(e.to_string()))?
            .with_salt(random_salt());
        let io = |source| PoolError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // A temp file of our own, created exclusively (never truncating anything): two
        // creators of the same pool at once — threads, or processes that share a pid across
        // containers — each write their own, and the loser of the link below opens the
        // winner's pool instead (and is refused by its lock while the winner holds it).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".tmp.{}.{nanos}.{}",
            std::process::id(),
            // Relaxed: only uniqueness matters.
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // Held until the temp file is gone (`remove_stale_temps`: an unlocked one is stale).
        let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        let written = f
            .write_all(&header.encode())
            .map_err(io)
            .and_then(|()| allocate_new(&f, path, header.total_len))
            .and_then(|()| f.sync_all().map_err(io));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            drop(f);
            if matches!(e, PoolError::NoSpace { .. }) && path.exists() {
                // A concurrent creator won, and took the room: open its pool instead.
                return Ok(());
            }
            return Err(e);
        }
        // Never replace a file that appeared meanwhile: link fails if `path` exists.
        let linked = std::fs::hard_link(&tmp, path);
        std::fs::remove_file(&tmp).map_err(io)?;
        drop(f);
        match linked {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            r => r.map_err(io)?,
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        tracing::info!(?path, %geometry, "created pool");
        Ok(())
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Buffer geometry.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> u32 {
        self.header.geometry.buf_size
    }

    /// The pool's file path, if file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The persist mode of [`Pool::barrier`].
    pub fn persist_mode(&self) -> PersistMode {
        self.persist
    }

    /// True when the pool is mapped with `MAP_SYNC` on a DAX filesystem: cache-line flushes then
    /// reach persistent media.
    pub fn is_dax(&self) -> bool {
        self.map.dax()
    }

    /// "dax" or "emulated": what `Pmem` mode means for this pool.
    pub fn pm_report(&self) -> &'static str {
        if self.is_dax() {
            "dax (MAP_SYNC)"
        } else {
            "emulated (no DAX/MAP_SYNC: pmem flushes reach the page cache only)"
        }
    }

    /// Address of buffer `b`'s first byte. Panics if `b` is outside the pool (a programming
    /// error: indices come from this pool's allocators).
    pub fn buf_ptr(&self, b: BufIdx) -> *mut u8 {
        let count = self.header.geometry.buf_count;
        if b.0 >= count {
            assert!(
                b.0 - count < self.scratch_count,
                "buffer {b:?} outside the pool"
            );
            return self
                .scratch
                .ptr_at((b.0 - count) as u64 * self.buf_size() as u64);
        }
        let off = self.header.data_off + b.0 as u64 * self.buf_size() as u64;
        self.map.ptr_at(off)
    }

    /// Indices of the anonymous scratch buffers (after the pool's own).
    pub fn scratch_range(&self) -> std::ops::Range<u32> {
        let c = self.header.geometry.buf_count;
        c..c + self.scratch_count
    }

    /// The scratch buffers that go with pool partition `part` (the same share of them).
    pub fn scratch_part(&self, part: &std::ops::Range<u32>) -> std::ops::Range<u32> {
        let (c, n) = (
            self.header.geometry.buf_count as u64,
            self.scratch_count as u64,
        );
        let at = |i: u32| (c + i as u64 * n / c.max(1)) as u32;
        at(part.start)..at(part.end)
    }

    /// The log region as a raw pointer and length (owned by the store layer).
    pub fn log_region(&self) -> (*mut u8, usize) {
        (
            self.map.ptr_at(self.header.log_off),
            self.header.geometry.log_len as usize,
        )
    }

    /// Read `len` bytes of buffer `b` from `off`.
    ///
    /// # Safety
    /// Nobody may write that byte range while the returned slice lives: the caller must own the
    /// buffer (it is not lent to the kernel, and no `&mut` to the range exists).
    #[allow(unsafe_code)]
    pub unsafe fn bytes(&self, b: BufIdx, off: u32, len: u32) -> &[u8] {
        assert!(
            off as u64 + len as u64 <= self.buf_size() as u64,
            "range outside the buffer"
        );
        // SAFETY: in bounds of the mapping (checked above and in buf_ptr); exclusivity is the
        // caller's contract.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(b).add(off as usize), len as usize) }
    }

    /// Write access to `len` bytes of buffer `b` from `off`.
    ///
    /// # Safety
    /// The caller must own that byte range exclusively while the slice lives (not lent to the
    /// kernel, no other reference to it).
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, b: BufIdx, off: u32, len: u32) -> &mut [u8] {
        assert!(
            off as u64 + len as u64 <= self.buf_size() as u64,
            "range outside the buffer"
        );
        // SAFETY: in bounds of the mapping; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(b).add(off as usize), len as usize) }
    }

    /// Start persisting `[ptr, ptr+len)` (a range in this pool). In `Pmem` mode this flushes its
    /// cache lines now, so the flushes overlap with the rest of the batch; in `Fsync` mode on a
    /// file it records the range, which the next barrier writes back (module `writeback`).
    /// Only flushed bytes are persisted, in every mode but `None`.
    ///
    /// # Safety
    /// The range must lie inside this pool's mapping (as pointers from [`Pool::buf_ptr`] and
    /// [`Pool::log_region`] do).
    #[allow(unsafe_code)]
    pub unsafe fn flush(&self, ptr: *const u8, len: usize) {
        if self.persist == PersistMode::Pmem {
            // SAFETY: inside our mapping (this function's contract), which `&self` keeps alive.
            unsafe { self.flush.flush(ptr, len) };
        } else if let Some(w) = &self.writeback {
            let off = ptr as usize - self.map.ptr_at(0) as usize;
            w.mark(off as u64, len as u64);
        }
    }

    /// Write the ranges flushed since the last barrier back into the file (private mapping in
    /// `fsync` mode; nothing otherwise). A failure poisons the pool.
    #[allow(unsafe_code)]
    fn write_back(&self) -> Result<(), PersistError> {
        let (Some(w), Some(f)) = (&self.writeback, &self.file) else {
            return Ok(());
        };
        let ranges = w.take(self.header.total_len);
        // SAFETY: the ranges were recorded by `flush` from pointers inside our mapping and
        // capped at its length; `&self` keeps the mapping alive.
        let written = unsafe { crate::writeback::WriteBack::write(f, self.map.ptr_at(0), &ranges) };
        w.give_back(ranges);
        match written {
            Ok(_) => Ok(()),
            Err(e) => {
                self.poisoned.store(true, Ordering::Relaxed);
                Err(PersistError::Sync(format!("writing back the pool: {e}")))
            }
        }
    }

    /// True when this pool's memory is a private copy written back at each barrier (`fsync`
    /// mode on a file; module `writeback`), false when the file is mapped shared.
    pub fn writes_back(&self) -> bool {
        self.writeback.is_some()
    }

    /// True when this pool's barrier ends in an `fdatasync` of its file (`Fsync` mode on a file,
    /// not poisoned), which a caller may run elsewhere through [`Pool::barrier_file`]. No side
    /// effect (unlike `barrier_file`, which writes back the flushed ranges first).
    pub fn syncs_file(&self) -> bool {
        // Relaxed: a latch, as in `barrier`.
        self.persist == PersistMode::Fsync
            && self.file.is_some()
            && !self.poisoned.load(Ordering::Relaxed)
    }

    /// The once-per-batch persist barrier: after it returns `Ok`, everything written to the pool
    /// and flushed with [`Pool::flush`] before it is persisted under the mode, so replies
    /// acknowledging it may leave. Bytes written but never flushed are not (`Fsync` mode writes
    /// back only flushed ranges).
    pub fn barrier(&self) -> Result<(), PersistError> {
        // Relaxed: the flag is only a latch; the barrier's own syscalls/fences order the data.
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(PersistError::Poisoned);
        }
        match self.persist {
            PersistMode::None => {}
            PersistMode::Pmem => crate::persist::sfence(),
            PersistMode::Fsync => {
                self.write_back()?;
                if let Some(f) = &self.file {
                    if let Err(e) = f.sync_data() {
                        self.poisoned.store(true, Ordering::Relaxed);
                        return Err(PersistError::Sync(e.to_string()));
                    }
                }
            }
        }
        crate::persist::spin_ns(self.pm_latency_ns);
        Ok(())
    }

    /// The file whose `fdatasync` is this pool's whole barrier, when it is one (`Fsync` mode on
    /// a file, not poisoned): the caller may run that `fdatasync` elsewhere — an io_uring
    /// `FSYNC` with `IORING_FSYNC_DATASYNC`, in flight while the event loop goes on — and must
    /// then report its outcome with [`Pool::barrier_completed`]. `None`: call
    /// [`Pool::barrier`] (a fence, nothing, or an anonymous pool).
    pub fn barrier_file(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        if !self.syncs_file() {
            return None;
        }
        // The flushed ranges go into the file now (copies into the page cache: quick); the
        // `fdatasync` that makes them durable is the caller's to run.
        self.write_back().ok()?;
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// The outcome of an `fdatasync` of [`Pool::barrier_file`] run elsewhere, as [`Pool::barrier`]
    /// would have returned it: a failure poisons the pool (the kernel may have dropped the
    /// dirty pages it could not write, so no later sync can vouch for them).
    pub fn barrier_completed(&self, result: std::io::Result<()>) -> Result<(), PersistError> {
        if let Err(e) = result {
            self.poisoned.store(true, Ordering::Relaxed);
            return Err(PersistError::Sync(e.to_string()));
        }
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(PersistError::Poisoned);
        }
        crate::persist::spin_ns(self.pm_latency_ns);
        Ok(())
    }

    /// True after a failed barrier.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn small() -> PoolOptions {
        PoolOptions {
            geometry: Geometry::for_size(1 << 20, 2048).unwrap(),
            ..PoolOptions::default()
        }
    }

    #[test]
    fn create_reopen_and_refuse_mismatch() {
        let dir = std::env::temp_dir().join(format!("pst-pool-test-{}", std::process::id()));
        let path = dir.join("a/b/pool");
        let _ = std::fs::remove_dir_all(&dir);
        let p = Pool::open(&path, &small()).unwrap();
        // SAFETY: test owns the whole pool, nobody else touches buffer 3.
        unsafe { p.bytes_mut(BufIdx(3), 0, 5) }.copy_from_slice(b"hello");
        drop(p);
        let p = Pool::open(&path, &small()).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { p.bytes(BufIdx(3), 0, 5) }, b"hello");
        drop(p);
        let mut other = small();
        other.geometry = Geometry::for_size(2 << 20, 2048).unwrap();
        other.require_geometry = true;
        assert!(matches!(
            Pool::open(&path, &other),
            Err(PoolError::GeometryMismatch { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `fsync` mode on a file: the memory is a private copy, and only what was flushed before
    /// a barrier reaches the file (what a crash leaves is exactly what was made durable).
    #[test]
    fn fsync_mode_writes_back_exactly_the_flushed_ranges() {
        let dir = std::env::temp_dir().join(format!("pst-pool-wb-{}", std::process::id()));
        let path = dir.join("pool");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = PoolOptions {
            persist: PersistMode::Fsync,
            ..small()
        };
        let p = Pool::open(&path, &opts).unwrap();
        assert!(p.writes_back());
        // SAFETY: the test owns the whole pool; nobody else touches buffers 3 and 4.
        unsafe {
            p.bytes_mut(BufIdx(3), 0, 5).copy_from_slice(b"kept!");
            p.bytes_mut(BufIdx(4), 0, 5).copy_from_slice(b"lost!");
            p.flush(p.buf_ptr(BufIdx(3)), 5);
        }
        p.barrier().unwrap();
        // Written after the barrier, flushed, never made durable: not in the file either.
        // SAFETY: as above.
        unsafe {
            p.bytes_mut(BufIdx(3), 5, 4).copy_from_slice(b"late");
            p.flush(p.buf_ptr(BufIdx(3)).add(5), 4);
        }
        drop(p); // like a crash: no barrier
        let ro = PoolOptions {
            read_only: true,
            ..opts.clone()
        };
        let p = Pool::open(&path, &ro).unwrap();
        // SAFETY: as above (read-only).
        assert_eq!(unsafe { p.bytes(BufIdx(3), 0, 9) }, b"kept!\0\0\0\0");
        // SAFETY: as above (read-only).
        assert_eq!(unsafe { p.bytes(BufIdx(4), 0, 5) }, &[0u8; 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn geometry_partitions_cover_everything() {
        let g = Geometry {
            buf_size: 2048,
            buf_count: 103,
            log_len: 0,
        };
        let parts = g.partitions(4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts[3].end, 103);
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn barrier_modes_work_on_anonymous_pool() {
        for mode in [PersistMode::None, PersistMode::Pmem, PersistMode::Fsync] {
            let p = Pool::anonymous(
                Geometry {
                    buf_size: 512,
                    buf_count: 8,
                    log_len: 0,
                },
                mode,
            )
            .unwrap();
            // SAFETY: buffer 1 of this pool, inside its mapping.
            unsafe { p.flush(p.buf_ptr(BufIdx(1)), 512) };
            p.barrier().unwrap();
        }
    }
}
