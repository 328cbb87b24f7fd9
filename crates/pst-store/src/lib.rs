//! Durable structures over kept pool buffers: a write-ahead log with group commit, a KV index
//! built on it, crash recovery and space reclamation.
//!
//! PASTE's idea, made correct: received data is persisted *where it landed*. A record in the
//! log region names the payload's `(buffer, offset, length)` extents and carries checksums
//! ([`mod@format`]); the payload is never copied. [`Store::commit`] persists every record and
//! payload appended since the last commit with **one** barrier (one `sfence` or one
//! `fdatasync`): callers reply only after it.
//!
//! The commit is split so that its barrier can run elsewhere — an io_uring `FSYNC` in flight
//! while the next batch is received and appended: [`Store::begin_commit`] fixes the bound (every
//! record appended before it, by any worker), the caller runs the barrier, and
//! [`Store::finish_commit`] advances [`Store::durable_seq`], frees the segment the barrier
//! invalidated and poisons the store if the barrier failed. One commit at a time. Which replies
//! must wait is tracked by sequence number: [`Store::take_dependency`] says which records what a
//! reply read or wrote depends on, and the reply may leave once `durable_seq` covers them — so a
//! read of committed data never waits for someone else's commit.
//!
//! Ownership: each record holds a reference on the buffers it names. A put's references go
//! when its value does (overwritten, deleted, cleared) and the record that ended it is
//! durable: recovery checks the payload of a value only when it is live at the end of the log,
//! so a stale record naming a recycled buffer is harmless once its successor is durable.
//! Appends (WAL records) hold their buffers until compaction or truncation frees their segment
//! and the segment's invalidation is itself durable, so recovery never reads a recycled
//! buffer through a WAL record.
//!
//! The store does no I/O of its own beyond its [`Media`] (the real pool, or [`pst_pool::SimPm`]
//! in tests) and never calls the buffer allocator: released extents are handed back through
//! [`Store::take_released`].
#![deny(unsafe_code)] // two `unsafe` blocks: recovery rebuilding its buffer references, and
                      // the simulated landing zone (`sim`) naming buffers it allocated itself

mod append;
mod buftable;
pub mod format;
mod read;
mod recovery;
pub mod sim;
mod space;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use format::{Kind, RawExtent, Record, SegHeader, REC_HEADER, SEG_HEADER};
use pst_pool::{BufIdx, Header, Media, PersistError};
use pst_ring::Extent;

pub use format::Kind as RecordKind;

/// A value's extents as handed to [`Store::put`] and [`Store::append`]: up to two inline
/// (a value in one or two buffers, the common case, allocates no list). A `Vec<Extent>`
/// converts into it.
pub type ValueExtents = pst_ring::ExtentList;
pub use pst_pool::PoolMedia;

/// A store over a real pool (its log region and buffers): what servers use.
pub type PoolStore = Store<PoolMedia>;

/// Store errors.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No free log segment: compaction could not reclaim space (too much live data).
    #[error("log is full")]
    LogFull,
    /// The key or extent list exceeds the format limits.
    #[error("record too large: {0}")]
    TooLarge(&'static str),
    /// A persist barrier failed; the store refuses further writes (restart to recover).
    #[error("store is poisoned by a failed persist: {0}")]
    Poisoned(PersistError),
    /// An acknowledged record is damaged: recovery refuses to drop it silently.
    #[error("log corruption: {0}")]
    Corrupt(Damage),
    /// A stored value's bytes fail the checksum its record carries: it is not served.
    #[error("stored value of record {seq} fails its checksum")]
    ValueCorrupt {
        /// The record's sequence number.
        seq: u64,
    },
    /// A commit was begun and not finished: one commit at a time.
    #[error("a commit is already in flight")]
    CommitInFlight,
    /// The pool's log region already belongs to another store in this process.
    #[error("the pool's log is already claimed by another store")]
    LogClaimed,
    /// The log region is too small or misaligned for a store.
    #[error("log region unusable: {0}")]
    Layout(String),
}

