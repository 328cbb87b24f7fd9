//! Buffer names and pool geometry: how a pool of a given size is cut into buffers, a log
//! region and per-thread partitions.

/// Bytes reserved for the header at the start of the file.
pub const HEADER_REGION: u64 = 4096;

/// Index of a buffer in the pool (netmap's `buf_idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufIdx(pub u32);

/// Default buffer size: 2 KiB, like netmap's default buffers.
pub const DEFAULT_BUF_SIZE: u32 = 2048;
/// Default pool size: 256 MiB.
pub const DEFAULT_POOL_SIZE: u64 = 256 << 20;

/// Buffer geometry of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per buffer: a power of two in 512..=65536.
    pub buf_size: u32,
    /// Number of buffers.
    pub buf_count: u32,
    /// Bytes reserved for the write-ahead log region (multiple of 4096).
    pub log_len: u64,
}

/// The pool's share for the log region when not given: a sixteenth.
pub const DEFAULT_LOG_SHARE: f64 = 1.0 / 16.0;

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} buffers of {} bytes and a {}-byte log",
            self.buf_count, self.buf_size, self.log_len
        )
    }
}

impl Geometry {
    /// Geometry for a pool of about `total` bytes: 1/16 of it (at least 64 KiB) for the log, the
    /// rest as `buf_size` buffers.
    pub fn for_size(total: u64, buf_size: u32) -> Result<Geometry, String> {
        Self::for_size_with_log(total, buf_size, DEFAULT_LOG_SHARE)
    }

    /// Like [`Geometry::for_size`], with `log_share` (0 < share < 1) of the pool for the log
    /// region. Every stored value is a log record of about 80–90 bytes (key included) besides
    /// its bytes, so small values need a larger share: with 100-byte values the log fills
    /// first below about a third of the pool; with 1 KiB values an eighth is about balanced.
    pub fn for_size_with_log(
        total: u64,
        buf_size: u32,
        log_share: f64,
    ) -> Result<Geometry, String> {
        if !(log_share > 0.0 && log_share < 1.0) {
            return Err(format!("log share {log_share} is not between 0 and 1"));
        }
        let log_len = (((total as f64 * log_share) as u64).max(64 << 10) + 4095) & !4095;
        let data = total
            .checked_sub(HEADER_REGION + log_len)
            .filter(|d| *d >= buf_size as u64 * 8)
            .ok_or_else(|| {
                format!(
                    "pool size {total} is too small for {buf_size}-byte buffers: the header, a \
                     {log_len}-byte log and 8 buffers need at least {} bytes",
                    HEADER_REGION + log_len + 8 * buf_size as u64
                )
            })?;
        let buf_count = u32::try_from(data / buf_size.max(1) as u64)
            .map_err(|_| format!("pool size {total} gives more than 2^32 buffers"))?;
        let g = Geometry {
            buf_size,
            buf_count,
            log_len,
        };
        g.validate()?;
        Ok(g)
    }

    /// Check the invariants; the message names the broken one.
    pub fn validate(&self) -> Result<(), String> {
        if !self.buf_size.is_power_of_two() || !(512..=65536).contains(&self.buf_size) {
            return Err(format!(
                "buffer size {} is not a power of two in 512..=65536",
                self.buf_size
            ));
        }
        if self.buf_count < 8 {
            return Err(format!(
                "buffer count {} is below the minimum of 8",
                self.buf_count
            ));
        }
        if !self.log_len.is_multiple_of(4096) {
            return Err(format!(
                "log length {} is not a multiple of 4096",
                self.log_len
            ));
        }
        Ok(())
    }

    /// Split the buffers into `n` contiguous partitions, one per port/thread.
    pub fn partitions(&self, n: u32) -> Vec<std::ops::Range<u32>> {
        let n = n.max(1);
        let per = self.buf_count / n;
        (0..n)
            .map(|i| {
                let end = if i + 1 == n {
                    self.buf_count
                } else {
                    (i + 1) * per
                };
                i * per..end
            })
            .collect()
    }
}

#[cfg(test)]
mod log_share_tests {
    use super::*;

    #[test]
    fn the_default_log_share_is_the_old_sixteenth_and_others_are_honoured() {
        for total in [1u64 << 20, 16 << 20, 256 << 20, 1_000_003 << 4] {
            let g = Geometry::for_size(total, 2048).unwrap();
            assert_eq!(
                g.log_len,
                ((total / 16).max(64 << 10) + 4095) & !4095,
                "{total}"
            );
        }
        let g = Geometry::for_size_with_log(64 << 20, 2048, 0.35).unwrap();
        assert!(g.log_len >= (64u64 << 20) * 35 / 100 && g.log_len.is_multiple_of(4096));
        assert!(Geometry::for_size_with_log(64 << 20, 2048, 0.0).is_err());
        assert!(Geometry::for_size_with_log(64 << 20, 2048, 1.0).is_err());
    }
}
