//! `pst inspect`: pool geometry and checksum verification.

use std::path::PathBuf;

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
            let h = pool.header();
            let g = h.geometry;
            println!("pool:         {}", a.path.display());
            println!(
                "format:       v{} (header checksum ok)",
                pst_pool::header::VERSION
            );
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
            println!("store:        not verified (this build has no store layer yet)");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pst inspect: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
