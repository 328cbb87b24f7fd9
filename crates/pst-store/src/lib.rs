//! Durable structures over kept pool buffers: a write-ahead log with group commit, a KV index
//! built on it, crash recovery and space reclamation.
//!
//! PASTE's idea, made correct: received data is persisted *where it landed*. A record in the
//! log region names the payload's `(buffer, offset, length)` extents and carries checksums
//! ([`mod@format`]); the payload is never copied. [`Store::commit`] persists every record and
//! payload appended since the last commit with **one** barrier (one `sfence` or one
//! `fdatasync`): callers reply only after it.
//!
//! Ownership: each record holds a reference on the buffers it names, for as long as the record
//! can be seen by recovery. Overwritten and deleted values therefore keep their buffers until
//! compaction moves the live records of the oldest segment forward and frees the segment; the
//! buffers are released only after the segment's invalidation is itself durable, so recovery
//! never reads a recycled buffer through a stale record.
//!
//! The store does no I/O of its own beyond its [`Media`] (the real pool, or [`pst_pool::SimPm`]
//! in tests) and never calls the buffer allocator: released extents are handed back through
//! [`Store::take_released`].
#![deny(unsafe_code)] // one `unsafe` block: recovery rebuilding its buffer references

pub mod format;

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use format::{Kind, RawExtent, Record, SegHeader, REC_HEADER, SEG_HEADER};
use pst_pool::{BufIdx, Header, Media, PersistError};
use pst_ring::Extent;

pub use format::Kind as RecordKind;
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
    Corrupt(String),
    /// The pool's log region already belongs to another store in this process.
    #[error("the pool's log is already claimed by another store")]
    LogClaimed,
    /// The log region is too small or misaligned for a store.
    #[error("log region unusable: {0}")]
    Layout(String),
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
    pub torn: Option<String>,
    /// A record whose header was valid but whose payload checksum failed, followed by more
    /// valid-looking data: corruption rather than a torn tail.
    pub corrupt: Option<String>,
    /// Segments in the log, and how many hold records.
    pub segments: (usize, usize),
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
    /// Barriers issued.
    pub commits: u64,
}

#[derive(Debug, Clone)]
struct RecMeta {
    seq: u64,
    seg: u32,
    kind: Kind,
    key: Option<Arc<[u8]>>,
    extents: Box<[RawExtent]>,
    payload_len: u32,
    payload_crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    Free,
    Active,
    /// Dropped from the log, waiting in the retire queue or being invalidated.
    Retiring,
}

/// A segment on its way out. Retiring is strictly oldest-first and one segment per barrier, so
/// the segments still valid on media always form one contiguous sequence chain: recovery never
/// sees an old freed segment separated from the live log by a gap.
#[derive(Debug)]
struct Retiree {
    seg: u32,
    recs: Vec<RecMeta>,
}

#[derive(Debug)]
struct BufRef {
    refs: u32,
    handles: Vec<Extent>,
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
}

