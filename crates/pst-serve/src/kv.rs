//! `pst kv`: the Redis protocol (RESP2, inline commands too) over the pst store. `SET` values
//! are stored from the pool buffers they arrived in; `GET` sends them back from there. Replies
//! leave after the batch's group commit, as Redis does with `appendfsync always`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use pst_resp::{reply, CommandFramer, Event, Limits};

use crate::protocol::{Io, Piece, Protocol};
use crate::store::PoolStore;

/// The Redis-protocol service.
#[derive(Debug)]
pub struct KvService {
    limits: Limits,
    password: Option<String>,
    requests: AtomicU64,
}

/// Per-connection state.
#[derive(Debug)]
pub struct KvConn {
    framer: CommandFramer,
    authed: bool,
}

impl KvService {
    /// A service; with a password, commands other than AUTH/PING/QUIT need AUTH first.
    pub fn new(max_value: u64, password: Option<String>) -> KvService {
        KvService {
            limits: Limits {
                max_bulk: max_value,
                ..Limits::default()
            },
            password,
            requests: AtomicU64::new(0),
        }
    }
}

/// Bytes being built for the reply, flushed into `Piece::Bytes` before zero-copy pieces.
struct Out<'a> {
    buf: Vec<u8>,
    pieces: &'a mut Vec<Piece>,
}

impl Out<'_> {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.pieces
                .push(Piece::Bytes(std::mem::take(&mut self.buf)));
        }
    }
}

/// What Redis answers a write it has no memory for; `pst kv` answers it when the pool or the
/// log is full (DESIGN §4), and keeps serving reads, deletes and `FLUSHALL`.
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

fn arity_error(out: &mut Vec<u8>, name: &str) {
    reply::error(
        out,
        &format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ),
    );
}

/// Write a stored value as a bulk string, zero copy where the engine can.
fn bulk_value(store: &PoolStore, key: &[u8], io: &mut dyn Io, out: &mut Out<'_>) {
    let Some(v) = store.get(key) else {
        reply::null(&mut out.buf);
        return;
    };
    if !store.verify(&v) {
        tracing::error!(seq = v.seq, "stored value fails its checksum; not served");
        reply::error(&mut out.buf, "ERR stored value is corrupt");
        return;
    }
    if let Some(exts) = io.zero_copy(v.extents) {
        reply::bulk_head(&mut out.buf, v.len as usize);
        out.flush();
        out.pieces.extend(exts.into_iter().map(Piece::Ext));
        reply::crlf(&mut out.buf);
        return;
    }
    let mut val = Vec::new();
    match store.read_value(key, &mut val) {
        Ok(true) => reply::bulk(&mut out.buf, &val),
        Ok(false) => reply::null(&mut out.buf),
        Err(_) => reply::error(&mut out.buf, "ERR stored value is corrupt"),
    }
}