/// What recovery may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Read and verify only; write nothing (`pst inspect`).
    Inspect,
    /// Recover and make the recovered end durable; refuse a log with damaged acknowledged
    /// records.
    Open,
    /// As `Open`, but start from the last intact record of a damaged log (an operator's
    /// decision: what follows the damage is dropped).
    Salvage,
}

/// Why recovery's scan of the log stopped before a clean end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogEnd {
    /// A record of this segment's life with the wrong sequence number.
    OutOfOrder {
        /// The segment.
        segment: u32,
        /// The sequence number found.
        seq: u64,
        /// Its epoch.
        epoch: u32,
        /// The sequence number expected.
        expected: u64,
    },
    /// Bytes that are not a valid record header where one was expected.
    BadRecord {
        /// The segment.
        segment: u32,
        /// Byte offset in the segment.
        offset: usize,
        /// What is wrong with them.
        error: format::RecordError,
    },
    /// A valid record header whose payload fails its checksum.
    PayloadChecksum {
        /// The segment.
        segment: u32,
        /// Byte offset in the segment.
        offset: usize,
        /// The record's sequence number.
        seq: u64,
    },
}

impl std::fmt::Display for LogEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogEnd::OutOfOrder { segment, seq, epoch, expected } => write!(
                f,
                "record seq {seq} (epoch {epoch}) where seq {expected} was expected in segment {segment}"
            ),
            LogEnd::BadRecord { segment, offset, error } => {
                write!(f, "{error:?} at segment {segment} offset {offset}")
            }
            LogEnd::PayloadChecksum { segment, offset, seq } => write!(
                f,
                "payload checksum mismatch for seq {seq} (segment {segment} offset {offset})"
            ),
        }
    }
}

/// Damage to acknowledged data: the log ended early, but a later record proves that what
/// followed had been committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where and why the log ended.
    pub end: LogEnd,
    /// The later record that says the data was committed: its sequence number, its durable
    /// bound, and its segment when it is in another one.
    pub evidence: (u64, u64, Option<u32>),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seq, bound, seg) = self.evidence;
        match seg {
            Some(s) => write!(
                f,
                "{}; but record seq {seq} in segment {s} (durable bound {bound}) says it was committed",
                self.end
            ),
            None => write!(
                f,
                "{}; but record seq {seq} (durable bound {bound}) says it was committed",
                self.end
            ),
        }
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records replayed.
    pub records: u64,
    /// Live keys after replay.
    pub live_keys: u64,
    /// Sequence number of the last record replayed (0 if none).
    pub last_seq: u64,
    /// Why the scan stopped, if not at clean end of data: a torn tail.
    pub torn: Option<LogEnd>,
    /// The log ended early although a later record says the data past that point had been
    /// committed (and possibly acknowledged): corruption rather than a torn tail.
    pub corrupt: Option<Damage>,
    /// Segments in the log, and how many hold records.
    pub segments: (usize, usize),
    /// Records of an atomic group (`EXEC`) the log ended inside of: never applied, and cut
    /// from the log (the group is all or nothing).
    pub dropped_group: u64,
    /// Salvage only: values that cutting the log at the damage made current again but whose
    /// bytes were already reused (their successors lay past the damage); their keys were
    /// deleted.
    pub lost_values: u64,
    /// The log ends in a seal: the last stop was clean ([`Store::seal`]).
    pub sealed: bool,
}

