//! The on-media pool header (format versions 1 and 2).
//!
//! The first [`HEADER_REGION`] bytes of a pool file hold this header; only the first
//! [`HEADER_LEN`] bytes (version 1: the first 64) are used, the rest is zero. All integers are
//! little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | magic `b"PSTPOOL\0"` |
//! | 8  | 4 | format version (`1` or `2`) |
//! | 12 | 4 | header length covered by the checksum (v1: `64`; v2: `128`) |
//! | 16 | 4 | buffer size in bytes (power of two, 512..=65536) |
//! | 20 | 4 | buffer count |
//! | 24 | 8 | log region offset (multiple of 4096) |
//! | 32 | 8 | log region length (multiple of 4096, may be 0) |
//! | 40 | 8 | data region offset (multiple of 4096); buffer `i` is at `data_off + i * buf_size` |
//! | 48 | 8 | total file length |
//! | 56 | 4 | flags (reserved, must be 0) |
//! | 60 | 4 | v1: CRC32C of bytes 0..60. v2: reserved (0) |
//! | 64 | 8 | v2: log salt, a random number drawn when the pool was created |
//! | 72 | 52 | v2: reserved (0) |
//! | 124 | 4 | v2: CRC32C of bytes 0..124 |
//!
//! **Version 2** lets the store's log grow into the data region: a log segment may occupy an
//! aligned run of buffers (`pst_store::format`). Recovery then looks for segment headers among
//! the buffers too, where clients' values lie, so a v2 segment header's checksum is seeded with
//! the log salt: no value a client can write (not knowing the salt) passes for one. A v1 pool
//! is still opened and served, with its log confined to the log region; older builds refuse a
//! v2 pool by its version number.
//!
//! The header is written once, when the pool is created (into a temporary file that is synced
//! and then renamed into place), and never rewritten, so a torn header can only be a foreign or
//! damaged file: it fails the magic or the checksum and the pool refuses to open.

use crate::geometry::Geometry;

/// Magic bytes at offset 0 of every pool file.
pub const MAGIC: [u8; 8] = *b"PSTPOOL\0";
/// The format version this code writes (it reads 1 and 2).
pub const VERSION: u32 = 2;
/// The oldest version this code reads.
pub const OLDEST_VERSION: u32 = 1;
/// Bytes of header covered by the checksum (version 2; version 1 covers [`HEADER_LEN_V1`]).
pub const HEADER_LEN: usize = 128;
/// Bytes of a version 1 header.
pub const HEADER_LEN_V1: usize = 64;
pub use crate::geometry::HEADER_REGION;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const HEADER_LEN: Range<usize> = 12..16;
    pub const BUF_SIZE: Range<usize> = 16..20;
    pub const BUF_COUNT: Range<usize> = 20..24;
    pub const LOG_OFF: Range<usize> = 24..32;
    pub const LOG_LEN: Range<usize> = 32..40;
    pub const DATA_OFF: Range<usize> = 40..48;
    pub const TOTAL_LEN: Range<usize> = 48..56;
    pub const FLAGS: Range<usize> = 56..60;
    /// Version 1's checksum (version 2: reserved, 0).
    pub const CRC_V1: Range<usize> = 60..64;
    pub const LOG_SALT: Range<usize> = 64..72;
    pub const CRC: Range<usize> = 124..128;
}

/// Why a header was refused. Each variant names the problem for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("file is too short to be a pst pool ({0} bytes)")]
    Truncated(u64),
    /// The magic bytes are wrong: this is not a pool file.
    #[error("not a pst pool file (bad magic bytes)")]
    BadMagic,
    /// A pool written by another format version.
    #[error(
        "pool format version {found} is not supported (this build reads versions {OLDEST_VERSION} to {VERSION}); open it with the pst release that created it"
    )]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// The header checksum does not match: the header is damaged.
    #[error("pool header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// The geometry fields are inconsistent with each other or with the file.
    #[error("pool header geometry is invalid: {0}")]
    Geometry(String),
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Buffer geometry.
    pub geometry: Geometry,
    /// Log region offset in the file.
    pub log_off: u64,
    /// Data region offset in the file.
    pub data_off: u64,
    /// Total file length.
    pub total_len: u64,
    /// Format version (1 or 2).
    pub version: u32,
    /// Version 2: seeds the log's segment header checksums (0 in version 1).
    pub log_salt: u64,
}

