//! The on-media log format, versions 1 and 2. Pure encode/decode with checked views: decoding
//! never panics on arbitrary bytes.
//!
//! The log region is cut into equal **segments** ([`segment_size`]). Each starts with a 64-byte
//! segment header; records follow at 8-byte aligned offsets. All integers little-endian. The
//! offsets in the tables below are the ones the code uses, named in the private `seg` and `rec`
//! layout modules.
//!
//! **Version 2** (pools with a version 2 header, `pst_pool::header`) adds segments outside the
//! log region: the buffers of the data region are grouped in **slots** of
//! `segment size / buffer size` buffers (slot `j` is buffers `j*k .. (j+1)*k`, at file offset
//! `data_off + j * segment size`), and the store may borrow a whole free slot from the buffer
//! allocator and use it as one more segment of its log; once the cleaner has emptied it and its
//! invalidation is durable, it goes back to the buffers. So the log and the values share one
//! space: small values no longer fill the log region first while buffers stay empty, and large
//! ones are not held back by a log region sized for small ones. Segments are numbered log
//! region first (`0..n`), then slots (`n + j`). Recovery reads every segment position, slots
//! included; since slots hold clients' values when they are not lent to the log, a version 2
//! segment header's checksum is seeded with the pool's random log salt (CRC32C over the salt's
//! 8 bytes, then over bytes 0..36), which a client cannot know: no value passes for a segment
//! header. A version 2 record's header checksum is seeded the same way: a slot's bytes past its
//! head are whatever a client stored there in the slot's earlier life, and must never pass for
//! a record of the current epoch either. Otherwise records are the same in both versions.
//!
//! Segment header:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0  | 8 | magic `b"PSTSEG01"` |
//! | 8  | 4 | format version (1, or 2 in a version 2 pool) |
//! | 12 | 4 | segment size in bytes |
//! | 16 | 8 | epoch: increases by one for every segment ever opened in this log |
//! | 24 | 8 | sequence number of the first record written in this segment |
//! | 32 | 4 | reserved (0) |
//! | 36 | 4 | CRC32C of bytes 0..36 (version 2: seeded with the log salt, see above) |
//!
//! A freed segment has its header zeroed; a reused one gets a new header with a new epoch, so
//! stale records left in it (which carry the old epoch) are never mistaken for new ones.
//!
//! Record:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0  | 4 | magic `0x5053_5452` |
//! | 4  | 4 | record length in the log, a multiple of 8 |
//! | 8  | 8 | sequence number (consecutive across the log) |
//! | 16 | 4 | low 32 bits of the segment's epoch |
//! | 20 | 1 | kind: 1 append (WAL), 2 put (KV), 3 delete (KV), 4 clear (KV: every key), 5 seal |
//! | 21 | 1 | flags: bit 0 = [`FLAG_GROUP`], the other bits 0 |
//! | 22 | 2 | key length |
//! | 24 | 4 | payload length (sum of the extents' lengths) |
//! | 28 | 2 | extent count |
//! | 30 | 2 | reserved (0) |
//! | 32 | 4 | CRC32C of the payload bytes, extent by extent |
//! | 36 | 8 | durable bound when written: every lower sequence number was already committed |
//! | 44 | 4 | CRC32C of bytes 0..44, the key and the extent table (version 2: seeded with the log salt) |
//! | 48 | key length | key bytes |
//! | 48 + key, padded to 4 | 12 per extent | extent table: buffer index u32, offset u32, length u32 |
//!
//! The payload itself is *not* in the log: it stays in the pool buffers where the kernel put
//! it (PASTE's "persist where it landed"); the record names it. A torn record fails the header
//! CRC (or its epoch/sequence check); a record whose payload did not fully persist fails the
//! payload CRC. Recovery stops at the first of either, with one exception: a put's payload is
//! checked only when its value is live at the end of what recovery keeps. A put overwritten,
//! deleted or cleared by a later record gives its buffers back once that record is durable, so
//! its payload may be other data by then; its value is never served. The durable bound tells a
//! torn tail from corruption: if any later record says the failed one had already been
//! committed, it was acknowledged, and recovery refuses to silently drop it. A clean shutdown
//! ends the log with a **seal** record (kind 5, no key, no payload), written and made durable
//! after the final commit, whose durable bound is its own sequence number: so damage to the
//! last records of a cleanly stopped server is refused as corruption too, where without a
//! later record it would pass for a torn tail and the acknowledged writes in it would be lost
//! silently.