/// Space and content figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records in the log (including superseded ones not yet compacted).
    pub records: u64,
    /// Live keys.
    pub live_keys: u64,
    /// Payload bytes of live values (and of WAL records not truncated).
    pub live_bytes: u64,
    /// Buffers the store holds references on.
    pub buffers_held: u64,
    /// Log segments: total, free.
    pub segments: u64,
    /// Free log segments.
    pub free_segments: u64,
    /// Segments compacted so far.
    pub compactions: u64,
    /// Log bytes held by dead records (superseded or deleted values, tombstones) until the
    /// cleaner rotates past them.
    pub dead_log_bytes: u64,
    /// Usable log bytes (segments less their headers).
    pub log_capacity: u64,
    /// Segments borrowed from the data region (version 2 pools), included in `segments`.
    pub borrowed_segments: u64,
    /// Buffers lent for relocated values and not yet used.
    pub spare_buffers: u64,
    /// Values the cleaner moved out of mostly dead buffers.
    pub relocations: u64,
    /// Barriers issued.
    pub commits: u64,
}

#[derive(Debug, Clone)]
struct RecMeta {
    seq: u64,
    seg: u32,
    kind: Kind,
    key: Option<Arc<[u8]>>,
    extents: Extents,
    payload_len: u32,
    payload_crc: u32,
    /// The record holds one reference on each buffer it names. A put stops holding them when
    /// its value goes (overwritten, deleted, cleared): the references move to `Store::dying`
    /// and are dropped once the record that ended the value is durable.
    held: bool,
}

/// The KV index's map.
type Index = HashMap<Arc<[u8]>, u64, ahash::RandomState>;

/// A record's extents: one inline (a value that landed in, or was packed into, one buffer:
/// no allocation per record), more on the heap.
type Extents = smallvec::SmallVec<[RawExtent; 1]>;

impl RecMeta {
    /// Bytes the record takes in its segment.
    fn log_len(&self) -> u64 {
        format::record_len(self.key.as_ref().map_or(0, |k| k.len()), self.extents.len()) as u64
    }
}

/// What one segment's records take: see `Store::seg_use`.
#[derive(Debug, Clone, Copy, Default)]
struct SegUse {
    /// Log bytes of its records.
    bytes: u64,
    /// Of those, dead KV records' (superseded or deleted puts, tombstones, clears).
    dead: u64,
    /// Whether it holds WAL appends (those die by truncation, which this does not count).
    appends: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    Free,
    Active,
    /// Dropped from the log, waiting in the retire queue or being invalidated.
    Retiring,
    /// A slot of the data region the log does not have: its buffers are the allocator's
    /// (version 2 pools; see [`Store::segment_wanted`]).
    Lent,
}

/// A segment on its way out. Retiring is strictly oldest-first and one segment per barrier, so
/// the segments still valid on media always form one contiguous sequence chain: recovery never
/// sees an old freed segment separated from the live log by a gap.
#[derive(Debug)]
struct Retiree {
    seg: u32,
    recs: Vec<RecMeta>,
}

/// A commit between [`Store::begin_commit`] and [`Store::finish_commit`].
#[derive(Debug)]
struct InFlight {
    /// Every record below this sequence number is covered by the barrier.
    upto: u64,
    /// The segment whose zeroed header this barrier makes durable (written before it began).
    invalidated: Option<Retiree>,
    /// How many segments at the front of the retire queue were queued before the barrier
    /// began, so that the records they depend on (re-appended live records) are covered by it.
    retire_ready: usize,
}

#[derive(Debug, Default)]
struct BufRef {
    refs: u32,
    /// Bytes of live KV values in the buffer: the cleaner relocates the values of buffers
    /// that are mostly dead (`space::Store::relocate`).
    live: u32,
    handles: pst_ring::ExtentList,
}

/// A value as stored: its extents, length and checksum.
#[derive(Debug, Clone, Copy)]
pub struct ValueRef<'a> {
    /// Payload extents `(buffer, offset, length)`.
    pub extents: &'a [RawExtent],
    /// Payload length.
    pub len: u32,
    /// Payload CRC32C.
    pub crc: u32,
    /// Sequence number of the record.
    pub seq: u64,
}

/// One record as seen by a WAL consumer.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: Kind,
    /// Key (empty for appends).
    pub key: &'a [u8],
    /// Payload extents.
    pub extents: &'a [RawExtent],
    /// Payload length.
    pub len: u32,
    /// Payload CRC32C.
    pub crc: u32,
}