/// The write-ahead log and KV index of one pool partition.
#[derive(Debug)]
pub struct Store<M: Media> {
    media: M,
    header: Header,
    log: Range<u64>,
    seg_size: u64,
    segs: Vec<SegState>,
    /// Active segments, oldest first; the last is the head.
    order: VecDeque<u32>,
    head_pos: u64,
    next_seq: u64,
    next_epoch: u64,
    head_epoch: u64,
    /// Records in sequence order; `records[i].seq == base_seq + i`.
    records: VecDeque<RecMeta>,
    index: HashMap<Arc<[u8]>, u64>,
    trunc_seq: u64,
    retire: VecDeque<Retiree>,
    /// Header zeroed before the next barrier; its records' buffers are released after it.
    invalidating: Option<Retiree>,
    bufs: HashMap<u32, BufRef>,
    released: Vec<Extent>,
    pending: u64,
    durable_seq: u64,
    poisoned: Option<PersistError>,
    scratch: Vec<u8>,
    live_bytes: u64,
    compactions: u64,
    commits: u64,
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
        Self::open_inner(media, log, true, false)
    }

    /// Like [`Store::open`], but when the log is damaged (an acknowledged record fails its
    /// checksum) start from the last intact record instead of refusing: everything after the
    /// damage is dropped. An operator's decision, never a default.
    pub fn open_salvage(
        media: M,
        log: Range<u64>,
    ) -> Result<(Store<M>, RecoveryReport), StoreError> {
        Self::open_inner(media, log, true, true)
    }

    /// Recover and verify without writing anything (for `pst inspect`).
    pub fn inspect(media: M, log: Range<u64>) -> Result<(Store<M>, RecoveryReport), StoreError> {
        Self::open_inner(media, log, false, false)
    }

    fn open_inner(
        media: M,
        log: Range<u64>,
        writable: bool,
        salvage: bool,
    ) -> Result<(Store<M>, RecoveryReport), StoreError> {
        let header = media.header();
        let len = log.end.saturating_sub(log.start);
        let seg_size = format::segment_size(len);
        let n = len / seg_size;
        if n < 3 {
            return Err(StoreError::Layout(format!(
                "{len} bytes give {n} segments; at least 3 are needed"
            )));
        }
        let mut st = Store {
            media,
            header,
            log: log.start..log.start + n * seg_size,
            seg_size,
            segs: (0..n).map(|_| SegState::Free).collect(),
            order: VecDeque::new(),
            head_pos: 0,
            next_seq: 1,
            next_epoch: 1,
            head_epoch: 0,
            records: VecDeque::new(),
            index: HashMap::new(),
            trunc_seq: 0,
            retire: VecDeque::new(),
            invalidating: None,
            bufs: HashMap::new(),
            released: Vec::new(),
            pending: 0,
            durable_seq: 0,
            poisoned: None,
            scratch: Vec::new(),
            live_bytes: 0,
            compactions: 0,
            commits: 0,
        };
        let report = st.recover(writable, salvage)?;
        Ok((st, report))
    }

    fn seg_off(&self, s: u32) -> u64 {
        self.log.start + s as u64 * self.seg_size
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

    fn recover(&mut self, writable: bool, salvage: bool) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let mut found: Vec<(u64, u32, SegHeader)> = Vec::new();
        let mut hb = [0u8; SEG_HEADER];
        for s in 0..self.segs.len() as u32 {
            self.media.read(self.seg_off(s), &mut hb);
            if let Some(h) = SegHeader::decode(&hb, self.seg_size) {
                found.push((h.epoch, s, h));
            }
        }
        found.sort_by_key(|f| f.0);
        let (count, size) = (
            self.header.geometry.buf_count,
            self.header.geometry.buf_size,
        );
        let mut seg_bytes = vec![0u8; self.seg_size as usize];
        // New segments must get an epoch no record anywhere in the log carries, or stale
        // records of an earlier life could pass for new ones. Headers alone do not tell: a
        // segment without a valid header (free, or its header damaged) may hold records of any
        // epoch (found by fuzzing: with every header lost, epochs restarted at 1 and stale
        // records with matching sequence numbers came back after the next write). So every
        // decodable record counts; the scan checks the magic first and costs one read of the
        // log region.
        let mut max_epoch = found.last().map_or(0, |f| f.0);
        for s in 0..self.segs.len() as u32 {
            self.media.read(self.seg_off(s), &mut seg_bytes);
            let mut pos = SEG_HEADER;
            while pos + REC_HEADER <= seg_bytes.len() {
                if seg_bytes[pos..pos + 4] == format::REC_MAGIC.to_le_bytes() {
                    if let Ok(r) = Record::decode(&seg_bytes[pos..], count, size) {
                        max_epoch = max_epoch.max(r.epoch as u64);
                    }
                }
                pos += 8;
            }
        }
        self.next_epoch = max_epoch + 1;
        let mut expected: Option<u64> = None;
        let mut chain: Vec<u32> = Vec::new();
        let mut stopped = false;
        for (i, &(epoch, s, h)) in found.iter().enumerate() {
            // A gap can only follow a torn batch that opened a new segment: stop there.
            if stopped || expected.is_some_and(|e| e != h.first_seq) {
                break;
            }
            let mut next = h.first_seq;
            chain.push(s);
            self.media.read(self.seg_off(s), &mut seg_bytes);
            let mut pos = SEG_HEADER;
            // Why this segment's data ended, when not at a clean end.
            let mut end_reason = None;
            // A record of this segment's life whose payload fails its checksum: always a stop.
            let mut torn_payload = false;
            while pos + REC_HEADER <= seg_bytes.len() {
                let rec = match Record::decode(&seg_bytes[pos..], count, size) {
                    Ok(r) if r.epoch == epoch as u32 && r.seq == next => r,
                    // A record of an earlier life of this segment: this life's data ends here.
                    Ok(r) if r.epoch != epoch as u32 => break,
                    Ok(r) => {
                        end_reason = Some(format!(
                            "record seq {} (epoch {}) where seq {next} was expected in segment {s}",
                            r.seq, r.epoch
                        ));
                        break;
                    }
                    Err(format::RecordError::NoRecord) => break,
                    Err(e) => {
                        end_reason = Some(format!("{e:?} at segment {s} offset {pos}"));
                        break;
                    }
                };
                if self.payload_crc(&rec.extents) != rec.payload_crc {
                    end_reason = Some(format!(
                        "payload checksum mismatch for seq {} (segment {s} offset {pos})",
                        rec.seq
                    ));
                    torn_payload = true;
                    break;
                }
                let len = format::record_len(rec.key.len(), rec.extents.len());
                self.replay(rec, s);
                report.records += 1;
                next += 1;
                pos += len;
            }
            // A segment that filled up ends in whatever an earlier life left there (records of
            // another epoch, fragments): that is a clean end when the next segment carries on
            // from `next`. Anything else ends the log here: a torn tail, or corruption if a
            // later record says `next` had already been committed (and possibly acknowledged).
            let continues = found.get(i + 1).is_some_and(|f| f.2.first_seq == next);
            if let Some(why) = end_reason.filter(|_| torn_payload || !continues) {
                let later = found[i + 1..]
                    .iter()
                    .map(|f| (f.0, f.1))
                    .collect::<Vec<_>>();
                if let Some(ev) = self.committed_evidence(next, epoch, &seg_bytes, pos + 8, &later)
                {
                    report.corrupt = Some(format!("{why}; but {ev} says it was committed"));
                }
                report.torn = Some(why);
                stopped = true;
            }
            self.head_pos = pos as u64;
            self.head_epoch = epoch;
            expected = Some(next);
        }
        self.next_seq = expected.unwrap_or(1);
        self.durable_seq = self.next_seq;
        report.last_seq = self.next_seq - 1;
        for &s in &chain {
            self.segs[s as usize] = SegState::Active;
            self.order.push_back(s);
        }
        // Buffers referenced by replayed records: one allocator reference each, as a handle.
        let bs = self.header.geometry.buf_size;
        for (&b, r) in self.bufs.iter_mut() {
            // SAFETY: recovery rebuilds the references its records hold; the port allocators
            // are created with these counted as live (`holds`), so each handle stands for
            // exactly one reference that nothing else claims.
            #[allow(unsafe_code)]
            r.handles
                .push(unsafe { Extent::from_raw(BufIdx(b), 0, bs) });
        }
        report.live_keys = self.index.len() as u64;
        report.segments = (self.segs.len(), chain.len());
        if writable {
            if let Some(c) = &report.corrupt {
                // Never drop acknowledged data silently: refuse, unless the operator asked to
                // salvage (start from the last intact record, losing what follows it).
                if salvage {
                    tracing::warn!(%c, "log damaged: salvaging from the last intact record; later records are dropped");
                } else {
                    return Err(StoreError::Corrupt(c.clone()));
                }
            }
            // Make the recovered end the durable end: zero the head's tail (a torn record there
            // must never come back) and invalidate valid segments outside the chain.
            if let Some(&h) = self.order.back() {
                let from = self.seg_off(h) + self.head_pos;
                let to = self.seg_off(h) + self.seg_size;
                let zeros = vec![0u8; (to - from) as usize];
                self.media.write(from, &zeros);
                self.media.flush(from, to - from);
            }
            for &(_, s, _) in &found {
                if !chain.contains(&s) {
                    self.invalidate_header(s);
                }
            }
            self.media.barrier().map_err(StoreError::Poisoned)?;
        }
        tracing::debug!(records = report.records, keys = report.live_keys, last_seq = report.last_seq, torn = ?report.torn, "store recovered");
        Ok(report)
    }

    /// Look for a record written after sequence `seq` was committed: in the rest of the current
    /// segment (any 8-byte aligned offset from `from`), then in the later segments.
    fn committed_evidence(
        &self,
        seq: u64,
        epoch: u64,
        seg_bytes: &[u8],
        from: usize,
        later: &[(u64, u32)],
    ) -> Option<String> {
        let (count, size) = (
            self.header.geometry.buf_count,
            self.header.geometry.buf_size,
        );
        let mut pos = from.next_multiple_of(8);
        while pos + REC_HEADER <= seg_bytes.len() {
            if let Ok(r) = Record::decode(&seg_bytes[pos..], count, size) {
                if r.epoch == epoch as u32 && r.durable_before > seq {
                    return Some(format!(
                        "record seq {} (durable bound {})",
                        r.seq, r.durable_before
                    ));
                }
            }
            pos += 8;
        }
        let mut buf = vec![0u8; self.seg_size as usize];
        for &(ep, s) in later {
            self.media.read(self.seg_off(s), &mut buf);
            let mut pos = SEG_HEADER;
            while let Ok(r) = Record::decode(&buf[pos.min(buf.len())..], count, size) {
                if r.epoch != ep as u32 {
                    break;
                }
                if r.durable_before > seq {
                    return Some(format!(
                        "record seq {} in segment {s} (durable bound {})",
                        r.seq, r.durable_before
                    ));
                }
                pos += format::record_len(r.key.len(), r.extents.len());
            }
        }
        None
    }

    fn replay(&mut self, rec: Record, seg: u32) {
        let key: Option<Arc<[u8]>> =
            (rec.kind != Kind::Append).then(|| Arc::from(rec.key.as_slice()));
        let meta = RecMeta {
            seq: rec.seq,
            seg,
            kind: rec.kind,
            key,
            extents: rec.extents.into_boxed_slice(),
            payload_len: rec.payload_len,
            payload_crc: rec.payload_crc,
        };
        self.track(meta);
    }

    /// Add a record to the in-memory log: one store reference per extent on its buffer, the
    /// index updated, the record appended (replay and new appends alike).
    fn track(&mut self, meta: RecMeta) {
        for &(b, _, _) in meta.extents.iter() {
            self.bufs
                .entry(b)
                .or_insert(BufRef {
                    refs: 0,
                    handles: Vec::new(),
                })
                .refs += 1;
        }
        self.index_apply(&meta);
        self.records.push_back(meta);
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
                    let old_len = self.rec(old).map(|r| r.payload_len).unwrap_or(0);
                    self.live_bytes -= old_len as u64;
                }
                self.live_bytes += m.payload_len as u64;
            }
            Kind::Delete => {
                let key = m.key.as_ref().expect("delete has a key");
                if let Some(old) = self.index.remove(key) {
                    let old_len = self.rec(old).map(|r| r.payload_len).unwrap_or(0);
                    self.live_bytes -= old_len as u64;
                }
            }
        }
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(e) => Err(StoreError::Poisoned(e.clone())),
            None => Ok(()),
        }
    }

    fn free_segments(&self) -> usize {
        self.segs.iter().filter(|s| **s == SegState::Free).count()
    }

    /// Open a fresh head segment. Normal appends leave one free segment for compaction.
    fn open_segment(&mut self, for_compaction: bool) -> Result<(), StoreError> {
        let need = if for_compaction { 1 } else { 2 };
        if self.free_segments() < need {
            return Err(StoreError::LogFull);
        }
        let s = self
            .segs
            .iter()
            .position(|s| *s == SegState::Free)
            .expect("counted") as u32;
        let h = SegHeader {
            size: self.seg_size as u32,
            epoch: self.next_epoch,
            first_seq: self.next_seq,
        };
        let off = self.seg_off(s);
        self.media.write(off, &h.encode());
        self.media.flush(off, SEG_HEADER as u64);
        self.segs[s as usize] = SegState::Active;
        self.order.push_back(s);
        self.head_epoch = self.next_epoch;
        self.next_epoch += 1;
        self.head_pos = SEG_HEADER as u64;
        Ok(())
    }

    fn write_record(
        &mut self,
        kind: Kind,
        key: Option<Arc<[u8]>>,
        extents: Box<[RawExtent]>,
        payload_len: u32,
        payload_crc: u32,
        for_compaction: bool,
    ) -> Result<u64, StoreError> {
        let klen = key.as_ref().map(|k| k.len()).unwrap_or(0);
        if klen > format::MAX_KEY {
            return Err(StoreError::TooLarge("key longer than 4096 bytes"));
        }
        if extents.len() > format::MAX_EXTENTS {
            return Err(StoreError::TooLarge("more than 4096 extents"));
        }
        let len = format::record_len(klen, extents.len()) as u64;
        if len + SEG_HEADER as u64 > self.seg_size {
            return Err(StoreError::TooLarge("record larger than a log segment"));
        }
        if self.order.is_empty() || self.head_pos + len > self.seg_size {
            self.open_segment(for_compaction)?;
        }
        let seq = self.next_seq;
        let mut buf = std::mem::take(&mut self.scratch);
        format::RecordFields {
            seq,
            epoch: self.head_epoch as u32,
            kind,
            key: key.as_deref().unwrap_or_default(),
            extents: &extents,
            payload_len,
            payload_crc,
            durable_before: self.durable_seq,
        }
        .encode(&mut buf);
        let head = *self.order.back().expect("a head segment exists");
        let off = self.seg_off(head) + self.head_pos;
        self.media.write(off, &buf);
        self.media.flush(off, len);
        self.scratch = buf;
        self.head_pos += len;
        self.next_seq += 1;
        self.pending += 1;
        let meta = RecMeta {
            seq,
            seg: head,
            kind,
            key,
            extents,
            payload_len,
            payload_crc,
        };
        self.track(meta);
        Ok(seq)
    }

    /// Append a record naming `payload` (each extent is one buffer reference the store takes
    /// over; on error they are released). Flushes the payload's cache lines now (Pmem); it is
    /// durable after the next [`Store::commit`]. Returns the sequence number (the ticket).
    pub fn append(&mut self, payload: Vec<Extent>) -> Result<u64, StoreError> {
        self.add(Kind::Append, None, payload)
    }

    /// Put `key` → `value` (extents as in [`Store::append`]).
    pub fn put(&mut self, key: &[u8], value: Vec<Extent>) -> Result<u64, StoreError> {
        self.add(Kind::Put, Some(Arc::from(key)), value)
    }

    /// Delete `key`; `Ok(None)` when it was absent (nothing logged).
    pub fn delete(&mut self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        if !self.index.contains_key(key) {
            return Ok(None);
        }
        self.add(Kind::Delete, Some(Arc::from(key)), Vec::new())
            .map(Some)
    }

    fn add(
        &mut self,
        kind: Kind,
        key: Option<Arc<[u8]>>,
        payload: Vec<Extent>,
    ) -> Result<u64, StoreError> {
        if let Err(e) = self.check_writable() {
            self.released.extend(payload);
            return Err(e);
        }
        let extents: Box<[RawExtent]> = payload
            .iter()
            .map(|e| (e.buf().0, e.off(), e.len()))
            .collect();
        let len: u64 = extents.iter().map(|e| e.2 as u64).sum();
        let Ok(len) = u32::try_from(len) else {
            self.released.extend(payload);
            return Err(StoreError::TooLarge("payload over 4 GiB"));
        };
        let crc = self.payload_crc(&extents);
        for &(b, o, l) in extents.iter() {
            self.media.flush(self.buf_off(b, o), l as u64);
        }
        match self.write_record(kind, key, extents, len, crc, false) {
            Ok(seq) => {
                for e in payload {
                    let b = e.buf().0;
                    self.bufs
                        .get_mut(&b)
                        .expect("write_record counted it")
                        .handles
                        .push(e);
                }
                Ok(seq)
            }
            Err(e) => {
                self.released.extend(payload);
                Err(e)
            }
        }
    }

    /// Group commit: one persist barrier makes every record appended so far durable. Then
    /// retire compacted segments (see the crate docs for the ordering). Returns the durable
    /// sequence bound: every seq below it is durable.
    pub fn commit(&mut self) -> Result<u64, StoreError> {
        self.check_writable()?;
        if !self.needs_commit() {
            return Ok(self.durable_seq);
        }
        if let Err(e) = self.media.barrier() {
            tracing::error!(error = %e, "persist barrier failed; store poisoned");
            self.poisoned = Some(e.clone());
            return Err(StoreError::Poisoned(e));
        }
        self.commits += 1;
        self.pending = 0;
        self.durable_seq = self.next_seq;
        // The invalidation written before this barrier is durable: release its buffers.
        if let Some(r) = self.invalidating.take() {
            for rec in &r.recs {
                self.drop_refs(rec);
            }
            self.segs[r.seg as usize] = SegState::Free;
        }
        // Next in line: zero its header (durable at the next barrier). Anything it depends on
        // (a compacted segment's re-appended live records) was written before the barrier above.
        if let Some(r) = self.retire.pop_front() {
            self.invalidate_header(r.seg);
            self.invalidating = Some(r);
        }
        Ok(self.durable_seq)
    }

    fn invalidate_header(&mut self, s: u32) {
        let off = self.seg_off(s);
        self.media.write(off, &[0u8; SEG_HEADER]);
        self.media.flush(off, SEG_HEADER as u64);
    }

    fn drop_refs(&mut self, r: &RecMeta) {
        for &(b, _, _) in r.extents.iter() {
            let e = self.bufs.get_mut(&b).expect("record holds a reference");
            e.refs -= 1;
            if e.refs == 0 {
                let e = self.bufs.remove(&b).expect("present");
                self.released.extend(e.handles);
            }
        }
    }

    /// True when a commit would do anything (appends pending, or segments to retire).
    pub fn needs_commit(&self) -> bool {
        self.pending > 0 || self.invalidating.is_some() || !self.retire.is_empty()
    }

    /// Every sequence number below this is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Extents whose buffers the store no longer needs: give them back to the allocator.
    pub fn take_released(&mut self) -> Vec<Extent> {
        std::mem::take(&mut self.released)
    }

    /// True when the store holds a reference on buffer `b` (recovery: the port must treat it
    /// as allocated).
    pub fn holds(&self, b: BufIdx) -> bool {
        self.bufs.contains_key(&b.0)
    }

    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<ValueRef<'_>> {
        let seq = *self.index.get(key)?;
        let r = self.rec(seq)?;
        Some(ValueRef {
            extents: &r.extents,
            len: r.payload_len,
            crc: r.payload_crc,
            seq,
        })
    }

    /// True when the value's bytes still match its checksum (never serve one that does not).
    pub fn verify(&self, v: &ValueRef<'_>) -> bool {
        self.payload_crc(v.extents) == v.crc
    }

    /// Copy the value of `key` into `out` after verifying its checksum. `Ok(false)` if absent.
    pub fn read_value(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StoreError> {
        out.clear();
        let Some(v) = self.get(key) else {
            return Ok(false);
        };
        for &(b, o, l) in v.extents {
            self.media
                .with_bytes(self.buf_off(b, o), l as usize, |x| out.extend_from_slice(x));
        }
        if crc32c::crc32c(out) != v.crc {
            out.clear();
            return Err(StoreError::Layout(format!(
                "value checksum mismatch (seq {})",
                v.seq
            )));
        }
        Ok(true)
    }

    /// Live keys.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.index.keys().map(|k| &k[..])
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Records from `seq` on (WAL consumers), skipping truncated ones.
    pub fn read_from(&self, seq: u64) -> impl Iterator<Item = RecordView<'_>> {
        let from = seq.max(self.trunc_seq).saturating_sub(self.base_seq()) as usize;
        self.records
            .range(from.min(self.records.len())..)
            .map(|r| RecordView {
                seq: r.seq,
                kind: r.kind,
                key: r.key.as_deref().unwrap_or(&[]),
                extents: &r.extents,
            })
    }

    /// Drop WAL records below `seq`. Segments holding only such records are freed (their
    /// buffers released after the next durable barrier); records sharing a segment with newer
    /// ones stay on media until compaction, and may be seen again after a crash.
    pub fn truncate_before(&mut self, seq: u64) {
        self.trunc_seq = self.trunc_seq.max(seq.min(self.next_seq));
        while self.order.len() > 1 {
            let s = self.order[0];
            let all_dead = self
                .records
                .iter()
                .take_while(|r| r.seg == s)
                .all(|r| !self.is_live(r));
            if !all_dead {
                break;
            }
            self.order.pop_front();
            let mut recs = Vec::new();
            while self.records.front().is_some_and(|r| r.seg == s) {
                let r = self.records.pop_front().expect("front");
                if r.kind == Kind::Append {
                    self.live_bytes -= r.payload_len as u64;
                }
                recs.push(r);
            }
            self.segs[s as usize] = SegState::Retiring;
            self.retire.push_back(Retiree { seg: s, recs });
        }
    }

    /// WAL retention: drop the records of the oldest segment (a bounded log, like phttpd's
    /// circular one). Returns false when only the head segment is left.
    pub fn drop_oldest_segment(&mut self) -> bool {
        if self.order.len() < 2 {
            return false;
        }
        let s = self.order[0];
        let Some(next) = self.records.iter().find(|r| r.seg != s).map(|r| r.seq) else {
            return false;
        };
        self.truncate_before(next);
        true
    }

    /// Free log segments and total segments.
    pub fn segment_space(&self) -> (usize, usize) {
        (self.free_segments(), self.segs.len())
    }

    fn is_live(&self, r: &RecMeta) -> bool {
        match r.kind {
            Kind::Append => r.seq >= self.trunc_seq,
            Kind::Put => r.key.as_ref().and_then(|k| self.index.get(k)) == Some(&r.seq),
            Kind::Delete => false,
        }
    }

    /// Space reclamation, bounded work per call: when free segments run low (or `pressure` says
    /// the pool is short of buffers), compact the oldest segment — re-append its live records
    /// (same payload extents, no copy) and retire it. Call once per batch, before `commit`.
    pub fn maintain(&mut self, pressure: bool) -> Result<bool, StoreError> {
        self.check_writable()?;
        let low = self.free_segments() * 4 < self.segs.len();
        if !(low || pressure) || self.order.len() < 2 {
            return Ok(false);
        }
        let s = self.order[0];
        let recs: Vec<usize> = (0..self.records.len())
            .take_while(|&i| self.records[i].seg == s)
            .collect();
        let live = recs
            .iter()
            .filter(|&&i| self.is_live(&self.records[i]))
            .count();
        if live == recs.len() && !recs.is_empty() {
            return Ok(false); // nothing to reclaim here
        }
        self.compact_oldest()?;
        Ok(true)
    }

    fn compact_oldest(&mut self) -> Result<(), StoreError> {
        let s = self.order.pop_front().expect("at least two segments");
        let mut old = Vec::new();
        while self.records.front().is_some_and(|r| r.seg == s) {
            old.push(self.records.pop_front().expect("front"));
        }
        for r in &old {
            if !self.is_live(r) {
                continue;
            }
            self.live_bytes -= r.payload_len as u64; // re-added by write_record
            self.write_record(
                r.kind,
                r.key.clone(),
                r.extents.clone(),
                r.payload_len,
                r.payload_crc,
                true,
            )?;
        }
        self.segs[s as usize] = SegState::Retiring;
        // Invalidated only after the next barrier has made the re-appended records durable.
        self.retire.push_back(Retiree { seg: s, recs: old });
        self.compactions += 1;
        Ok(())
    }

    /// Delete every key (Redis FLUSHALL); returns how many.
    pub fn clear(&mut self) -> Result<usize, StoreError> {
        let keys: Vec<Arc<[u8]>> = self.index.keys().cloned().collect();
        for k in &keys {
            self.delete(k)?;
        }
        Ok(keys.len())
    }

    /// Figures for monitoring and `pst inspect`.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.records.len() as u64,
            live_keys: self.index.len() as u64,
            live_bytes: self.live_bytes,
            buffers_held: self.bufs.len() as u64,
            segments: self.segs.len() as u64,
            free_segments: self.free_segments() as u64,
            compactions: self.compactions,
            commits: self.commits,
        }
    }

    /// The media (tests use it to crash a simulated one).
    pub fn media(&self) -> &M {
        &self.media
    }
}