use std::ops::Range;

/// Where each segment header field lies (the table above).
mod seg {
    use std::ops::Range;

    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const SIZE: Range<usize> = 12..16;
    pub const EPOCH: Range<usize> = 16..24;
    pub const FIRST_SEQ: Range<usize> = 24..32;
    // 32..36 reserved (0).
    pub const CRC: Range<usize> = 36..40;
    /// What the CRC covers: everything before it.
    pub const CRC_COVERS: Range<usize> = 0..CRC.start;
}

/// Where each record field lies (the table above).
mod rec {
    use std::ops::Range;

    pub const MAGIC: Range<usize> = 0..4;
    pub const LEN: Range<usize> = 4..8;
    pub const SEQ: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..20;
    pub const KIND: usize = 20;
    pub const FLAGS: usize = 21;
    pub const KEY_LEN: Range<usize> = 22..24;
    pub const PAYLOAD_LEN: Range<usize> = 24..28;
    pub const EXTENT_COUNT: Range<usize> = 28..30;
    pub const RESERVED_30: Range<usize> = 30..32;
    pub const PAYLOAD_CRC: Range<usize> = 32..36;
    pub const DURABLE_BEFORE: Range<usize> = 36..44;
    pub const HEADER_CRC: Range<usize> = 44..48;
    /// The fixed part the header CRC covers (it goes on over the key and the extent table).
    pub const CRC_COVERS: Range<usize> = 0..HEADER_CRC.start;
    /// The key starts right after the fixed header.
    pub const KEY: usize = HEADER_CRC.end;

    /// One extent table entry, from the entry's start.
    pub mod extent {
        use std::ops::Range;

        pub const BUF: Range<usize> = 0..4;
        pub const OFF: Range<usize> = 4..8;
        pub const LEN: Range<usize> = 8..12;
        /// Bytes per entry.
        pub const SIZE: usize = LEN.end;
    }
}

/// Record flag: the record belongs to an atomic group (a Redis `EXEC`) that continues with the
/// next record. The group's last record has the flag clear. Recovery applies a group only when
/// it reaches the record that ends it; a log that ends inside a group (a crash while the group
/// was being written) is cut back to the group's start, so a group is all or nothing. Builds of
/// pst older than this flag refuse a log holding flagged records as damaged (never misread it).
pub const FLAG_GROUP: u8 = 1;

/// Segment header size.
pub const SEG_HEADER: usize = 64;
/// Record header size (before key and extents).
pub const REC_HEADER: usize = rec::KEY;
/// Segment magic.
pub const SEG_MAGIC: [u8; 8] = *b"PSTSEG01";
/// Record magic.
pub const REC_MAGIC: u32 = 0x5053_5452;
/// Log format version written in the segment headers of a version 1 pool.
pub const VERSION: u32 = 1;
/// Log format version written in the segment headers of a version 2 pool (salted checksum,
/// segments in the data region).
pub const VERSION_2: u32 = 2;
/// Most extents one record may name (the record's extent count is a u16). A 10 MiB body that
/// landed in 2 KiB buffers names over 5,000; the record must still fit in one log segment.
pub const MAX_EXTENTS: usize = u16::MAX as usize;
/// Longest key.
pub const MAX_KEY: usize = 4096;

/// Segment size for a log region of `log_len` bytes: a power of two between 16 KiB and 1 MiB,
/// about 1/16 of the region. A pure function of the geometry, so recovery derives it too.
pub fn segment_size(log_len: u64) -> u64 {
    let target = (log_len / 16).max(1);
    let pow = 1u64 << (63 - target.leading_zeros());
    pow.clamp(16 << 10, 1 << 20).min(log_len.max(1))
}

