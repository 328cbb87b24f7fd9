//! The smallest pst server: a netmap-style echo on one port.
//!
//! ```sh
//! cargo run --release -p pst --example echo            # listens on 127.0.0.1:7000
//! cargo run --release -p pst --example echo 127.0.0.1:7001
//! ```
//!
//! One `sync` is one `io_uring_enter`: it sends what was queued and fills the RX ring with the
//! data of every connection. Each data slot's buffer is kept (the kernel gets a spare one
//! instead) and queued for sending as it is: the echo leaves from the very pool buffer the
//! kernel received it into.
use std::sync::Arc;

use pst::{Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_owned())
        .parse()?;
    // 64 MiB of anonymous memory cut into 2 KiB buffers (a file pool: `Pool::open`).
    let geometry = Geometry::for_size(64 << 20, 2048).map_err(anyhow::Error::msg)?;
    let pool = Arc::new(Pool::anonymous(geometry, PersistMode::None)?);
    let mut port = Port::whole(pool, PortConfig::default())?;
    let local = port.listen(addr)?;
    eprintln!("echo listening on {local}");
    loop {
        port.sync(None)?;
        while let Some(slot) = port.next_rx() {
            match slot.kind {
                SlotKind::Accepted => {}
                SlotKind::Data => {
                    // `None`: no spare buffer left (back-pressure); the data is dropped here.
                    if let Some(ext) = port.keep(&slot) {
                        // Refused only if the connection already failed; its slot follows.
                        let _ = port.send(slot.conn, ext);
                    }
                }
                SlotKind::End | SlotKind::Error(_) => port.close(slot.conn),
            }
        }
    }
}
