//! Pool header parsing: `Header::decode` over arbitrary header bytes and file lengths.
//!
//! Input: byte 0 says whether to fix up the checksum (so the fuzzer gets past it and reaches
//! the geometry checks; bit 0: version 2's at 124..128, bit 1: version 1's at 60..64), bytes
//! 1..9 the file length, the rest the header bytes. Checked: no
//! panic, no overflow; an accepted header describes a layout that fits the file, with ordered,
//! aligned regions, and encodes back to exactly the bytes it was decoded from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pst_pool::header::{HEADER_LEN, HEADER_LEN_V1, HEADER_REGION};
use pst_pool::Header;

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let fix_crc = input[0] & 1 == 1;
    let file_len = u64::from_le_bytes(input[1..9].try_into().unwrap());
    let mut bytes = input[9..].to_vec();
    if fix_crc && bytes.len() >= HEADER_LEN {
        let crc = crc32c(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    if input[0] & 2 == 2 && bytes.len() >= HEADER_LEN_V1 {
        let crc = crc32c(&bytes[..HEADER_LEN_V1 - 4]);
        bytes[HEADER_LEN_V1 - 4..HEADER_LEN_V1].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(h) = Header::decode(&bytes, file_len) else {
        return;
    };
    let g = h.geometry;
    assert!(g.validate().is_ok());
    assert!(
        h.total_len <= file_len,
        "header describes more than the file holds"
    );
    assert!(HEADER_REGION <= h.log_off && h.log_off <= h.data_off && h.data_off <= h.total_len);
    assert_eq!(h.data_off - h.log_off, g.log_len);
    assert_eq!(
        h.total_len - h.data_off,
        g.buf_size as u64 * g.buf_count as u64
    );
    // A version's header covers its own length (version 1: the first 64 bytes).
    assert_eq!(
        &h.encode()[..h.len()],
        &bytes[..h.len()],
        "decode/encode round trip"
    );
});

/// CRC32C (Castagnoli), bitwise: the fuzz crate does not depend on the `crc32c` crate the pool
/// uses, so this is an independent check that the pool's checksum is what the format says.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