impl KvService {
    /// Execute one command. Returns false for QUIT.
    fn exec(
        &self,
        c: &mut KvConn,
        args: &[Range<u64>],
        io: &mut dyn Io,
        store: &mut PoolStore,
        out: &mut Out<'_>,
    ) -> bool {
        let mut name = Vec::new();
        io.gather(args[0].clone(), &mut name);
        name.make_ascii_uppercase();
        let name = String::from_utf8_lossy(&name).into_owned();
        let n = args.len();
        let arg = |io: &dyn Io, i: usize| {
            let mut v = Vec::new();
            io.gather(args[i].clone(), &mut v);
            v
        };
        if let Some(pw) = &self.password {
            if !c.authed && !matches!(name.as_str(), "AUTH" | "PING" | "QUIT" | "HELLO") {
                reply::error(&mut out.buf, "NOAUTH Authentication required.");
                return true;
            }
            if name == "AUTH" {
                let given = if n == 2 {
                    Some(arg(&*io, 1))
                } else if n == 3 {
                    Some(arg(&*io, 2))
                } else {
                    None
                };
                match given {
                    None => arity_error(&mut out.buf, &name),
                    Some(g) if g == pw.as_bytes() => {
                        c.authed = true;
                        reply::simple(&mut out.buf, "OK");
                    }
                    Some(_) => reply::error(
                        &mut out.buf,
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    ),
                }
                return true;
            }
        }
        let write_err = |out: &mut Out<'_>, e: pst_store::StoreError| match e {
            pst_store::StoreError::LogFull => reply::error(&mut out.buf, OOM),
            e => reply::error(&mut out.buf, &format!("ERR {e}")),
        };
        let len = |r: &Range<u64>| r.end - r.start;
        match name.as_str() {
            "PING" => match n {
                1 => reply::simple(&mut out.buf, "PONG"),
                2 => reply::bulk(&mut out.buf, &arg(&*io, 1)),
                _ => arity_error(&mut out.buf, &name),
            },
            "ECHO" if n == 2 => reply::bulk(&mut out.buf, &arg(&*io, 1)),
            "QUIT" => {
                reply::simple(&mut out.buf, "OK");
                return false;
            }
            "AUTH" => reply::error(&mut out.buf, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            "SET" | "MSET" | "INCR" | "DECR" | "INCRBY" | "DECRBY"
                if !io.has_room(args[1..].iter().map(len).sum()) =>
            {
                reply::error(&mut out.buf, OOM)
            }
            "SET" if n == 3 => {
                let key = arg(&*io, 1);
                match io.extents(args[2].clone()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts) {
                        Ok(_) => reply::simple(&mut out.buf, "OK"),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "SET" if n > 3 => reply::error(&mut out.buf, "ERR syntax error"),
            "GET" if n == 2 => bulk_value(store, &arg(&*io, 1), io, out),
            "MGET" if n >= 2 => {
                reply::array(&mut out.buf, n - 1);
                for i in 1..n {
                    bulk_value(store, &arg(&*io, i), io, out);
                }
            }
            "MSET" if n >= 3 && n % 2 == 1 => {
                let mut err = None;
                for i in (1..n).step_by(2) {
                    let key = arg(&*io, i);
                    let r = match io.extents(args[i + 1].clone()) {
                        None => Err(pst_store::StoreError::LogFull),
                        Some(exts) => store.put(&key, exts),
                    };
                    if let Err(e) = r {
                        err = Some(e);
                        break;
                    }
                }
                match err {
                    None => reply::simple(&mut out.buf, "OK"),
                    Some(e) => write_err(out, e),
                }
            }
            "DEL" | "UNLINK" if n >= 2 => {
                let mut count = 0;
                for i in 1..n {
                    match store.delete(&arg(&*io, i)) {
                        Ok(Some(_)) => count += 1,
                        Ok(None) => {}
                        Err(e) => {
                            write_err(out, e);
                            return true;
                        }
                    }
                }
                reply::int(&mut out.buf, count);
            }
            "EXISTS" if n >= 2 => {
                let count = (1..n).filter(|&i| store.get(&arg(&*io, i)).is_some()).count();
                reply::int(&mut out.buf, count as i64);
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by: Option<i64> = match (name.as_str(), n) {
                    ("INCR", 2) => Some(1),
                    ("DECR", 2) => Some(-1),
                    ("INCRBY", 3) | ("DECRBY", 3) => {
                        let v = std::str::from_utf8(&arg(&*io, 2)).ok().and_then(|s| s.parse::<i64>().ok());
                        match v {
                            Some(v) if name == "DECRBY" => v.checked_neg(),
                            v => v,
                        }
                        .or_else(|| {
                            reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                            None
                        })
                    }
                    _ => {
                        arity_error(&mut out.buf, &name);
                        None
                    }
                };
                let Some(by) = by else { return true };
                let key = arg(&*io, 1);
                let mut cur = Vec::new();
                let old = match store.read_value(&key, &mut cur) {
                    Ok(true) => std::str::from_utf8(&cur).ok().and_then(|s| s.parse::<i64>().ok()),
                    Ok(false) => Some(0),
                    Err(_) => None,
                };
                let Some(new) = old.and_then(|o| o.checked_add(by)) else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                match io.copy_in(new.to_string().as_bytes()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts) {
                        Ok(_) => reply::int(&mut out.buf, new),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "DBSIZE" if n == 1 => reply::int(&mut out.buf, store.len() as i64),
            "FLUSHALL" | "FLUSHDB" => match store.clear() {
                Ok(_) => reply::simple(&mut out.buf, "OK"),
                Err(e) => write_err(out, e),
            },
            "SELECT" if n == 2 => {
                if arg(&*io, 1) == b"0" {
                    reply::simple(&mut out.buf, "OK")
                } else {
                    reply::error(&mut out.buf, "ERR DB index is out of range")
                }
            }
            "INFO" => {
                let st = store.stats();
                let text = format!(
                    "# Server\r\nredis_version:7.0.0\r\npst_version:{}\r\nredis_mode:standalone\r\n\r\n# Persistence\r\naof_enabled:1\r\npst_log_records:{}\r\npst_log_segments_free:{}/{}\r\npst_commits:{}\r\npst_compactions:{}\r\npst_buffers_held:{}\r\n\r\n# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n",
                    env!("CARGO_PKG_VERSION"),
                    st.records,
                    st.free_segments,
                    st.segments,
                    st.commits,
                    st.compactions,
                    st.buffers_held,
                    st.live_keys
                );
                reply::bulk(&mut out.buf, text.as_bytes());
            }
            // redis-cli asks for COMMAND DOCS at start; redis-benchmark for CONFIG GET: empty
            // answers are what a minimal server gives and both clients accept them.
            "COMMAND" => reply::array(&mut out.buf, 0),
            "CONFIG" if n == 3 && arg(&*io, 1).eq_ignore_ascii_case(b"GET") => {
                let param = arg(&*io, 2).to_ascii_lowercase();
                let value: &[u8] = match &param[..] {
                    b"appendonly" => b"yes",
                    b"appendfsync" => b"always",
                    _ => b"",
                };
                reply::array(&mut out.buf, 2);
                reply::bulk(&mut out.buf, &param);
                reply::bulk(&mut out.buf, value);
            }
            "CONFIG" => reply::error(&mut out.buf, "ERR CONFIG subcommand not supported (only CONFIG GET)"),
            "CLIENT" => reply::simple(&mut out.buf, "OK"),
            "ECHO" | "SET" | "GET" | "MGET" | "MSET" | "DEL" | "UNLINK" | "EXISTS" | "DBSIZE" | "SELECT" => {
                arity_error(&mut out.buf, &name)
            }
            _ => {
                let mut msg = format!("ERR unknown command '{}', with args beginning with: ", String::from_utf8_lossy(&arg(&*io, 0)));
                for i in 1..n.min(4) {
                    msg.push_str(&format!("'{}' ", String::from_utf8_lossy(&arg(&*io, i))));
                }
                reply::error(&mut out.buf, msg.trim_end());
            }
        }
        true
    }
}

impl Protocol for KvService {
    type Conn = KvConn;

    fn conn(&self) -> KvConn {
        KvConn {
            framer: CommandFramer::new(self.limits),
            authed: self.password.is_none(),
        }
    }

    fn needed_from(&self, c: &KvConn) -> u64 {
        c.framer.needed_from()
    }

    fn on_chunk(
        &self,
        c: &mut KvConn,
        chunk: Range<u64>,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        let mut events = Vec::new();
        io.with_bytes(chunk, &mut |b| c.framer.feed(b, &mut events));
        let Some(store) = store else { return false };
        let mut out = Out {
            buf: Vec::new(),
            pieces,
        };
        let mut keep = true;
        for ev in events {
            match ev {
                Event::Command(args) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    if !self.exec(c, &args, io, store, &mut out) {
                        keep = false;
                        break;
                    }
                }
                Event::Error(why) => {
                    reply::error(&mut out.buf, &format!("ERR Protocol error: {why}"));
                    keep = false;
                    break;
                }
            }
        }
        out.flush();
        keep
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"-ERR max number of clients reached\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::Conversation;

    fn conv(pass: Option<&str>) -> Conversation<KvService> {
        Conversation::new(KvService::new(1 << 20, pass.map(str::to_owned)), true)
    }

    /// A RESP command.
    fn cmd(args: &[&str]) -> String {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s += &format!("${}\r\n{a}\r\n", a.len());
        }
        s
    }

    #[test]
    fn strings_round_trip() {
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["PING"])), "+PONG\r\n");
        assert_eq!(c.say(&cmd(&["SET", "k", "hello"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$5\r\nhello\r\n");
        assert_eq!(c.say(&cmd(&["GET", "missing"])), "$-1\r\n");
        assert_eq!(c.say(&cmd(&["EXISTS", "k", "missing"])), ":1\r\n");
        assert_eq!(c.say(&cmd(&["INCR", "n"])), ":1\r\n");
        assert_eq!(c.say(&cmd(&["INCR", "n"])), ":2\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":2\r\n");
        assert_eq!(c.say(&cmd(&["DEL", "k", "n", "missing"])), ":2\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":0\r\n");
    }

    #[test]
    fn inline_commands_work() {
        let mut c = conv(None);
        assert_eq!(c.say("PING\r\n"), "+PONG\r\n");
        assert_eq!(c.say("SET a b\r\n"), "+OK\r\n");
        assert_eq!(c.say("GET a\r\n"), "$1\r\nb\r\n");
    }

    #[test]
    fn wrong_arity_and_unknown_commands_are_errors() {
        let mut c = conv(None);
        assert_eq!(
            c.say(&cmd(&["GET"])),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        let unknown = c.say(&cmd(&["NOSUCH", "x"]));
        assert!(unknown.starts_with("-ERR unknown command"), "{unknown}");
        assert!(unknown.ends_with("\r\n") && unknown.matches("\r\n").count() == 1);
        // The connection survives both.
        assert_eq!(c.say(&cmd(&["PING"])), "+PONG\r\n");
    }

    #[test]
    fn incr_refuses_non_integers() {
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["SET", "s", "abc"])), "+OK\r\n");
        assert_eq!(
            c.say(&cmd(&["INCR", "s"])),
            "-ERR value is not an integer or out of range\r\n"
        );
    }

    #[test]
    fn auth_gates_everything_but_ping_and_auth() {
        let mut c = conv(Some("s3cret"));
        assert_eq!(
            c.say(&cmd(&["SET", "k", "v"])),
            "-NOAUTH Authentication required.\r\n"
        );
        let wrong = c.say(&cmd(&["AUTH", "nope"]));
        assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
        assert_eq!(c.say(&cmd(&["AUTH", "s3cret"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["SET", "k", "v"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$1\r\nv\r\n");
    }

    #[test]
    fn protocol_error_closes_the_connection() {
        let mut c = conv(None);
        let (out, keep) = c.send(b"*2\r\n$x\r\n");
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("-ERR Protocol error"), "{out}");
        assert!(!keep);
    }

    #[test]
    fn busy_reply_is_one_resp_error() {
        let svc = KvService::new(1024, None);
        assert_eq!(svc.busy_reply(), b"-ERR max number of clients reached\r\n");
    }
}