impl Header {
    /// Lay out a new pool for `geometry` (the current version, log salt 0: see
    /// [`Header::with_salt`]).
    pub fn layout(geometry: Geometry) -> Result<Header, HeaderError> {
        geometry.validate().map_err(HeaderError::Geometry)?;
        let log_off = HEADER_REGION;
        // Checked: a header read from a file may carry any log length (an overflow found by
        // fuzzing would wrap to a small total and map less than the geometry addresses).
        let total_len = log_off
            .checked_add(geometry.log_len)
            .and_then(|d| d.checked_add(geometry.buf_size as u64 * geometry.buf_count as u64))
            .ok_or_else(|| {
                HeaderError::Geometry(format!(
                    "log length {} overflows the file size",
                    geometry.log_len
                ))
            })?;
        let data_off = log_off + geometry.log_len;
        Ok(Header {
            geometry,
            log_off,
            data_off,
            total_len,
            version: VERSION,
            log_salt: 0,
        })
    }

    /// The same header with log salt `salt` (a new pool draws a random one).
    pub fn with_salt(self, salt: u64) -> Header {
        Header {
            log_salt: salt,
            ..self
        }
    }

    /// Whether the store's log may grow into the data region (version 2).
    pub fn log_may_grow(&self) -> bool {
        self.version >= 2
    }

    /// Bytes this header's version covers.
    pub fn len(&self) -> usize {
        match self.version {
            1 => HEADER_LEN_V1,
            _ => HEADER_LEN,
        }
    }