impl<'a> RecordView<'a> {
    /// The record's payload as a [`ValueRef`] (to verify or send it).
    pub fn value(&self) -> ValueRef<'a> {
        ValueRef {
            extents: self.extents,
            len: self.len,
            crc: self.crc,
            seq: self.seq,
        }
    }
}

/// The write-ahead log and KV index of one pool partition.
#[derive(Debug)]
pub struct Store<M: Media> {
    media: M,
    header: Header,
    log: Range<u64>,
    seg_size: u64,
    /// Segments `0..n_base` are the log region's; the rest are slots of the data region
    /// (format docs), each `slot_bufs` buffers.
    segs: Vec<SegState>,
    n_base: u32,
    slot_bufs: u32,
    /// How many of `segs` are free, and lent (kept by `set_seg`).
    seg_counts: (usize, usize),
    /// Active segments, oldest first; the last is the head.
    order: VecDeque<u32>,
    head_pos: u64,
    next_seq: u64,
    next_epoch: u64,
    head_epoch: u64,
    /// Records in sequence order; `records[i].seq == base_seq + i`.
    records: VecDeque<RecMeta>,
    /// Live keys → their put's sequence number. Hashed with aHash (randomly keyed per map:
    /// keys come from clients, so the hash must resist chosen collisions), several times
    /// faster than std's SipHash on short keys: every SET hashes its key twice.
    index: Index,
    trunc_seq: u64,
    retire: VecDeque<Retiree>,
    /// Header zeroed before the next barrier; its records' buffers are released after it.
    invalidating: Option<Retiree>,
    bufs: buftable::BufTable,
    /// Buffers of values that went (overwritten, deleted, cleared), each with the sequence
    /// number of the record that ended it: the reference is dropped once that record is
    /// durable (`finish_commit`). Recovery checks only the payloads of values live at the end
    /// of the log, so a superseded value's buffer may be reused as soon as its successor is
    /// durable, long before the cleaner retires its record.
    dying: VecDeque<(u64, u32)>,
    released: Vec<Extent>,
    /// Emptied record lists of retired segments, for the next retirements' (at most 8).
    spare_recs: Vec<Vec<RecMeta>>,
    pending: u64,
    durable_seq: u64,
    /// The commit begun and not yet finished: its barrier runs elsewhere (an io_uring
    /// `FSYNC`). At most one at a time (see [`Store::begin_commit`]).
    in_flight: Option<InFlight>,
    /// One past the newest record that what was read or written since the last
    /// [`Store::take_dependency`] depends on (0: none).
    dependency: Cell<u64>,
    /// Sequence number of the newest delete record: a read that finds a key absent depends
    /// on it (the delete could still be taken back by a crash).
    last_removal: u64,
    poisoned: Option<PersistError>,
    scratch: Vec<u8>,
    live_bytes: u64,
    /// Log bytes of the KV records in `records` that are dead (superseded or deleted puts,
    /// tombstones): what rotating the whole log would give back. Kept by `index_apply` and
    /// the two places records leave `records`.
    dead_log_bytes: u64,
    /// Log bytes of the records in each segment, and how many of them are dead KV records,
    /// by segment number (reset when a segment opens): the cleaner decides on the oldest
    /// segment without scanning it.
    seg_use: Vec<SegUse>,
    compactions: u64,
    commits: u64,
    /// An open atomic group, with the log offset and length of its last record so far.
    group: Option<Option<(u64, u64)>>,
    /// Buffers the caller lent for relocated values ([`Store::grant_spare`]), each held by
    /// the store's own reference until filled; the one being filled and its bytes used.
    spares: VecDeque<u32>,
    target: Option<(u32, u32)>,
    /// Values relocated so far.
    relocations: u64,
    /// The log ends in a seal and nothing was written since ([`Store::seal`]).
    sealed: bool,
}

