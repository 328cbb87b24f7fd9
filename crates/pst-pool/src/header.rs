//! The on-media pool header (format version 1).
//!
//! The first [`HEADER_REGION`] bytes of a pool file hold this header; only the first
//! [`HEADER_LEN`] bytes are used, the rest is zero. All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | magic `b"PSTPOOL\0"` |
//! | 8  | 4 | format version (`1`) |
//! | 12 | 4 | header length covered by the checksum (`64`) |
//! | 16 | 4 | buffer size in bytes (power of two, 512..=65536) |
//! | 20 | 4 | buffer count |
//! | 24 | 8 | log region offset (multiple of 4096) |
//! | 32 | 8 | log region length (multiple of 4096, may be 0) |
//! | 40 | 8 | data region offset (multiple of 4096); buffer `i` is at `data_off + i * buf_size` |
//! | 48 | 8 | total file length |
//! | 56 | 4 | flags (reserved, must be 0) |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! The header is written once, when the pool is created (into a temporary file that is synced
//! and then renamed into place), and never rewritten, so a torn header can only be a foreign or
//! damaged file: it fails the magic or the checksum and the pool refuses to open.

use crate::geometry::Geometry;

/// Magic bytes at offset 0 of every pool file.
pub const MAGIC: [u8; 8] = *b"PSTPOOL\0";
/// The only format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of header covered by the checksum.
pub const HEADER_LEN: usize = 64;
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
    pub const CRC: Range<usize> = 60..64;
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
    #[error("pool format version {found} is not supported (this build reads version {VERSION})")]
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
}

impl Header {
    /// Lay out a new pool for `geometry`.
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
        })
    }

    /// Encode into the first [`HEADER_LEN`] bytes of a header region.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        b[field::HEADER_LEN].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[field::BUF_SIZE].copy_from_slice(&self.geometry.buf_size.to_le_bytes());
        b[field::BUF_COUNT].copy_from_slice(&self.geometry.buf_count.to_le_bytes());
        b[field::LOG_OFF].copy_from_slice(&self.log_off.to_le_bytes());
        b[field::LOG_LEN].copy_from_slice(&self.geometry.log_len.to_le_bytes());
        b[field::DATA_OFF].copy_from_slice(&self.data_off.to_le_bytes());
        b[field::TOTAL_LEN].copy_from_slice(&self.total_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..field::CRC.start]);
        b[field::CRC].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and validate a header read from a file of `file_len` bytes.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, HeaderError> {
        if bytes.len() < HEADER_LEN || file_len < HEADER_REGION {
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
        if version != VERSION {
            return Err(HeaderError::Version { found: version });
        }
        let stored = u32_at(field::CRC);
        let computed = crc32c::crc32c(&bytes[..field::CRC.start]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        if u32_at(field::HEADER_LEN) as usize != HEADER_LEN || u32_at(field::FLAGS) != 0 {
            return Err(HeaderError::Geometry(
                "unknown header length or flags".into(),
            ));
        }
        let geometry = Geometry {
            buf_size: u32_at(field::BUF_SIZE),
            buf_count: u32_at(field::BUF_COUNT),
            log_len: u64_at(field::LOG_LEN),
        };
        let expect = Header::layout(geometry)?;
        let found = Header {
            geometry,
            log_off: u64_at(field::LOG_OFF),
            data_off: u64_at(field::DATA_OFF),
            total_len: u64_at(field::TOTAL_LEN),
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
        b[8] = 2;
        assert_eq!(
            Header::decode(&b, h.total_len),
            Err(HeaderError::Version { found: 2 })
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