// Field accessors. Callers check the length first (a short slice is a bug, not bad data).
fn u16_at(b: &[u8], f: Range<usize>) -> u16 {
    u16::from_le_bytes(b[f].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], f: Range<usize>) -> u32 {
    u32::from_le_bytes(b[f].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], f: Range<usize>) -> u64 {
    u64::from_le_bytes(b[f].try_into().expect("8 bytes"))
}
/// `f` shifted to start at `at` (a field of an extent table entry).
fn at(at: usize, f: Range<usize>) -> Range<usize> {
    at + f.start..at + f.end
}

/// Where a header checksum starts: 0 (plain CRC32C, version 1), or the CRC32C of the log
/// salt's 8 bytes (version 2), so that what follows is checksummed as if after the salt.
fn salt_seed(salt: Option<u64>) -> u32 {
    salt.map_or(0, |s| crc32c::crc32c(&s.to_le_bytes()))
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegHeader {
    /// Segment size.
    pub size: u32,
    /// Epoch.
    pub epoch: u64,
    /// First sequence number.
    pub first_seq: u64,
}

impl SegHeader {
    /// Encode; `salt` is the pool's log salt in a version 2 pool, `None` in a version 1 pool.
    pub fn encode(&self, salt: Option<u64>) -> [u8; SEG_HEADER] {
        let mut b = [0u8; SEG_HEADER];
        b[seg::MAGIC].copy_from_slice(&SEG_MAGIC);
        let version = if salt.is_some() { VERSION_2 } else { VERSION };
        b[seg::VERSION].copy_from_slice(&version.to_le_bytes());
        b[seg::SIZE].copy_from_slice(&self.size.to_le_bytes());
        b[seg::EPOCH].copy_from_slice(&self.epoch.to_le_bytes());
        b[seg::FIRST_SEQ].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = Self::crc(&b, salt);
        b[seg::CRC].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn crc(b: &[u8], salt: Option<u64>) -> u32 {
        crc32c::crc32c_append(salt_seed(salt), &b[seg::CRC_COVERS])
    }

    /// Decode; `None` for anything that is not a valid header of a segment of `size` bytes of
    /// this pool's version (and, in version 2, salt).
    pub fn decode(b: &[u8], size: u64, salt: Option<u64>) -> Option<SegHeader> {
        let version = if salt.is_some() { VERSION_2 } else { VERSION };
        if b.len() < SEG_HEADER || b[seg::MAGIC] != SEG_MAGIC || u32_at(b, seg::VERSION) != version
        {
            return None;
        }
        if Self::crc(b, salt) != u32_at(b, seg::CRC) || u32_at(b, seg::SIZE) as u64 != size {
            return None;
        }
        Some(SegHeader {
            size: u32_at(b, seg::SIZE),
            epoch: u64_at(b, seg::EPOCH),
            first_seq: u64_at(b, seg::FIRST_SEQ),
        })
    }
}

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A WAL append (no key).
    Append = 1,
    /// KV put: key → payload.
    Put = 2,
    /// KV delete of key (no payload).
    Delete = 3,
    /// KV clear: every key written before it is deleted (`FLUSHALL`); no key, no payload.
    /// One record whatever the number of keys, so a log full of live data can always be
    /// emptied, and atomically. Added after the first v1 logs: a reader that predates it
    /// stops at such a record as at damage (and refuses it if acknowledged records follow),
    /// never misreading it.
    Clear = 4,
    /// The log's clean end (a server that stopped cleanly): every record before it was
    /// committed (its durable bound is its own sequence number). No key, no payload; replay
    /// ignores it. Added in session 16: a reader that predates it stops at a final seal as at
    /// a torn tail (and drops it), and refuses a log with records after a seal as damaged.
    Seal = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Append),
            2 => Some(Kind::Put),
            3 => Some(Kind::Delete),
            4 => Some(Kind::Clear),
            5 => Some(Kind::Seal),
            _ => None,
        }
    }
}

