//! Store benchmark (a bench binary, not a test): append + group commit per `PersistMode` for
//! 64 B / 1 KiB / 16 KiB records at batch sizes 1, 16 and 128, and recovery time for 1 M keys.
//!
//! `cargo bench -p pst-store --bench store` (add `-- --quick` for a short run, `-- --json` for
//! JSON lines). Pools live in `$PST_BENCH_DIR` (default: the system temp dir, which is ext4
//! here, so `fsync` is a real device flush) — recovery uses /dev/shm when present.
// SAFETY (every `Extent::from_raw` here): the test allocates these buffers itself (a fresh
// pool or simulated PM, no port) and hands each reference to the store exactly once.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pst::{Buffers, Geometry, PersistMode, Pool, PoolOptions};
use pst_store::Store;

fn dir() -> std::path::PathBuf {
    std::env::var_os("PST_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("pst-store-bench-{}", std::process::id()))
}

struct Result {
    mode: PersistMode,
    size: usize,
    batch: usize,
    records: u64,
    secs: f64,
    commit_p50_us: u64,
    commit_p99_us: u64,
    append_ns: f64,
}

fn run(mode: PersistMode, size: usize, batch: usize, budget: Duration) -> Result {
    let d = dir();
    let _ = std::fs::remove_dir_all(&d);
    let path = d.join(format!("pool-{mode}-{size}-{batch}"));
    let opts = PoolOptions {
        geometry: Geometry::for_size(256 << 20, 2048).unwrap(),
        persist: mode,
        ..PoolOptions::default()
    };
    let pool = Arc::new(Pool::open(&path, &opts).unwrap());
    let h = *pool.header();
    let (mut st, _) = Store::open(
        pool.claim_log().unwrap(),
        h.log_off..h.log_off + h.geometry.log_len,
    )
    .unwrap();
    let mut bufs = Buffers::new(pool.claim(0..h.geometry.buf_count).unwrap(), |_| 0);
    let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let mut commits = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut append_time = Duration::ZERO;
    let mut records = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..batch {
            // "Receive": land the payload in pool buffers (outside the timed store work).
            let mut exts = Vec::new();
            for chunk in payload.chunks(2048) {
                let mut e = bufs.alloc().expect("pool sized for the run");
                e.narrow(0, chunk.len() as u32);
                bufs.bytes_mut(&mut e).copy_from_slice(chunk);
                exts.push(e);
            }
            let t = Instant::now();
            st.append(exts).unwrap();
            append_time += t.elapsed();
            records += 1;
        }
        let t = Instant::now();
        st.commit().unwrap();
        commits
            .record(t.elapsed().as_micros().max(1) as u64)
            .unwrap();
        // Keep space: drop the oldest segment when the log or the pool runs low.
        let (free, total) = st.segment_space();
        if free * 4 < total || bufs.free_count() * 4 < bufs.capacity() {
            st.drop_oldest_segment();
        }
        for e in st.take_released() {
            bufs.release(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(st);
    let _ = std::fs::remove_dir_all(&d);
    Result {
        mode,
        size,
        batch,
        records,
        secs,
        commit_p50_us: commits.value_at_quantile(0.5),
        commit_p99_us: commits.value_at_quantile(0.99),
        append_ns: append_time.as_nanos() as f64 / records.max(1) as f64,
    }
}

/// Build a store of `keys` small values, then time a full recovery (scan, checksums, index).
fn recovery(keys: u64) -> (Duration, u64) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    };
    let path = base.join(format!("pst-recovery-bench-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let per_buf = 512 / 16;
    let opts = PoolOptions {
        geometry: Geometry {
            buf_size: 512,
            buf_count: (keys / per_buf + 1024) as u32,
            log_len: (keys * 96).next_multiple_of(1 << 20) * 2,
        },
        persist: PersistMode::None,
        ..PoolOptions::default()
    };
    {
        let pool = Arc::new(Pool::open(&path, &opts).unwrap());
        let h = *pool.header();
        let (mut st, _) = Store::open(
            pool.claim_log().unwrap(),
            h.log_off..h.log_off + h.geometry.log_len,
        )
        .unwrap();
        let mut bufs = Buffers::new(pool.claim(0..h.geometry.buf_count).unwrap(), |_| 0);
        let mut k = 0u64;
        while k < keys {
            let mut whole = bufs.alloc().unwrap();
            for (i, b) in bufs.bytes_mut(&mut whole).iter_mut().enumerate() {
                *b = (i as u64 ^ k) as u8;
            }
            let (b, _, _) = whole.into_raw();
            for slot in 0..per_buf {
                if k >= keys {
                    break;
                }
                let e = unsafe { pst::Extent::from_raw(b, (slot * 16) as u32, 16) };
                st.put(format!("key{k:08}").as_bytes(), vec![e]).unwrap();
                k += 1;
            }
            if k % 4096 == 0 {
                st.commit().unwrap();
            }
        }
        st.commit().unwrap();
        // Extents were handed over without allocator bookkeeping; nothing is released here.
        std::mem::forget(st);
    }
    let pool = Arc::new(
        Pool::open(
            &path,
            &PoolOptions {
                read_only: true,
                ..opts
            },
        )
        .unwrap(),
    );
    let h = *pool.header();
    let t = Instant::now();
    let (st, rep) = Store::inspect(
        pool.claim_log().unwrap(),
        h.log_off..h.log_off + h.geometry.log_len,
    )
    .unwrap();
    let took = t.elapsed();
    assert_eq!(st.len() as u64, keys, "{rep:?}");
    let _ = std::fs::remove_file(&path);
    (took, rep.records)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let budget = Duration::from_millis(if quick { 300 } else { 1500 });
    if !json {
        println!(
            "{:<6} {:>6} {:>6} {:>10} {:>10} {:>12} {:>12} {:>10}",
            "mode", "size", "batch", "records/s", "MB/s", "commit p50", "commit p99", "append ns"
        );
    }
    for mode in [PersistMode::None, PersistMode::Pmem, PersistMode::Fsync] {
        for size in [64, 1024, 16384] {
            for batch in [1, 16, 128] {
                let r = run(mode, size, batch, budget);
                let rps = r.records as f64 / r.secs;
                if json {
                    println!(
                        "{{\"bench\":\"append_commit\",\"persist\":\"{}\",\"size\":{},\"batch\":{},\"records_per_s\":{:.0},\"mb_per_s\":{:.1},\"commit_p50_us\":{},\"commit_p99_us\":{},\"append_ns\":{:.0}}}",
                        r.mode, r.size, r.batch, rps, rps * r.size as f64 / 1e6, r.commit_p50_us, r.commit_p99_us, r.append_ns
                    );
                } else {
                    println!(
                        "{:<6} {:>6} {:>6} {:>10.0} {:>10.1} {:>10} us {:>9} us {:>10.0}",
                        r.mode.to_string(),
                        r.size,
                        r.batch,
                        rps,
                        rps * r.size as f64 / 1e6,
                        r.commit_p50_us,
                        r.commit_p99_us,
                        r.append_ns
                    );
                }
            }
        }
    }
    let keys = if quick { 100_000 } else { 1_000_000 };
    let (took, records) = recovery(keys);
    if json {
        println!(
            "{{\"bench\":\"recovery\",\"keys\":{keys},\"records\":{records},\"ms\":{}}}",
            took.as_millis()
        );
    } else {
        println!(
            "recovery of {keys} keys ({records} records, every checksum verified): {} ms",
            took.as_millis()
        );
    }
}