    /// Never true: a header has a length (clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encode into the first [`HEADER_LEN`] bytes of a header region (a version 1 header
    /// uses the first 64 and leaves the rest zero).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION].copy_from_slice(&self.version.to_le_bytes());
        b[field::HEADER_LEN].copy_from_slice(&(self.len() as u32).to_le_bytes());
        b[field::BUF_SIZE].copy_from_slice(&self.geometry.buf_size.to_le_bytes());
        b[field::BUF_COUNT].copy_from_slice(&self.geometry.buf_count.to_le_bytes());
        b[field::LOG_OFF].copy_from_slice(&self.log_off.to_le_bytes());
        b[field::LOG_LEN].copy_from_slice(&self.geometry.log_len.to_le_bytes());
        b[field::DATA_OFF].copy_from_slice(&self.data_off.to_le_bytes());
        b[field::TOTAL_LEN].copy_from_slice(&self.total_len.to_le_bytes());
        if self.version == 1 {
            let crc = crc32c::crc32c(&b[..field::CRC_V1.start]);
            b[field::CRC_V1].copy_from_slice(&crc.to_le_bytes());
        } else {
            b[field::LOG_SALT].copy_from_slice(&self.log_salt.to_le_bytes());
            let crc = crc32c::crc32c(&b[..field::CRC.start]);
            b[field::CRC].copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Decode and validate a header read from a file of `file_len` bytes.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, HeaderError> {
        if bytes.len() < HEADER_LEN_V1 || file_len < HEADER_REGION {
            return Err(HeaderError::Truncated(file_len));
        }
        if bytes[field::MAGIC] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let u32_at = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[r]);
            u32::from_le_bytes(a)
        };
        let u64_at = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[r]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(field::VERSION);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(HeaderError::Version { found: version });
        }
        let (crc, len) = match version {
            1 => (field::CRC_V1, HEADER_LEN_V1),
            _ => (field::CRC, HEADER_LEN),
        };
        if bytes.len() < len {
            return Err(HeaderError::Truncated(file_len));
        }
        let stored = u32_at(crc.clone());
        let computed = crc32c::crc32c(&bytes[..crc.start]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        if u32_at(field::HEADER_LEN) as usize != len || u32_at(field::FLAGS) != 0 {
            return Err(HeaderError::Geometry(
                "unknown header length or flags".into(),
            ));
        }
        let geometry = Geometry {
            buf_size: u32_at(field::BUF_SIZE),
            buf_count: u32_at(field::BUF_COUNT),
            log_len: u64_at(field::LOG_LEN),
        };
        if version >= 2
            && (bytes[field::CRC_V1].iter().any(|&b| b != 0)
                || bytes[field::LOG_SALT.end..field::CRC.start]
                    .iter()
                    .any(|&b| b != 0))
        {
            return Err(HeaderError::Geometry(
                "reserved header bytes are not zero".into(),
            ));
        }
        let log_salt = match version {
            1 => 0,
            _ => u64_at(field::LOG_SALT),
        };
        let expect = Header {
            version,
            ..Header::layout(geometry)?.with_salt(log_salt)
        };
        let found = Header {
            geometry,
            log_off: u64_at(field::LOG_OFF),
            data_off: u64_at(field::DATA_OFF),
            total_len: u64_at(field::TOTAL_LEN),
            version,
            log_salt,
        };
        if found != expect {
            return Err(HeaderError::Geometry(format!(
                "region offsets do not match the geometry (found {found:?}, expected {expect:?})"
            )));
        }
        if file_len < found.total_len {
            return Err(HeaderError::Geometry(format!(
                "file is {file_len} bytes but the header describes {} bytes",
                found.total_len
            )));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            buf_size: 2048,
            buf_count: 100,
            log_len: 8192,
        }
    }

    #[test]
    fn roundtrip() {
        let h = Header::layout(geo()).unwrap();
        let b = h.encode();
        assert_eq!(Header::decode(&b, h.total_len).unwrap(), h);
    }

    #[test]
    fn version_1_headers_still_decode() {
        let h = Header {
            version: 1,
            ..Header::layout(geo()).unwrap()
        };
        let b = h.encode();
        assert!(b[HEADER_LEN_V1..].iter().all(|&x| x == 0));
        let d = Header::decode(&b[..HEADER_LEN_V1], h.total_len).unwrap();
        assert_eq!(d, h);
        assert!(!d.log_may_grow());
        let v2 = Header::layout(geo()).unwrap().with_salt(0x1234_5678_9abc);
        let d2 = Header::decode(&v2.encode(), v2.total_len).unwrap();
        assert_eq!(d2.log_salt, 0x1234_5678_9abc);
        assert!(d2.log_may_grow());
        assert!(Header::decode(&v2.encode()[..HEADER_LEN_V1], v2.total_len).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let h = Header::layout(geo()).unwrap();
        let b = h.encode();
        for i in 0..HEADER_LEN * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(Header::decode(&c, h.total_len).is_err(), "bit {i}");
        }
    }

    #[test]
    fn named_errors() {
        let h = Header::layout(geo()).unwrap();
        let mut b = h.encode();
        assert_eq!(Header::decode(&b, 10), Err(HeaderError::Truncated(10)));
        assert!(matches!(
            Header::decode(&b, h.total_len - 1),
            Err(HeaderError::Geometry(_))
        ));
        b[8] = 3;
        assert_eq!(
            Header::decode(&b, h.total_len),
            Err(HeaderError::Version { found: 3 })
        );
        b[0] = b'X';
        assert_eq!(Header::decode(&b, h.total_len), Err(HeaderError::BadMagic));
    }

    /// Found by fuzzing (`pool_header`): a checksummed header whose log length makes the
    /// layout overflow must be refused, not wrapped into a small file size.
    #[test]
    fn overflowing_log_length_is_refused() {
        let h = Header::layout(geo()).unwrap();
        let mut b = h.encode();
        let log_len = u64::MAX - 4095; // a multiple of 4096
        b[field::LOG_LEN].copy_from_slice(&log_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..field::CRC.start]);
        b[field::CRC].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, u64::MAX),
            Err(HeaderError::Geometry(_))
        ));
    }
}