/// A payload extent as named in a record: `(buffer, offset, length)`.
pub type RawExtent = (u32, u32, u32);

/// Bytes a record occupies in the log.
pub fn record_len(key_len: usize, n_extents: usize) -> usize {
    let refs_at = (REC_HEADER + key_len).next_multiple_of(4);
    (refs_at + rec::extent::SIZE * n_extents).next_multiple_of(8)
}

/// A record, decoded or to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// Low 32 bits of the segment epoch.
    pub epoch: u32,
    /// Kind.
    pub kind: Kind,
    /// Key (empty for appends).
    pub key: Vec<u8>,
    /// Payload extents.
    pub extents: Vec<RawExtent>,
    /// Payload length.
    pub payload_len: u32,
    /// CRC32C of the payload.
    pub payload_crc: u32,
    /// Every sequence number below this was committed when the record was written.
    pub durable_before: u64,
    /// [`FLAG_GROUP`]: an atomic group continues with the next record.
    pub grouped: bool,
}

/// Why bytes are not a valid record (normal at the end of a segment's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not enough bytes, wrong magic, or a length out of range: no record here.
    NoRecord,
    /// Header checksum mismatch: torn or corrupt.
    Checksum,
    /// Fields inconsistent with each other or with the pool geometry.
    Invalid,
}

/// The fields of a record to encode, borrowed (the store encodes without building a
/// [`Record`], so an append allocates nothing for its encoding).
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Low 32 bits of the segment epoch.
    pub epoch: u32,
    /// Kind.
    pub kind: Kind,
    /// Key (empty for appends).
    pub key: &'a [u8],
    /// Payload extents.
    pub extents: &'a [RawExtent],
    /// Payload length.
    pub payload_len: u32,
    /// CRC32C of the payload.
    pub payload_crc: u32,
    /// Every sequence number below this was committed when the record was written.
    pub durable_before: u64,
    /// [`FLAG_GROUP`]: an atomic group continues with the next record.
    pub grouped: bool,
    /// The pool's log salt in a version 2 pool (seeds the header checksum), `None` in v1.
    pub salt: Option<u64>,
}

impl RecordFields<'_> {
    /// Encode into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let len = record_len(self.key.len(), self.extents.len());
        out.resize(len, 0);
        out[rec::MAGIC].copy_from_slice(&REC_MAGIC.to_le_bytes());
        out[rec::LEN].copy_from_slice(&(len as u32).to_le_bytes());
        out[rec::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        out[rec::EPOCH].copy_from_slice(&self.epoch.to_le_bytes());
        out[rec::KIND] = self.kind as u8;
        out[rec::FLAGS] = if self.grouped { FLAG_GROUP } else { 0 };
        out[rec::KEY_LEN].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        out[rec::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_le_bytes());
        out[rec::EXTENT_COUNT].copy_from_slice(&(self.extents.len() as u16).to_le_bytes());
        out[rec::PAYLOAD_CRC].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[rec::DURABLE_BEFORE].copy_from_slice(&self.durable_before.to_le_bytes());
        out[rec::KEY..rec::KEY + self.key.len()].copy_from_slice(self.key);
        let mut e = (rec::KEY + self.key.len()).next_multiple_of(4);
        for &(b, o, l) in self.extents {
            out[at(e, rec::extent::BUF)].copy_from_slice(&b.to_le_bytes());
            out[at(e, rec::extent::OFF)].copy_from_slice(&o.to_le_bytes());
            out[at(e, rec::extent::LEN)].copy_from_slice(&l.to_le_bytes());
            e += rec::extent::SIZE;
        }
        let crc = Record::header_crc(out, e, self.salt);
        out[rec::HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
    }
}