impl Store<PoolMedia> {
    /// Open (and recover) the store of `pool`, which owns the pool's whole log region: the
    /// usual way to get a store over a real pool. Fails with [`StoreError::LogClaimed`] if
    /// another store of this process has it.
    pub fn open_pool(
        pool: &std::sync::Arc<pst_pool::Pool>,
    ) -> Result<(Store<PoolMedia>, RecoveryReport), StoreError> {
        let media = pool.claim_log().ok_or(StoreError::LogClaimed)?;
        let h = *pool.header();
        Store::open(media, h.log_off..h.log_off + h.geometry.log_len)
    }
}

impl<M: Media> Store<M> {
    /// Open the store on the log range `log` (file offsets inside the pool's log region) and
    /// recover: scan the segments in epoch order, replay records until the first one that fails
    /// a check, rebuild the index and the set of referenced buffers, and make the recovered end
    /// durable (zeroing the torn tail and stale segments) before any new append.
    pub fn open(media: M, log: Range<u64>) -> Result<(Store<M>, RecoveryReport), StoreError> {
        Self::open_inner(media, log, Recovery::Open)
    }

    /// Like [`Store::open`], but when the log is damaged (an acknowledged record fails its
    /// checksum) start from the last intact record instead of refusing: everything after the
    /// damage is dropped. An operator's decision, never a default.
    pub fn open_salvage(
        media: M,
        log: Range<u64>,
    ) -> Result<(Store<M>, RecoveryReport), StoreError> {
        Self::open_inner(media, log, Recovery::Salvage)
    }

    /// Recover and verify without writing anything (for `pst inspect`).
    pub fn inspect(media: M, log: Range<u64>) -> Result<(Store<M>, RecoveryReport), StoreError> {
        Self::open_inner(media, log, Recovery::Inspect)
    }

    fn seg_off(&self, s: u32) -> u64 {
        match s.checked_sub(self.n_base) {
            None => self.log.start + s as u64 * self.seg_size,
            Some(j) => self.header.data_off + j as u64 * self.seg_size,
        }
    }

    /// The log salt that seeds segment header checksums (version 2 pools).
    fn salt(&self) -> Option<u64> {
        self.header.log_may_grow().then_some(self.header.log_salt)
    }

    /// The buffers of slot segment `s` (empty for a log region segment).
    fn slot_buffers(&self, s: u32) -> Range<u32> {
        match s.checked_sub(self.n_base) {
            None => 0..0,
            Some(j) => j * self.slot_bufs..(j + 1) * self.slot_bufs,
        }
    }

    /// Segments the log has now: the log region's and the slots it borrowed.
    fn owned_segments(&self) -> usize {
        self.segs.len() - self.seg_counts.1
    }

    fn buf_off(&self, b: u32, off: u32) -> u64 {
        self.header.data_off + b as u64 * self.header.geometry.buf_size as u64 + off as u64
    }

    fn payload_crc(&self, extents: &[RawExtent]) -> u32 {
        let mut crc = 0;
        for &(b, o, l) in extents {
            crc = self
                .media
                .with_bytes(self.buf_off(b, o), l as usize, |bytes| {
                    crc32c::crc32c_append(crc, bytes)
                });
        }
        crc
    }

    fn base_seq(&self) -> u64 {
        self.records.front().map(|r| r.seq).unwrap_or(self.next_seq)
    }

    fn rec(&self, seq: u64) -> Option<&RecMeta> {
        let i = seq.checked_sub(self.base_seq())?;
        self.records.get(i as usize)
    }

