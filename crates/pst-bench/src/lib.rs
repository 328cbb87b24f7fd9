//! `pst bench`: the servers side by side under the built-in load generator, and their peers
//! (nginx, h2o, Redis, Valkey, kevy, tokio and monoio echo servers) under the same load. [`mod@bench`] starts each server itself on a free loopback
//! port (server and client pinned to different cores), measures a window, stops it, and prints
//! one JSON line or table row per configuration (DESIGN §4); [`loadgen`] is the closed-loop
//! client (many connections on one pst port, optional pipelining, hdrhistogram latencies).
//!
//! Orchestration code for one binary: errors are `anyhow` with context, like the binary's.
#![deny(unsafe_code)]

pub mod bench;
pub mod loadgen;

pub use bench::{run, BenchArgs};

/// Parse "1048576", "64KiB", "256MiB", "1GiB", "1TiB" (also K/M/G/T, KB/MB/GB/TB as binary
/// units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit in {s:?} (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// [`parse_bytes`] for a buffer size ("2048", "16KiB"): at most `u32::MAX` (the pool checks
/// the power of two and the range).
pub fn parse_buf_size(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    u32::try_from(n).map_err(|_| format!("buffer size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::{parse_buf_size, parse_bytes};

    #[test]
    fn buffer_sizes_take_units() {
        assert_eq!(parse_buf_size("16KiB"), Ok(16384));
        assert_eq!(parse_buf_size("2048"), Ok(2048));
        assert!(parse_buf_size("8GiB").is_err());
    }

    #[test]
    fn sizes_parse_in_binary_units_and_bad_ones_say_why() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("256mb"), Ok(256 << 20));
        assert_eq!(parse_bytes(" 2G "), Ok(2 << 30));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert!(parse_bytes("3PiB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_bytes("MiB").unwrap_err().contains("not a size"));
        assert!(parse_bytes("99999999TiB")
            .unwrap_err()
            .contains("overflows"));
    }
}