impl Record {
    /// Encode into `out` (cleared first), for a version 1 pool.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_salted(out, None)
    }

    /// Encode into `out` (cleared first); `salt` as in [`RecordFields::salt`].
    pub fn encode_salted(&self, out: &mut Vec<u8>, salt: Option<u64>) {
        RecordFields {
            seq: self.seq,
            epoch: self.epoch,
            kind: self.kind,
            key: &self.key,
            extents: &self.extents,
            payload_len: self.payload_len,
            payload_crc: self.payload_crc,
            durable_before: self.durable_before,
            grouped: self.grouped,
            salt,
        }
        .encode(out)
    }

    /// Clear [`FLAG_GROUP`] in the encoded record at the start of `b` (it ends its group) and
    /// recompute its header checksum. False if `b` does not start with a whole valid record.
    pub fn seal_group(b: &mut [u8], salt: Option<u64>) -> bool {
        if b.len() < REC_HEADER || u32_at(b, rec::MAGIC) != REC_MAGIC {
            return false;
        }
        let key_len = u16_at(b, rec::KEY_LEN) as usize;
        let n = u16_at(b, rec::EXTENT_COUNT) as usize;
        let refs_end = (rec::KEY + key_len).next_multiple_of(4) + rec::extent::SIZE * n;
        if refs_end > b.len() || Self::header_crc(b, refs_end, salt) != u32_at(b, rec::HEADER_CRC) {
            return false;
        }
        b[rec::FLAGS] &= !FLAG_GROUP;
        let crc = Self::header_crc(b, refs_end, salt);
        b[rec::HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
        true
    }

    fn header_crc(b: &[u8], refs_end: usize, salt: Option<u64>) -> u32 {
        let fixed = crc32c::crc32c_append(salt_seed(salt), &b[rec::CRC_COVERS]);
        crc32c::crc32c_append(fixed, &b[rec::KEY..refs_end])
    }

    /// Decode the record at the start of `b` for a version 1 pool of `buf_count` buffers of
    /// `buf_size`.
    pub fn decode(b: &[u8], buf_count: u32, buf_size: u32) -> Result<Record, RecordError> {
        Self::decode_salted(b, buf_count, buf_size, None)
    }

    /// [`Record::decode`] with `salt` as in [`RecordFields::salt`].
    pub fn decode_salted(
        b: &[u8],
        buf_count: u32,
        buf_size: u32,
        salt: Option<u64>,
    ) -> Result<Record, RecordError> {
        if b.len() < REC_HEADER || u32_at(b, rec::MAGIC) != REC_MAGIC {
            return Err(RecordError::NoRecord);
        }
        let len = u32_at(b, rec::LEN) as usize;
        let key_len = u16_at(b, rec::KEY_LEN) as usize;
        let n = u16_at(b, rec::EXTENT_COUNT) as usize;
        if len > b.len() || len != record_len(key_len, n) || key_len > MAX_KEY || n > MAX_EXTENTS {
            return Err(RecordError::NoRecord);
        }
        let refs_at = (rec::KEY + key_len).next_multiple_of(4);
        let refs_end = refs_at + rec::extent::SIZE * n;
        if Self::header_crc(b, refs_end, salt) != u32_at(b, rec::HEADER_CRC) {
            return Err(RecordError::Checksum);
        }
        let kind = Kind::from_u8(b[rec::KIND]).ok_or(RecordError::Invalid)?;
        if b[rec::FLAGS] & !FLAG_GROUP != 0 || b[rec::RESERVED_30] != [0, 0] {
            return Err(RecordError::Invalid);
        }
        let mut extents = Vec::with_capacity(n);
        let mut total = 0u64;
        for i in 0..n {
            let x = refs_at + rec::extent::SIZE * i;
            let e = (
                u32_at(b, at(x, rec::extent::BUF)),
                u32_at(b, at(x, rec::extent::OFF)),
                u32_at(b, at(x, rec::extent::LEN)),
            );
            if e.0 >= buf_count || e.1 as u64 + e.2 as u64 > buf_size as u64 {
                return Err(RecordError::Invalid);
            }
            total += e.2 as u64;
            extents.push(e);
        }
        let payload_len = u32_at(b, rec::PAYLOAD_LEN);
        let shape_ok = match kind {
            Kind::Append => key_len == 0,
            Kind::Put => true,
            Kind::Delete => n == 0,
            Kind::Clear | Kind::Seal => key_len == 0 && n == 0,
        };
        if total != payload_len as u64 || !shape_ok {
            return Err(RecordError::Invalid);
        }
        Ok(Record {
            seq: u64_at(b, rec::SEQ),
            epoch: u32_at(b, rec::EPOCH),
            kind,
            key: b[rec::KEY..rec::KEY + key_len].to_vec(),
            extents,
            payload_len,
            payload_crc: u32_at(b, rec::PAYLOAD_CRC),
            durable_before: u64_at(b, rec::DURABLE_BEFORE),
            grouped: b[rec::FLAGS] & FLAG_GROUP != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            seq: 77,
            epoch: 3,
            kind: Kind::Put,
            key: b"hello".to_vec(),
            extents: vec![(1, 10, 100), (5, 0, 2048)],
            payload_len: 2148,
            payload_crc: 0xdead_beef,
            durable_before: 70,
            grouped: false,
        }
    }

    #[test]
    fn roundtrip() {
        let mut b = Vec::new();
        rec().encode(&mut b);
        assert_eq!(b.len(), record_len(5, 2));
        assert_eq!(b.len() % 8, 0);
        assert_eq!(Record::decode(&b, 10, 2048), Ok(rec()));
    }

    /// A version 2 record passes only with its pool's salt: bytes a client stored in a slot
    /// cannot pass for one (nor a v1 record for a v2 one).
    #[test]
    fn salted_records_need_their_salt() {
        let mut b = Vec::new();
        rec().encode_salted(&mut b, Some(99));
        assert_eq!(Record::decode_salted(&b, 10, 2048, Some(99)), Ok(rec()));
        assert_eq!(
            Record::decode_salted(&b, 10, 2048, Some(98)),
            Err(RecordError::Checksum)
        );
        assert_eq!(Record::decode(&b, 10, 2048), Err(RecordError::Checksum));
        let mut v1 = Vec::new();
        rec().encode(&mut v1);
        assert_eq!(
            Record::decode_salted(&v1, 10, 2048, Some(99)),
            Err(RecordError::Checksum)
        );
        assert!(Record::seal_group(&mut b, Some(99)));
        assert!(!Record::seal_group(&mut b, Some(98)));
    }

    #[test]
    fn any_bit_flip_is_detected() {
        let mut b = Vec::new();
        rec().encode(&mut b);
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            let d = Record::decode(&c, 10, 2048);
            // Flips in padding bytes are the only ones that may pass, and must decode to the same record.
            if let Ok(r) = d {
                assert_eq!(r, rec(), "bit {i}");
            }
        }
    }

    #[test]
    fn geometry_is_checked() {
        let mut b = Vec::new();
        rec().encode(&mut b);
        assert_eq!(Record::decode(&b, 5, 2048), Err(RecordError::Invalid));
        assert_eq!(Record::decode(&b, 10, 1024), Err(RecordError::Invalid));
        assert_eq!(
            Record::decode(&b[..20], 10, 2048),
            Err(RecordError::NoRecord)
        );
    }

    #[test]
    fn segment_header_roundtrip_and_sizes() {
        let h = SegHeader {
            size: 65536,
            epoch: 9,
            first_seq: 1234,
        };
        assert_eq!(SegHeader::decode(&h.encode(None), 65536, None), Some(h));
        assert_eq!(SegHeader::decode(&h.encode(None), 32768, None), None);
        assert_eq!(SegHeader::decode(&[0; 64], 65536, None), None);
        // Version 2: only with the same salt, never across versions.
        let v2 = h.encode(Some(42));
        assert_eq!(SegHeader::decode(&v2, 65536, Some(42)), Some(h));
        assert_eq!(SegHeader::decode(&v2, 65536, Some(43)), None);
        assert_eq!(SegHeader::decode(&v2, 65536, None), None);
        assert_eq!(SegHeader::decode(&h.encode(None), 65536, Some(42)), None);
        assert_eq!(segment_size(1 << 20), 64 << 10);
        assert_eq!(segment_size(16 << 20), 1 << 20);
        assert_eq!(segment_size(64 << 10), 16 << 10);
    }
}
