//! `pst inspect`: pool geometry and checksum verification.

use std::path::PathBuf;

use std::sync::Arc;

use pst::{Pool, PoolOptions};

/// Options of `pst inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The pool file (as given to --pool).
    pub path: PathBuf,
}

/// Print the pool's geometry; exit 1 if the pool cannot be opened or fails verification.
pub fn run(a: InspectArgs) -> std::process::ExitCode {
    let opts = PoolOptions {
        read_only: true,
        ..PoolOptions::default()
    };
    match Pool::open(&a.path, &opts) {
        Ok(pool) => {
            let pool = Arc::new(pool);
            let h = pool.header();
            let g = h.geometry;
            println!("pool:         {}", a.path.display());
            match h.log_may_grow() {
                true => println!(
                    "format:       v{} (header checksum ok; the log may borrow slots of the data region)",
                    h.version
                ),
                false => println!(
                    "format:       v{} (header checksum ok; the log stays in its region: a pool created by this release lets it grow into the buffers)",
                    h.version
                ),
            }
            println!(
                "buffers:      {} x {} B = {} B",
                g.buf_count,
                g.buf_size,
                g.buf_count as u64 * g.buf_size as u64
            );
            println!("log region:   {} B at offset {}", g.log_len, h.log_off);
            println!("data region:  offset {}", h.data_off);
            println!("file length:  {} B", h.total_len);
            println!("pmem:         {}", pool.pm_report());
            let media = pool.claim_log().expect("fresh pool");
            let t0 = std::time::Instant::now();
            match pst_store::Store::inspect(media, h.log_off..h.log_off + g.log_len) {
                Ok((st, rep)) => {
                    let s = st.stats();
                    println!("log records:  {} (last seq {}), every header checksum and every live value's and WAL record's payload checksum verified", rep.records, rep.last_seq);
                    println!(
                        "log segments: {} in use, {} borrowed from the data region",
                        rep.segments.1, s.borrowed_segments
                    );
                    println!(
                        "log space:    {} B usable, {} B held by dead records (superseded, deleted, tombstones) until the cleaner passes",
                        s.log_capacity, s.dead_log_bytes
                    );
                    println!("live keys:    {}", rep.live_keys);
                    println!(
                        "live bytes:   {} in {} buffers held; {} buffers free",
                        s.live_bytes,
                        s.buffers_held,
                        g.buf_count as u64 - s.buffers_held
                    );
                    if s.live_bytes > 0 {
                        println!(
                            "space amp:    {:.2} (bytes of the buffers held, borrowed log slots included, over live bytes)",
                            (s.buffers_held * g.buf_size as u64) as f64 / s.live_bytes as f64
                        );
                    }
                    println!(
                        "tail:         {}",
                        match (&rep.torn, &rep.corrupt) {
                            // The same end, seen as damage: a later record proves it committed.
                            (_, Some(_)) => "damaged (see CORRUPT below)".to_owned(),
                            (Some(t), None) => format!("torn ({t}), unacknowledged"),
                            (None, None) if rep.sealed => {
                                "clean, sealed (the last stop was clean)".to_owned()
                            }
                            (None, None) => "clean (not sealed: the last stop was not a clean \
                                one, or predates seals)"
                                .to_owned(),
                        }
                    );
                    println!("scan time:    {} ms", t0.elapsed().as_millis());
                    if let Some(c) = rep.corrupt {
                        eprintln!("pst inspect: CORRUPT: {c}");
                        return std::process::ExitCode::FAILURE;
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pst inspect: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("pst inspect: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
