//! A durable key-value service on a pst port and a pst-store log, in one loop.
//!
//! ```sh
//! cargo run --release -p pst --example durable_kv [POOL] [ADDR]
//!     # defaults: ./pst-data/durable-kv/pool, 127.0.0.1:7001
//! printf 'SET greeting hello\n' | nc -q1 127.0.0.1 7001     # OK 1
//! printf 'GET greeting\n'       | nc -q1 127.0.0.1 7001     # hello
//! ```
//!
//! The protocol is one command per line: `SET key value`, `GET key`, `DEL key`. The point is
//! the order of things in each batch, which is what makes a reply an acknowledgement:
//! 1. one `sync` receives the data of every connection into pool buffers;
//! 2. a `SET` whose line lies in one received buffer is stored **where it landed**: the value's
//!    byte range of that buffer is shared into the store's log record (no copy); a line that
//!    straddles two receives is assembled and copied into fresh pool buffers;
//! 3. one `commit` per batch makes every record of the batch durable (`fdatasync` with
//!    `PersistMode::Fsync`);
//! 4. only then are the batch's replies queued — they leave with the next `sync`.
//!
//! Kill it with `kill -9` at any moment and start it again: every `OK` it sent is there.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pst::{ConnId, Extent, PersistMode, Pool, PoolOptions, Port, PortConfig, SlotKind};
use pst_store::PoolStore;

/// Per-connection state: the start of a line that the last receive cut off.
#[derive(Default)]
struct Conn {
    partial: Vec<u8>,
}

/// One parsed command; a `SET` value is a range of the slot's buffer, or copied bytes.
enum Cmd {
    Set(Vec<u8>, Value),
    Get(Vec<u8>),
    Del(Vec<u8>),
    Bad,
}

enum Value {
    /// `skip..skip + len` of the received buffer.
    InPlace(u32, u32),
    Copied(Vec<u8>),
}

fn parse(line: &[u8], base: u32) -> Cmd {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(b"SET"), Some(k), Some(v)) => {
            let skip = base + (v.as_ptr() as usize - line.as_ptr() as usize) as u32;
            Cmd::Set(k.to_vec(), Value::InPlace(skip, v.len() as u32))
        }
        (Some(b"GET"), Some(k), None) => Cmd::Get(k.to_vec()),
        (Some(b"DEL"), Some(k), None) => Cmd::Del(k.to_vec()),
        _ => Cmd::Bad,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "./pst-data/durable-kv/pool".to_owned()),
    );
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".to_owned())
        .parse()?;
    let opts = PoolOptions {
        persist: PersistMode::Fsync,
        ..PoolOptions::default()
    };
    // Created if absent; refused (untouched) if foreign, corrupt or held by another process.
    let pool = Arc::new(Pool::open(&path, &opts)?);
    let (mut store, report) = PoolStore::open_pool(&pool)?;
    eprintln!(
        "recovered {} records, {} keys from {}",
        report.records,
        report.live_keys,
        path.display()
    );
    // Buffers the recovered store references are never lent to the kernel.
    let n = pool.geometry().buf_count;
    let mut port = Port::with_live(pool, 0..n, PortConfig::default(), |b| store.holds(b) as u16)?;
    eprintln!("durable_kv listening on {}", port.listen(addr)?);

    let mut conns: HashMap<ConnId, Conn> = HashMap::new();
    let mut replies: Vec<(ConnId, Vec<u8>)> = Vec::new();
    loop {
        port.sync(None)?;
        let mut wrote = false;
        while let Some(slot) = port.next_rx() {
            match slot.kind {
                SlotKind::Accepted => {
                    conns.insert(slot.conn, Conn::default());
                }
                SlotKind::End | SlotKind::Error(_) => {
                    conns.remove(&slot.conn);
                    port.close(slot.conn);
                }
                SlotKind::Data => {
                    let c = conns.entry(slot.conn).or_default();
                    // Parse in place: the payload is read where the kernel put it.
                    let mut cmds = Vec::new();
                    let data = port.payload(&slot);
                    let mut start = 0;
                    while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
                        let line = &data[start..start + nl];
                        if c.partial.is_empty() {
                            cmds.push(parse(line, start as u32));
                        } else {
                            // The line began in an earlier receive: assemble and copy.
                            c.partial.extend_from_slice(line);
                            let whole = std::mem::take(&mut c.partial);
                            cmds.push(match parse(&whole, 0) {
                                Cmd::Set(k, Value::InPlace(s, l)) => Cmd::Set(
                                    k,
                                    Value::Copied(whole[s as usize..(s + l) as usize].to_vec()),
                                ),
                                other => other,
                            });
                        }
                        start += nl + 1;
                    }
                    c.partial.extend_from_slice(&data[start..]);
                    // Keep the buffer while its values are shared into the store.
                    let kept = port.keep(&slot);
                    for cmd in cmds {
                        let reply = execute(cmd, &mut port, kept.as_ref(), &mut store);
                        wrote |= reply.1;
                        replies.push((slot.conn, reply.0));
                    }
                    if let Some(e) = kept {
                        port.release(e);
                    }
                }
            }
        }
        // Group commit: one barrier for the batch, before any of its replies.
        if wrote {
            if let Err(e) = store.commit() {
                // Nothing of this batch is acknowledged; the store refuses writes from now on.
                eprintln!("commit failed: {e}");
                for (conn, _) in replies.drain(..) {
                    port.close(conn);
                }
            }
        }
        for e in store.take_released() {
            port.release(e);
        }
        for (conn, r) in replies.drain(..) {
            // A reply that finds no buffer is dropped with its connection (back-pressure).
            if port.send_copy(conn, &r).is_err() {
                port.close(conn);
            }
        }
    }
}

/// Run one command; returns the reply and whether it wrote to the store.
fn execute(
    cmd: Cmd,
    port: &mut Port,
    kept: Option<&Extent>,
    store: &mut PoolStore,
) -> (Vec<u8>, bool) {
    match cmd {
        Cmd::Set(key, value) => {
            let extents = match (value, kept) {
                (Value::InPlace(skip, len), Some(buf)) => Some(vec![port.share(buf, skip, len)]),
                (Value::InPlace(..), None) => None,
                (Value::Copied(bytes), _) => pst::copy_into(port, &bytes).map(|e| e.into_vec()),
            };
            let Some(extents) = extents else {
                return (b"ERR pool exhausted\n".to_vec(), false);
            };
            match store.put(&key, extents) {
                Ok(seq) => (format!("OK {seq}\n").into_bytes(), true),
                Err(e) => (format!("ERR {e}\n").into_bytes(), false),
            }
        }
        Cmd::Get(key) => {
            let mut out = Vec::new();
            match store.read_value(&key, &mut out) {
                Ok(true) => {
                    out.push(b'\n');
                    (out, false)
                }
                Ok(false) => (b"NIL\n".to_vec(), false),
                Err(e) => (format!("ERR {e}\n").into_bytes(), false),
            }
        }
        Cmd::Del(key) => match store.delete(&key) {
            Ok(Some(_)) => (b"1\n".to_vec(), true),
            Ok(None) => (b"0\n".to_vec(), false),
            Err(e) => (format!("ERR {e}\n").into_bytes(), false),
        },
        Cmd::Bad => (
            b"ERR expected SET key value | GET key | DEL key\n".to_vec(),
            false,
        ),
    }
}