    fn index_apply(&mut self, m: &RecMeta) {
        match m.kind {
            Kind::Append => self.live_bytes += m.payload_len as u64,
            Kind::Put => {
                let key = m.key.clone().expect("put has a key");
                if let Some(old) = self.index.insert(key, m.seq) {
                    self.value_gone(old, m.seq);
                }
                self.live_bytes += m.payload_len as u64; // its buffers' live bytes: `track`
            }
            Kind::Delete => {
                let key = m.key.as_ref().expect("delete has a key");
                if let Some(old) = self.index.remove(key) {
                    self.value_gone(old, m.seq);
                }
                self.count_dead(m.seg, m.log_len()); // a tombstone is dead from the start
            }
            Kind::Clear => {
                for (_, old) in std::mem::take(&mut self.index) {
                    self.value_gone(old, m.seq);
                }
                self.count_dead(m.seg, m.log_len());
            }
            Kind::Seal => self.count_dead(m.seg, m.log_len()),
        }
    }

    /// The put record `seq` left the index (overwritten, deleted, cleared) by record `by`:
    /// its value is no longer live, its record is dead log space, and its buffer references
    /// are dropped once `by` is durable (`dying`).
    fn value_gone(&mut self, seq: u64, by: u64) {
        let Some(i) = seq.checked_sub(self.base_seq()) else {
            return;
        };
        // Fields borrowed apart (not through `rec`), so the extents need no copy.
        let Some(r) = self.records.get_mut(i as usize) else {
            return;
        };
        self.live_bytes -= r.payload_len as u64;
        let (seg, len) = (r.seg, r.log_len());
        debug_assert!(r.held, "a live put holds its buffers");
        r.held = false;
        for &(b, _, l) in r.extents.iter() {
            if let Some(x) = self.bufs.get_mut(b) {
                x.live = x.live.saturating_sub(l);
            }
            self.dying.push_back((by, b));
        }
        self.count_dead(seg, len);
    }

    /// `len` more bytes of segment `seg`'s KV records are dead: in the log's total, which
    /// decides growth, and in the segment's, which the cleaner decides by.
    fn count_dead(&mut self, seg: u32, len: u64) {
        self.dead_log_bytes += len;
        self.seg_use[seg as usize].dead += len;
    }

    /// Drop the references of gone values whose successor records are below `durable`.
    fn release_dying(&mut self, durable: u64) {
        while let Some(&(by, b)) = self.dying.front() {
            if by >= durable {
                break;
            }
            self.dying.pop_front();
            self.unref(b);
        }
    }

    /// Take a value's bytes out of its buffers' live bytes.
    fn buf_dead(&mut self, extents: &[RawExtent]) {
        for &(b, _, l) in extents {
            if let Some(r) = self.bufs.get_mut(b) {
                r.live = r.live.saturating_sub(l);
            }
        }
    }

    /// Record bytes one segment holds (its size less its header).
    fn seg_capacity(&self) -> u64 {
        self.seg_size - SEG_HEADER as u64
    }

    /// Bytes left in the head segment (0 when none is open).
    fn head_room(&self) -> u64 {
        match self.order.is_empty() {
            true => 0,
            false => self.seg_size - self.head_pos,
        }
    }

    /// Figures for monitoring and `pst inspect`.
    pub fn stats(&self) -> StoreStats {
        debug_assert_eq!(
            self.seg_counts,
            (
                self.segs.iter().filter(|s| **s == SegState::Free).count(),
                self.segs.iter().filter(|s| **s == SegState::Lent).count()
            ),
            "segment counts drifted"
        );
        StoreStats {
            records: self.records.len() as u64,
            live_keys: self.index.len() as u64,
            live_bytes: self.live_bytes,
            buffers_held: self.bufs.len() as u64,
            segments: self.owned_segments() as u64,
            free_segments: self.free_segments() as u64,
            compactions: self.compactions,
            dead_log_bytes: self.dead_log_bytes,
            log_capacity: self.owned_segments() as u64 * self.seg_capacity(),
            borrowed_segments: (self.owned_segments() - self.n_base as usize) as u64,
            spare_buffers: self.spares.len() as u64,
            relocations: self.relocations,
            commits: self.commits,
        }
    }

    /// The media (tests use it to crash a simulated one).
    pub fn media(&self) -> &M {
        &self.media
    }
}
