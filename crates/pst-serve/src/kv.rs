//! `pst kv`: the Redis protocol (RESP2, inline commands too) over the pst store. `SET` values
//! are stored from the pool buffers they arrived in; `GET` sends them back from there. Replies
//! leave after the batch's group commit, as Redis does with `appendfsync always`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use pst_resp::{reply, CommandFramer, Event, Limits};

use crate::expiry::{now_ms, Ttl};
use crate::hashes::{field_key, Hashes, Kind};

mod dump;
mod sets;
use crate::owned::{OwnedArgs, OwnedIo};
use crate::protocol::{Io, Piece, Protocol};
use crate::store::PoolStore;

/// The Redis-protocol service.
#[derive(Debug)]
pub struct KvService {
    limits: Limits,
    password: Option<String>,
    /// What `CONFIG GET appendonly`/`appendfsync` truthfully say.
    persist: pst::PersistMode,
    /// Tuning parameters set with `CONFIG SET` (accepted, remembered, without effect).
    tuning: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    next_client_id: AtomicU64,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Key deadlines (`EXPIRE`, `SET .. EX`), shared by every worker; taken once per chunk,
    /// inside the store's lock.
    ttl: std::sync::Mutex<Ttl>,
    /// The hashes (field tables), likewise.
    hashes: std::sync::Mutex<Hashes>,
    /// Versions of `WATCH`ed keys, likewise.
    watches: std::sync::Mutex<Watches>,
    /// `INFO commandstats`: per command (index in [`COMMANDS`]) calls, microseconds, failed
    /// and rejected calls.
    cmd_stats: Box<[[AtomicU64; 4]]>,
    /// `CONFIG SET maxmemory`: writes are refused (`OOM`) while the pool bytes the store holds
    /// (`used_memory`) exceed it; 0 = no limit but the pool's.
    maxmemory: AtomicU64,
    /// Set by `SHUTDOWN`: the server's stop flag ([`KvService::with_shutdown`]).
    shutdown: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Per-connection state.
#[derive(Debug)]
pub struct KvConn {
    framer: CommandFramer,
    authed: bool,
    /// The selected database (0..16).
    db: u8,
    id: u64,
    name: Option<Vec<u8>>,
    /// Inside `MULTI`: the commands queued for `EXEC`.
    tx: Option<Tx>,
    /// `WATCH`ed keys (stored form) with the sequence number of their record and their
    /// deadline when watched (a write, a delete, an expiry or a new deadline changes one).
    watched: Vec<Watched>,
    /// `HELLO 3` was sent: RESP3 replies.
    resp3: bool,
    /// Decoded arguments of inline commands (kept while a `MULTI` queues them).
    inline: OwnedArgs,
    /// Framed commands not yet run: normally empty between chunks; while a command is held
    /// (`deferred`), it and those behind it. Kept, like `fed`, so that steady traffic
    /// allocates no queue.
    queue: std::collections::VecDeque<Event>,
    /// The framer's output for one chunk.
    fed: Vec<Event>,
    /// A command that frees space (`DEL`, `UNLINK`, `GETDEL`, `FLUSHALL`) but needs log space
    /// for its records, met when the log has none to spare: rather than refusing it with
    /// `-OOM`, the connection holds it at the front of `queue` (what follows waits behind it,
    /// so replies stay in order) until the cleaner gives space back — a few commits — and
    /// runs it then, or at this deadline ([`DEFER_LIMIT`] after it was held), when it is
    /// refused whole (nothing deleted). Other connections go on meanwhile.
    deferred: Option<std::time::Instant>,
}

/// Longest a delete waits for log space before it is refused.
const DEFER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a command (`cmd`: its [`command_index`]) writes one key's value: the writes that wait
/// for log space the cleaner is about to free ([`pst_store::Store::put_must_wait`]) rather than
/// being refused.
fn put_like(cmd: Option<usize>) -> bool {
    cmd.is_some_and(|i| {
        matches!(
            COMMANDS[i],
            "SET"
                | "SETEX"
                | "PSETEX"
                | "SETNX"
                | "GETSET"
                | "INCR"
                | "DECR"
                | "INCRBY"
                | "DECRBY"
                | "INCRBYFLOAT"
                | "APPEND"
                | "SETRANGE"
        )
    })
}

/// Removal records a command (`cmd`: its [`command_index`]) will log, and the bytes of their
/// keys: `None` for a command that does not remove (or whose need is unknown).
fn removal_need(cmd: Option<usize>, args: &[Range<u64>]) -> Option<(usize, usize)> {
    let keys = || {
        args[1..]
            .iter()
            .map(|r| (r.end - r.start) as usize + 2)
            .sum()
    };
    match COMMANDS[cmd?] {
        "DEL" | "UNLINK" if args.len() >= 2 => Some((args.len() - 1, keys())),
        "GETDEL" if args.len() == 2 => Some((1, keys())),
        "FLUSHALL" => Some((1, 0)),
        _ => None,
    }
}

/// A `WATCH`ed key: its version and whether it existed when watched.
#[derive(Debug)]
struct Watched {
    key: Vec<u8>,
    version: (u64, u64),
    existed: bool,
}

/// Versions of the keys some client has `WATCH`ed: every write command bumps the versions of
/// the keys it names (`FLUSHALL`/`FLUSHDB` those they delete), as Redis's `touchWatchedKey` does; an
/// `EXEC` whose watched versions moved, or whose watched key appeared or vanished (expiry
/// included), is aborted. Compaction re-appending a record is not a change.
#[derive(Debug, Default)]
pub struct Watches {
    versions: HashMap<Vec<u8>, u64>,
    /// Bumped when the table is cleared (it is bounded): every watch taken before then aborts.
    epoch: u64,
    next: u64,
}

impl Watches {
    /// Most keys tracked; beyond, the table starts over (watchers then abort, never miss).
    const MAX: usize = 100_000;

    fn watch(&mut self, key: &[u8]) -> (u64, u64) {
        if self.versions.len() >= Self::MAX && !self.versions.contains_key(key) {
            self.versions.clear();
            self.epoch += 1;
        }
        (self.epoch, *self.versions.entry(key.to_vec()).or_insert(0))
    }

    fn version(&self, key: &[u8]) -> (u64, u64) {
        (self.epoch, self.versions.get(key).copied().unwrap_or(0))
    }

    fn touch(&mut self, key: &[u8]) {
        if let Some(v) = self.versions.get_mut(key) {
            self.next += 1;
            *v = self.next;
        }
    }

    /// Watched keys that exist (in database `db`, or in any).
    fn existing(&self, store: &PoolStore, db: Option<u8>) -> Vec<Vec<u8>> {
        self.versions
            .keys()
            .filter(|k| store.get(k).is_some() && db.is_none_or(|d| key_db(k) == d))
            .cloned()
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Touch every watched key of these databases.
    fn touch_dbs(&mut self, dbs: &[i64]) {
        for (k, v) in self.versions.iter_mut() {
            if dbs.contains(&(key_db(k) as i64)) {
                self.next += 1;
                *v = self.next;
            }
        }
    }
}

/// Commands that never change a key (everything else counts as a write for `WATCH`).
const READ_ONLY: [&str; 50] = [
    "GET",
    "MGET",
    "EXISTS",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "STRLEN",
    "GETRANGE",
    "SUBSTR",
    "TYPE",
    "KEYS",
    "SCAN",
    "DBSIZE",
    "RANDOMKEY",
    "HGET",
    "HMGET",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HKEYS",
    "HVALS",
    "HGETALL",
    "HRANDFIELD",
    "HSCAN",
    "DUMP",
    "SCARD",
    "SISMEMBER",
    "SMISMEMBER",
    "SMEMBERS",
    "SRANDMEMBER",
    "SSCAN",
    "SINTER",
    "SUNION",
    "SDIFF",
    "GETBIT",
    "OBJECT",
    "MEMORY",
    "TOUCH",
    "PING",
    "ECHO",
    "INFO",
    "CONFIG",
    "CLIENT",
    "COMMAND",
    "SELECT",
    "TIME",
    "AUTH",
    "QUIT",
    "FUNCTION",
];

/// A transaction being queued (`MULTI` … `EXEC`). Queued commands are stream ranges: their
/// bytes stay where they landed until `EXEC` (the connection's `needed_from` keeps them).
#[derive(Debug, Default)]
struct Tx {
    queued: Vec<Vec<Range<u64>>>,
    /// Stream bytes the queued commands span (kept in pool buffers until EXEC).
    bytes: u64,
    /// A command was refused while queueing: `EXEC` aborts.
    failed: bool,
}

/// Most commands one transaction may queue.
const MAX_QUEUED: usize = 100_000;

/// Arity of the commands `pst kv` knows, as Redis states it: `n` exactly `n` arguments
/// (the name included), `-n` at least `n`. Checked when a command is queued in `MULTI`.
fn arity(name: &str) -> Option<i32> {
    Some(match name {
        "GET" | "INCR" | "DECR" | "GETDEL" | "STRLEN" | "TTL" | "PTTL" | "EXPIRETIME"
        | "PEXPIRETIME" | "PERSIST" | "TYPE" | "KEYS" | "SELECT" | "ECHO" => 2,
        "SWAPDB" => 3,
        "INCRBY" | "DECRBY" | "GETSET" | "SETNX" | "APPEND" | "RENAME" | "RENAMENX" | "GETBIT"
        | "INCRBYFLOAT" | "MOVE" => 3,
        "GETRANGE" | "SUBSTR" | "SETEX" | "PSETEX" | "SETRANGE" | "SETBIT" => 4,
        "RANDOMKEY" | "DBSIZE" | "MULTI" | "EXEC" | "DISCARD" | "UNWATCH" | "TIME" | "SAVE" => 1,
        "SET" | "MSET" | "MSETNX" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => -3,
        "COPY" | "LCS" => -3,
        "HSET" | "HMSET" => -4,
        "HSETNX" | "HINCRBY" | "HINCRBYFLOAT" => 4,
        "HGET" | "HEXISTS" | "HSTRLEN" => 3,
        "HMGET" | "HDEL" | "HSCAN" => -3,
        "HLEN" | "HKEYS" | "HVALS" | "HGETALL" => 2,
        "HRANDFIELD" => -2,
        "DUMP" => 2,
        "RESTORE" => -4,
        "SCARD" | "SMEMBERS" => 2,
        "SISMEMBER" => 3,
        "SMOVE" => 4,
        "SADD" | "SREM" | "SMISMEMBER" | "SSCAN" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            -3
        }
        "SRANDMEMBER" | "SPOP" | "SINTER" | "SUNION" | "SDIFF" => -2,
        "SCAN" | "OBJECT" | "TOUCH" | "MEMORY" | "DEL" | "UNLINK" | "EXISTS" | "MGET" | "GETEX"
        | "CONFIG" | "CLIENT" | "FUNCTION" | "AUTH" | "WATCH" => -2,
        "PING" | "FLUSHALL" | "FLUSHDB" | "INFO" | "COMMAND" | "QUIT" | "SHUTDOWN" => -1,
        _ => return None,
    })
}

/// Databases `SELECT` can choose from.
const DATABASES: u8 = 16;
/// Keys of databases 1..16 are stored under this prefix and the database number; database 0
/// keys are stored as they are (so pools written before databases existed read the same).
const DB_PREFIX: &[u8] = b"\xffpst:db";

thread_local! {
    /// The key buffer of [`hot_key`], between uses.
    static KEY_SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A key read out of a request into this thread's kept buffer (given back on drop): the hot
/// commands (`GET k`, `SET k v`) read their key without allocating.
struct HotKey(Vec<u8>);

impl std::ops::Deref for HotKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for HotKey {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= 4096 {
            KEY_SPARE.with(|s| *s.borrow_mut() = v);
        }
    }
}

/// Argument `r` as a key of database `db` ([`db_key`]'s form), in a [`HotKey`].
fn hot_key(io: &dyn Io, db: u8, r: &Range<u64>) -> HotKey {
    let mut k = KEY_SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    io.gather(r.clone(), &mut k);
    if db != 0 || k.first() == Some(&0xff) {
        k = db_key(db, k);
    }
    HotKey(k)
}

/// The stored form of `key` in database `db`. A database-0 key that itself begins with the
/// reserved `\xff` byte is prefixed too, so that no key of one database can pose as another's.
fn db_key(db: u8, key: Vec<u8>) -> Vec<u8> {
    // The common case (database 0) hands the gathered key back as it is: no second copy.
    if db == 0 && key.first() != Some(&0xff) {
        return key;
    }
    let mut k = Vec::with_capacity(DB_PREFIX.len() + 1 + key.len());
    k.extend_from_slice(DB_PREFIX);
    k.push(db);
    k.extend_from_slice(&key);
    k
}

/// The database a stored key belongs to (`DATABASES` for a key no database can name: a
/// `\xff` key stored before databases existed).
fn key_db(stored: &[u8]) -> u8 {
    match stored.strip_prefix(DB_PREFIX) {
        Some([db, ..]) if *db < DATABASES => *db,
        _ if stored.first() == Some(&0xff) => DATABASES,
        _ => 0,
    }
}

/// The key as its database's clients name it.
fn user_key(stored: &[u8]) -> &[u8] {
    match stored.strip_prefix(DB_PREFIX) {
        Some([_, rest @ ..]) => rest,
        _ => stored,
    }
}

/// Redis's integer syntax (`string2ll`): optional `-`, no `+`, no leading zeros, no `-0`,
/// at most 20 characters, within `i64`.
fn parse_int(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    if b == b"0" {
        return Some(0);
    }
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    if neg {
        (v <= 1 << 63).then(|| (v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// A pseudo-random index below `n` (RANDOMKEY): a xorshift of the clock and a counter —
/// spread, not secret.
fn random_index(n: usize) -> usize {
    static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Relaxed: only variety matters.
    let mut x = t ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % n as u64) as usize
}

/// This process's user and system CPU seconds (`/proc/self/stat`), for `INFO cpu`.
fn process_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of the file (utime, stime), in clock ticks of 1/100 s on Linux.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (tick(11), tick(12))
}

/// This process's resident memory in bytes (`/proc/self/statm`), for `INFO memory`.
fn process_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `GETRANGE`'s slice: negative indices count from the end, both ends inclusive and clamped.
fn redis_range(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (s, e) = (fix(start), fix(end).min(len - 1));
    if len == 0 || s > e || s >= len {
        return &[];
    }
    &v[s as usize..=e as usize]
}

/// Redis-style glob match (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\\x`), case-insensitive as
/// `CONFIG GET` is.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    glob_with(pat, s, true)
}

/// [`glob`], case-sensitive, as `KEYS` is.
fn glob_case(pat: &[u8], s: &[u8]) -> bool {
    glob_with(pat, s, false)
}

fn glob_with(pat: &[u8], s: &[u8], nocase: bool) -> bool {
    // Linear-time wildcard matching (backtrack only to the last `*`), so that a hostile
    // pattern like `a*a*a*…b` costs O(pattern × key), never exponential time.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p + 1, i));
            p += 1;
            continue;
        }
        if let Some(next) = (p < pat.len())
            .then(|| one_char(pat, p, s[i], nocase))
            .flatten()
        {
            p = next;
            i += 1;
            continue;
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Whether the pattern element at `p` (not `*`) matches `c`: the position after it, if so.
fn one_char(pat: &[u8], p: usize, c: u8, nocase: bool) -> Option<usize> {
    let eq = |a: u8, b: u8| {
        if nocase {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    match pat[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pat.len() => eq(pat[p + 1], c).then_some(p + 2),
        b'[' => {
            let mut q = p + 1;
            let neg = pat.get(q) == Some(&b'^');
            if neg {
                q += 1;
            }
            let mut hit = false;
            loop {
                match pat.get(q..)? {
                    [] => return None, // unterminated class: no match
                    [b']', ..] => {
                        q += 1;
                        break;
                    }
                    [b'\\', x, ..] => {
                        hit |= eq(*x, c);
                        q += 2;
                    }
                    [a, b'-', z, ..] if *z != b']' => {
                        let (lo, hi) = if a <= z { (*a, *z) } else { (*z, *a) };
                        hit |= (lo..=hi).contains(&c)
                            || (nocase && (lo..=hi).contains(&c.to_ascii_lowercase()));
                        q += 3;
                    }
                    [a, ..] => {
                        hit |= eq(*a, c);
                        q += 1;
                    }
                }
            }
            (hit != neg).then_some(q)
        }
        a => eq(a, c).then_some(p + 1),
    }
}

/// Pool bytes the store holds (`INFO`'s `used_memory`, what `maxmemory` bounds).
fn used_memory(store: &PoolStore) -> u64 {
    store.stats().buffers_held * pst_pool::Media::header(store.media()).geometry.buf_size as u64
}

/// A memory size as Redis's `memtoull` reads it: digits, then optionally `b`, `k`, `kb`,
/// `m`, `mb`, `g` or `gb` (any case; `k` = 1000, `kb` = 1024).
fn parse_memory(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Commands (besides hash and set commands) whose reply reads the in-memory tables of hash
/// fields, set members or deadlines.
const DERIVED_READS: [&str; 12] = [
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "TYPE",
    "DUMP",
    "OBJECT",
    "MEMORY",
    "MGET",
    "SCAN",
    "RANDOMKEY",
    "LCS",
];

/// Commands Redis refuses inside `MULTI` (`CMD_NO_MULTI`) that `pst kv` has.
const NO_MULTI: [&str; 2] = ["SAVE", "SHUTDOWN"];

/// `CONFIG SET` parameters accepted without effect: encoding and tuning knobs of Redis that
/// have no meaning for this store (clients and test suites set them routinely).
fn harmless_knob(name: &str) -> bool {
    const TYPES: [&str; 5] = ["hash", "list", "set", "zset", "stream-node"];
    const SUFFIXES: [&str; 7] = [
        "-max-listpack-entries",
        "-max-listpack-value",
        "-max-ziplist-entries",
        "-max-ziplist-value",
        "-max-intset-entries",
        "-max-listpack-size",
        "-max-bytes",
    ];
    // A fixed set of names, so that the remembered settings stay bounded.
    TYPES
        .iter()
        .any(|t| SUFFIXES.iter().any(|s| name.strip_prefix(t) == Some(s)))
        || matches!(
            name,
            "list-compress-depth"
                | "lua-time-limit"
                | "busy-reply-threshold"
                | "latency-tracking"
                | "slowlog-log-slower-than"
                | "slowlog-max-len"
                | "lazyfree-lazy-user-del"
                | "lazyfree-lazy-user-flush"
                | "lazyfree-lazy-expire"
                | "lazyfree-lazy-server-del"
                | "activedefrag"
                | "hz"
                | "dynamic-hz"
                | "latency-monitor-threshold"
        )
}

/// An error reply as Redis formats them: CR and LF become spaces (an argument echoed in an
/// error can never split it into two replies).
fn error_line(out: &mut Vec<u8>, msg: &str) {
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    reply::error(out, &clean);
}

/// At most `n` bytes of `b`, as text.
fn cap(b: &[u8], n: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned()
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
            persist: pst::PersistMode::None,
            tuning: std::sync::Mutex::new(Vec::new()),
            next_client_id: AtomicU64::new(1),
            metrics: Default::default(),
            ttl: Default::default(),
            hashes: Default::default(),
            watches: Default::default(),
            cmd_stats: (0..COMMANDS.len()).map(|_| Default::default()).collect(),
            maxmemory: AtomicU64::new(0),
            shutdown: None,
        }
    }

    /// Let `SHUTDOWN` stop the server by setting `stop` (the flag given to
    /// [`crate::serve_until`]): the workers finish their batch, commit and exit, as on SIGTERM.
    /// Without it, `SHUTDOWN` is refused.
    pub fn with_shutdown(
        mut self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> KvService {
        self.shutdown = Some(stop);
        self
    }

    /// True when a write of `bytes` more would take the store's pool bytes over `maxmemory`.
    fn over_maxmemory(&self, store: &PoolStore, bytes: u64) -> bool {
        let max = self.maxmemory.load(Ordering::Relaxed);
        max != 0 && used_memory(store) + bytes > max
    }

    /// Report `persist` as the persistence mode (`CONFIG GET appendonly`, `INFO`).
    pub fn with_persist(mut self, persist: pst::PersistMode) -> KvService {
        self.persist = persist;
        self
    }

    /// Every `CONFIG GET` parameter with its value.
    fn config(&self) -> Vec<(String, Vec<u8>)> {
        let durable = self.persist != pst::PersistMode::None;
        let mut all = vec![
            (
                "appendonly".to_owned(),
                if durable {
                    b"yes".to_vec()
                } else {
                    b"no".to_vec()
                },
            ),
            (
                "appendfsync".to_owned(),
                if durable {
                    b"always".to_vec()
                } else {
                    b"no".to_vec()
                },
            ),
            ("save".to_owned(), Vec::new()),
            (
                "maxmemory".to_owned(),
                self.maxmemory
                    .load(Ordering::Relaxed)
                    .to_string()
                    .into_bytes(),
            ),
            ("databases".to_owned(), DATABASES.to_string().into_bytes()),
            (
                "requirepass".to_owned(),
                self.password.clone().unwrap_or_default().into_bytes(),
            ),
            (
                "proto-max-bulk-len".to_owned(),
                self.limits.max_bulk.to_string().into_bytes(),
            ),
        ];
        all.extend(
            self.tuning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        all
    }
}

/// Bytes being built for the reply, flushed into `Piece::Bytes` before zero-copy pieces.
struct Out<'a> {
    buf: Vec<u8>,
    pieces: &'a mut Vec<Piece>,
    /// The connection speaks RESP3 (`HELLO 3`): nulls are `_`, maps are `%`.
    resp3: bool,
}

impl Out<'_> {
    /// A null (bulk) reply.
    fn null(&mut self) {
        match self.resp3 {
            true => self.buf.extend_from_slice(b"_\r\n"),
            false => reply::null(&mut self.buf),
        }
    }

    /// A null array reply (an aborted `EXEC`).
    fn null_array(&mut self) {
        match self.resp3 {
            true => self.buf.extend_from_slice(b"_\r\n"),
            false => reply::null_array(&mut self.buf),
        }
    }

    /// The head of a map of `n` pairs (a flat array of `2n` elements in RESP2).
    fn map(&mut self, n: usize) {
        match self.resp3 {
            true => {
                use std::io::Write as _;
                let _ = write!(self.buf, "%{n}\r\n");
            }
            false => reply::array(&mut self.buf, 2 * n),
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let next = crate::protocol::reply_buf();
            self.pieces
                .push(Piece::Bytes(std::mem::replace(&mut self.buf, next)));
        }
    }

    /// The last flush: the buffer goes out with the pieces, or back to the spares if empty.
    fn finish(mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            crate::protocol::recycle_reply(buf);
        } else {
            self.pieces.push(Piece::Bytes(buf));
        }
    }
}

/// The commands `pst kv` implements (`COMMAND COUNT`).
const COMMANDS: [&str; 105] = [
    "APPEND",
    "AUTH",
    "CLIENT",
    "COMMAND",
    "CONFIG",
    "COPY",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "DUMP",
    "ECHO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LCS",
    "MEMORY",
    "MGET",
    "MOVE",
    "MSET",
    "MSETNX",
    "MULTI",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PING",
    "PSETEX",
    "PTTL",
    "QUIT",
    "RANDOMKEY",
    "RENAME",
    "RENAMENX",
    "RESET",
    "RESTORE",
    "SADD",
    "SAVE",
    "SCAN",
    "SCARD",
    "SDIFF",
    "SDIFFSTORE",
    "SELECT",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SHUTDOWN",
    "SINTER",
    "SINTERSTORE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SPOP",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "SUNIONSTORE",
    "SWAPDB",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNWATCH",
    "WATCH",
];

/// What Redis answers a write it has no memory for; `pst kv` answers it when the pool or the
/// log is full (DESIGN §4), and keeps serving reads, deletes and `FLUSHALL`.
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// A delete refused because the log has no room for its records even after waiting
/// ([`DEFER_LIMIT`]): nothing was deleted.
const OOM_REMOVAL: &str =
    "OOM the log has no room for this delete's records; nothing was deleted (delete fewer keys at a time)";

/// A store write's failure as the client sees it: a full log is Redis's `-OOM`.
fn write_err(out: &mut Out<'_>, e: pst_store::StoreError) {
    match e {
        pst_store::StoreError::LogFull => reply::error(&mut out.buf, OOM),
        e => reply::error(&mut out.buf, &format!("ERR {e}")),
    }
}

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
        out.null();
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
        Ok(false) => out.null(),
        Err(_) => reply::error(&mut out.buf, "ERR stored value is corrupt"),
    }
}

/// Which arguments of a command are keys (for lazy expiry).
enum KeyArgs {
    /// These argument positions.
    At(Vec<usize>),
    /// The command counts or lists keys: expire every due key first.
    All,
}

fn key_positions(name: &str, n: usize) -> Option<KeyArgs> {
    let at = match name {
        "GET" | "SET" | "GETSET" | "SETNX" | "GETDEL" | "STRLEN" | "APPEND" | "GETRANGE"
        | "SUBSTR" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "EXPIRE" | "PEXPIRE" | "EXPIREAT"
        | "PEXPIREAT" | "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" | "PERSIST" | "SETEX"
        | "PSETEX" | "GETEX" | "TYPE" | "SETRANGE" | "GETBIT" | "SETBIT" | "INCRBYFLOAT"
        | "MOVE" | "HSET" | "HMSET" | "HSETNX" | "HGET" | "HMGET" | "HDEL" | "HLEN" | "HEXISTS"
        | "HSTRLEN" | "HKEYS" | "HVALS" | "HGETALL" | "HINCRBY" | "HINCRBYFLOAT" | "HRANDFIELD"
        | "HSCAN" | "SADD" | "SREM" | "SCARD" | "SISMEMBER" | "SMISMEMBER" | "SMEMBERS"
        | "SRANDMEMBER" | "SPOP" | "SSCAN" | "DUMP" | "RESTORE" => (1..n.min(2)).collect(),
        "SMOVE" => (1..n.min(3)).collect(),
        "SINTER" | "SUNION" | "SDIFF" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            (1..n).collect()
        }
        "COPY" | "LCS" => (1..n.min(3)).collect(),
        "MGET" | "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => (1..n).collect(),
        "OBJECT" => (2..n.min(3)).collect(),
        "MSET" | "MSETNX" => (1..n).step_by(2).collect(),
        "RENAME" | "RENAMENX" => (1..n.min(3)).collect(),
        "DBSIZE" | "KEYS" | "RANDOMKEY" | "FLUSHDB" | "INFO" | "SCAN" | "SWAPDB" => {
            return Some(KeyArgs::All)
        }
        _ => return None,
    };
    Some(KeyArgs::At(at))
}

/// Longest string `SETRANGE`/`SETBIT` may build (Redis's `proto-max-bulk-len` default).
const MAX_STRING: u64 = 512 << 20;

/// A bit offset as `GETBIT`/`SETBIT` take it: a non-negative integer below 2^32.
fn bit_offset(b: &[u8]) -> Option<u64> {
    parse_int(b)
        .filter(|o| (0..(1i64 << 32)).contains(o))
        .map(|o| o as u64)
}

/// A float as `INCRBYFLOAT` reads it: no spaces, no NaN (Rust's syntax is close to `strtold`).
fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// A float as Redis prints `INCRBYFLOAT` results: plain decimal, no exponent, trailing zeros
/// dropped, no negative zero. Redis computes in `long double` and prints 17 decimals; in
/// `f64`, 15 significant digits (of the result or of `scale`, the largest operand, whichever is
/// larger) give the same text for the sums people make (`1 - 1.1` is `-0.1`, not
/// `-0.10000000000000009`).
fn format_float(v: f64, scale: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    // Digits below the 15th of the largest operand are rounding noise of f64 (`1/41 - 1/41`
    // in steps is 2e-17, where Redis's long double prints 0).
    let magnitude = v.abs().max(scale.abs()).log10().floor() as i32;
    let decimals = (14 - magnitude).clamp(0, 17) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".to_owned();
    }
    s
}

/// The key as its database's clients name it, also for keys of the scratch database.
fn user_key_any(stored: &[u8]) -> &[u8] {
    match stored.strip_prefix(DB_PREFIX) {
        Some([_, rest @ ..]) => rest,
        _ => stored,
    }
}

/// Copy key `from` — a string or a hash, with its deadline — to `to`, replacing what `to`
/// held; unless `keep`, delete `from`. Values are copied into fresh buffers.
/// Write a `RESTORE`d value at `key`, replacing what it held (in the command's atomic
/// group). A deadline already past restores nothing, as in Redis.
#[allow(clippy::too_many_arguments)]
fn restore(
    store: &mut PoolStore,
    io: &mut dyn Io,
    ttl: &mut Ttl,
    hs: &mut Hashes,
    key: &[u8],
    value: dump::Value,
    deadline: Option<i64>,
    now: i64,
) -> Result<(), pst_store::StoreError> {
    hs.drop_fields(store, key)?;
    store.delete(key)?;
    ttl.clear(store, key)?;
    if deadline.is_some_and(|at| at <= now) {
        return Ok(());
    }
    let copy = |io: &mut dyn Io, b: &[u8]| io.copy_in(b).ok_or(pst_store::StoreError::LogFull);
    match value {
        dump::Value::String(v) => {
            let exts = copy(io, &v)?;
            store.put(key, exts)?;
        }
        dump::Value::Hash(pairs) => {
            for (f, v) in pairs {
                let exts = copy(io, &v)?;
                hs.insert(store, io, Kind::Hash, key, &f, exts)?;
            }
        }
        dump::Value::Set(members) => {
            for m in members {
                hs.add_member(store, io, key, &m)?;
            }
        }
    }
    if let Some(at) = deadline {
        ttl.set(store, io, key, at)?;
    }
    Ok(())
}

fn relocate(
    store: &mut PoolStore,
    io: &mut dyn Io,
    ttl: &mut Ttl,
    hs: &mut Hashes,
    from: &[u8],
    to: &[u8],
    keep: bool,
) -> Result<(), pst_store::StoreError> {
    // Copies first (room checked per value), so that a move refused for lack of room
    // changes nothing; then whatever `to` held goes, then the records are written.
    let mut copies: Vec<(Option<Vec<u8>>, pst_store::ValueExtents)> = Vec::new();
    let kind = hs.kind(from);
    let fields: Vec<Option<Vec<u8>>> = if kind.is_some() {
        hs.fields(from).map(|f| Some(f.to_vec())).collect()
    } else {
        vec![None]
    };
    let mut v = Vec::new();
    for f in fields {
        let found = match &f {
            Some(f) => store.read_value(&field_key(from, f), &mut v),
            None => store.read_value(from, &mut v),
        };
        let exts = match found {
            // A set member: nothing but its key.
            Ok(true) if v.is_empty() => Some(pst_store::ValueExtents::new()),
            Ok(true) if io.has_room(v.len() as u64) => io.copy_in(&v),
            Ok(true) => None,
            Ok(false) => continue,
            Err(e) => {
                copies
                    .into_iter()
                    .for_each(|(_, x)| x.into_iter().for_each(|e| io.release(e)));
                return Err(e);
            }
        };
        let Some(exts) = exts else {
            copies
                .into_iter()
                .for_each(|(_, x)| x.into_iter().for_each(|e| io.release(e)));
            return Err(pst_store::StoreError::LogFull);
        };
        copies.push((f, exts));
    }
    let deadline = ttl.get(from);
    hs.drop_fields(store, to)?;
    store.delete(to)?;
    ttl.clear(store, to)?;
    for (f, exts) in copies {
        match f {
            Some(f) => {
                hs.insert(store, io, kind.unwrap_or(Kind::Hash), to, &f, exts)?;
            }
            None => {
                store.put(to, exts)?;
            }
        }
    }
    if !keep {
        hs.drop_fields(store, from)?;
        store.delete(from)?;
        ttl.clear(store, from)?;
    }
    if let Some(at) = deadline {
        ttl.set(store, io, to, at)?;
    }
    Ok(())
}

/// A longest common subsequence of two strings, and its matching ranges from the end back.
struct Lcs {
    len: usize,
    common: Vec<u8>,
    ranges: Vec<LcsRange>,
}

/// A run of consecutive matches: inclusive positions in each string, and its length.
struct LcsRange {
    a: (usize, usize),
    b: (usize, usize),
    len: usize,
}

/// The classic dynamic-programming LCS (as Redis's `LCS`), walking back from the end and
/// reporting runs of adjacent matches in the order Redis reports them (last first).
fn lcs(a: &[u8], b: &[u8]) -> Lcs {
    let w = b.len() + 1;
    let mut t = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i * w + j] = if a[i - 1] == b[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let len = t[a.len() * w + b.len()] as usize;
    let mut common = vec![0u8; len];
    let mut ranges = Vec::new();
    let (mut i, mut j, mut k) = (a.len(), b.len(), len);
    // The run being built: (a start, a end, b start, b end).
    let mut run: Option<(usize, usize, usize, usize)> = None;
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            common[k - 1] = a[i - 1];
            run = Some(match run {
                Some((as_, ae, bs, be)) if as_ == i && bs == j => (i - 1, ae, j - 1, be),
                Some(r) => {
                    emit = true;
                    r
                }
                None => (i - 1, i - 1, j - 1, j - 1),
            });
            if run.is_some_and(|(as_, _, bs, _)| as_ == 0 || bs == 0) {
                emit = true;
            }
            k -= 1;
            i -= 1;
            j -= 1;
        } else {
            if t[(i - 1) * w + j] > t[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = run.is_some();
        }
        if emit {
            if let Some((as_, ae, bs, be)) = run.take() {
                ranges.push(LcsRange {
                    a: (as_, ae),
                    b: (bs, be),
                    len: ae - as_ + 1,
                });
            }
        }
    }
    Lcs {
        len,
        common,
        ranges,
    }
}

/// The index in [`COMMANDS`] of the command named by `r` (case-insensitive), without
/// allocating.
fn command_index(io: &dyn Io, r: &Range<u64>) -> Option<usize> {
    if r.end - r.start > 24 {
        return None;
    }
    let mut name = [0u8; 24];
    let mut n = 0;
    io.with_bytes(r.clone(), &mut |b| {
        for &c in b {
            name[n] = c.to_ascii_uppercase();
            n += 1;
        }
    });
    COMMANDS
        .binary_search_by(|c| c.as_bytes().cmp(&name[..n]))
        .ok()
}

/// A command's name, upper-cased: a known command's static name (no allocation on the hot
/// path), else the bytes as sent.
enum CmdName {
    Known(&'static str),
    Other(String),
}

impl std::ops::Deref for CmdName {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            CmdName::Known(s) => s,
            CmdName::Other(s) => s,
        }
    }
}

/// The name of the command at `r`, whose [`command_index`] the caller looked up already.
fn command_name(io: &dyn Io, r: &Range<u64>, idx: Option<usize>) -> CmdName {
    match idx {
        Some(i) => CmdName::Known(COMMANDS[i]),
        None => {
            let mut name = Vec::new();
            io.gather(r.clone(), &mut name);
            name.make_ascii_uppercase();
            CmdName::Other(String::from_utf8_lossy(&name).into_owned())
        }
    }
}

/// Redis's answer to a command on a key of the other type.
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// What the type check before a command found.
enum TypeCheck {
    Ok,
    /// The key holds the other type.
    Wrong,
}

/// Commands on a hash (key at argument 1).
const HASH_COMMANDS: [&str; 16] = [
    "HSET",
    "HMSET",
    "HSETNX",
    "HGET",
    "HMGET",
    "HDEL",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HKEYS",
    "HVALS",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HRANDFIELD",
    "HSCAN",
];

/// Commands that read or modify a string value in place (key at argument 1).
const STRING_COMMANDS: [&str; 16] = [
    "GET",
    "GETSET",
    "GETDEL",
    "GETEX",
    "STRLEN",
    "APPEND",
    "GETRANGE",
    "SUBSTR",
    "SETRANGE",
    "GETBIT",
    "SETBIT",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
];

/// Expire `key` if its deadline passed, with its hash fields if it is a hash.
fn expire(ttl: &mut Ttl, hs: &mut Hashes, store: &mut PoolStore, key: &[u8], now: i64) -> bool {
    let gone = ttl.reap(store, key, now);
    if gone {
        let _ = hs.drop_fields(store, key);
    }
    gone
}

/// The order `SCAN` walks keys in: a fixed hash of the stored key, never 0 (the cursor that
/// starts and ends a scan).
fn scan_hash(k: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same key hashes the same across calls and
    // restarts, which is what a cursor needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish().max(1)
}

/// A deadline from a relative or absolute time in seconds or milliseconds, as Redis computes
/// it (`None`: overflow, reported as an invalid expire time).
fn deadline(v: i64, ms: bool, absolute: bool, now: i64) -> Option<i64> {
    let v = if ms { v } else { v.checked_mul(1000)? };
    if absolute {
        Some(v)
    } else {
        v.checked_add(now)
    }
}

fn invalid_expire(out: &mut Vec<u8>, cmd: &str) {
    reply::error(
        out,
        &format!(
            "ERR invalid expire time in '{}' command",
            cmd.to_ascii_lowercase()
        ),
    );
}

impl KvService {
    /// `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH`, and queueing inside `MULTI`. `None`: not a
    /// transaction matter, execute the command now. The store's lock is held for the whole
    /// chunk, so an `EXEC` runs its commands with no other client's in between.
    #[allow(clippy::too_many_arguments)]
    fn transaction(
        &self,
        c: &mut KvConn,
        args: &[Range<u64>],
        idx: Option<usize>,
        io: &mut dyn Io,
        store: &mut PoolStore,
        ttl: &mut Ttl,
        hs: &mut Hashes,
        w: &mut Watches,
        out: &mut Out<'_>,
    ) -> Option<bool> {
        let name_buf = command_name(&*io, &args[0], idx);
        let name: &str = &name_buf;
        let n = args.len();
        if name == "RESET" && n == 1 {
            // Back to a fresh connection's state (no auth needed, as in Redis).
            c.tx = None;
            c.watched.clear();
            c.db = 0;
            c.name = None;
            c.authed = self.password.is_none();
            reply::simple(&mut out.buf, "RESET");
            return Some(true);
        }
        if !c.authed {
            return None; // NOAUTH from exec
        }
        let arity_ok = |name: &str| match arity(name) {
            Some(a) if a >= 0 => n == a as usize,
            Some(a) => n >= (-a) as usize,
            None => true,
        };
        let in_tx = c.tx.is_some();
        match name {
            "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH" if !arity_ok(name) => {
                arity_error(&mut out.buf, name);
                if let Some(tx) = c.tx.as_mut() {
                    tx.failed = true;
                }
            }
            "MULTI" if in_tx => reply::error(&mut out.buf, "ERR MULTI calls can not be nested"),
            "MULTI" => {
                c.tx = Some(Tx::default());
                reply::simple(&mut out.buf, "OK");
            }
            "EXEC" if !in_tx => reply::error(&mut out.buf, "ERR EXEC without MULTI"),
            "DISCARD" if !in_tx => reply::error(&mut out.buf, "ERR DISCARD without MULTI"),
            "DISCARD" => {
                c.tx = None;
                c.watched.clear();
                reply::simple(&mut out.buf, "OK");
            }
            "WATCH" if in_tx => {
                reply::error(&mut out.buf, "ERR WATCH inside MULTI is not allowed");
            }
            "WATCH" => {
                let now = now_ms();
                for r in &args[1..] {
                    let mut k = Vec::new();
                    io.gather(r.clone(), &mut k);
                    let k = db_key(c.db, k);
                    expire(ttl, hs, store, &k, now);
                    let existed = store.get(&k).is_some();
                    let version = w.watch(&k);
                    c.watched.push(Watched {
                        key: k,
                        version,
                        existed,
                    });
                }
                reply::simple(&mut out.buf, "OK");
            }
            "UNWATCH" if !in_tx => {
                c.watched.clear();
                reply::simple(&mut out.buf, "OK");
            }
            "EXEC" => {
                let tx = c.tx.take().expect("in a transaction");
                let watched = std::mem::take(&mut c.watched);
                if tx.failed {
                    reply::error(
                        &mut out.buf,
                        "EXECABORT Transaction discarded because of previous errors.",
                    );
                    return Some(true);
                }
                let now = now_ms();
                let touched = watched.iter().any(|x| {
                    expire(ttl, hs, store, &x.key, now);
                    w.version(&x.key) != x.version || store.get(&x.key).is_some() != x.existed
                });
                if touched {
                    out.null_array();
                    return Some(true);
                }
                reply::array(&mut out.buf, tx.queued.len());
                // One atomic group in the log: after a crash all of the transaction's writes
                // are there or none are.
                store.begin_group();
                let mut go = true;
                for cmd in &tx.queued {
                    let idx = command_index(&*io, &cmd[0]);
                    go &= self.exec(c, cmd, idx, io, store, ttl, hs, w, out);
                }
                store.end_group();
                return Some(go);
            }
            _ if in_tx && NO_MULTI.contains(&name) => {
                if let Some(tx) = c.tx.as_mut() {
                    tx.failed = true;
                }
                reply::error(&mut out.buf, "ERR Command not allowed inside a transaction");
            }
            _ if in_tx && name != "QUIT" => {
                let tx = c.tx.as_mut().expect("in a transaction");
                if arity(name).is_none() && !COMMANDS.contains(&name) {
                    tx.failed = true;
                    return None; // exec answers the unknown command, as Redis words it
                }
                if !arity_ok(name) {
                    tx.failed = true;
                    arity_error(&mut out.buf, name);
                } else {
                    let span = args.last().map_or(0, |l| l.end) - args[0].start;
                    if tx.queued.len() >= MAX_QUEUED || tx.bytes + span > self.limits.max_bulk {
                        // The queue's bytes stay pinned until EXEC: bounded like one value.
                        tx.failed = true;
                        tx.queued = Vec::new();
                        tx.bytes = 0;
                        reply::error(
                            &mut out.buf,
                            "ERR transaction too large (more than --max-value bytes or 100000 commands queued)",
                        );
                    } else {
                        tx.bytes += span;
                        tx.queued.push(args.to_vec());
                        reply::simple(&mut out.buf, "QUEUED");
                    }
                }
            }
            _ => return None,
        }
        Some(true)
    }

    /// The type rules before a command runs: a string command on a hash and a hash command on
    /// a string are `WRONGTYPE`; a command that overwrites a hash with a string drops its
    /// fields first (in the command's atomic group); pst refuses to rename, copy or move a
    /// hash.
    fn types(
        &self,
        name: &str,
        args: &[Range<u64>],
        io: &mut dyn Io,
        store: &mut PoolStore,
        hs: &mut Hashes,
        db: u8,
    ) -> TypeCheck {
        let n = args.len();
        let key = |io: &dyn Io, i: usize| {
            let mut v = Vec::new();
            io.gather(args[i].clone(), &mut v);
            db_key(db, v)
        };
        let word = |io: &dyn Io, i: usize| {
            let mut v = Vec::new();
            io.gather(args[i].clone(), &mut v);
            v.to_ascii_uppercase()
        };
        if n < 2 {
            return TypeCheck::Ok;
        }
        let k1 = key(&*io, 1);
        if HASH_COMMANDS.contains(&name) {
            // A hash command: the key must be a hash or absent.
            if store.get(&k1).is_some() && !hs.is_hash(&k1) {
                return TypeCheck::Wrong;
            }
            return TypeCheck::Ok;
        }
        if sets::SET_COMMANDS.contains(&name) {
            if store.get(&k1).is_some() && !hs.is_set(&k1) {
                return TypeCheck::Wrong;
            }
            return TypeCheck::Ok;
        }
        if STRING_COMMANDS.contains(&name) && hs.kind(&k1).is_some() {
            return TypeCheck::Wrong;
        }
        let overwritten: Vec<Vec<u8>> = match name {
            "SET" if (3..n).any(|i| word(&*io, i) == b"GET") && hs.kind(&k1).is_some() => {
                return TypeCheck::Wrong
            }
            "SET" if (3..n).any(|i| word(&*io, i) == b"NX") => Vec::new(),
            "SET" | "SETEX" | "PSETEX" => vec![k1],
            "MSET" => (1..n).step_by(2).map(|i| key(&*io, i)).collect(),
            _ => Vec::new(),
        };
        for k in overwritten {
            if let Err(e) = hs.drop_fields(store, &k) {
                tracing::warn!(error = %e, "could not drop the fields of an overwritten hash");
            }
        }
        TypeCheck::Ok
    }

    /// The `commandstats` section: one line per command called so far.
    fn command_stats(&self) -> String {
        let mut text = String::new();
        for (i, name) in COMMANDS.iter().enumerate() {
            let [calls, usec, failed, rejected] = &self.cmd_stats[i];
            let calls = calls.load(Ordering::Relaxed);
            let rejected = rejected.load(Ordering::Relaxed);
            if calls + rejected == 0 {
                continue;
            }
            let usec = usec.load(Ordering::Relaxed);
            let per = if calls > 0 {
                usec as f64 / calls as f64
            } else {
                0.0
            };
            text += &format!(
                "cmdstat_{}:calls={calls},usec={usec},usec_per_call={per:.2},rejected_calls={rejected},failed_calls={}\r\n",
                name.to_ascii_lowercase(),
                failed.load(Ordering::Relaxed)
            );
        }
        text
    }

    /// Count one command for `INFO commandstats`: its time, and whether its reply was an
    /// error (rejected: arity or authentication; failed: any other error).
    fn count_command(&self, idx: Option<usize>, took: std::time::Duration, reply: Option<&[u8]>) {
        let Some(stat) = idx.and_then(|i| self.cmd_stats.get(i)) else {
            return;
        };
        // Relaxed: statistics counters.
        match reply {
            Some(r) if r.starts_with(b"-ERR wrong number") || r.starts_with(b"-NOAUTH") => {
                stat[3].fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(r) if r.first() == Some(&b'-') => {
                stat[2].fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        stat[0].fetch_add(1, Ordering::Relaxed);
        stat[1].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Store `val` (computed here) under `key` in fresh pool buffers, keeping its deadline, and
    /// reply with `ok` — or with the out-of-space or store error.
    fn store_copy(
        &self,
        store: &mut PoolStore,
        io: &mut dyn Io,
        key: &[u8],
        val: &[u8],
        out: &mut Out<'_>,
        ok: impl FnOnce(&mut Vec<u8>),
    ) {
        let exts = if io.has_room(val.len() as u64) {
            io.copy_in(val)
        } else {
            None
        };
        match exts.map(|e| store.put(key, e)) {
            None => reply::error(&mut out.buf, OOM),
            Some(Ok(_)) => ok(&mut out.buf),
            Some(Err(pst_store::StoreError::LogFull)) => reply::error(&mut out.buf, OOM),
            Some(Err(e)) => reply::error(&mut out.buf, &format!("ERR {e}")),
        }
    }

    /// Execute one command (`idx`: its [`command_index`]); a command touching a hash writes
    /// its records as one atomic group (unless inside `EXEC`'s group already). Returns false
    /// for QUIT.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        c: &mut KvConn,
        args: &[Range<u64>],
        idx: Option<usize>,
        io: &mut dyn Io,
        store: &mut PoolStore,
        ttl: &mut Ttl,
        hs: &mut Hashes,
        w: &mut Watches,
        out: &mut Out<'_>,
    ) -> bool {
        // A command that may write several records is one atomic group, so that a crash never
        // leaves half of it: hash commands, any command while hashes or deadlines exist (it
        // may drop fields or a deadline too), and by name (first letter, cheap) SET/MSET/GETEX
        // with more than a key and a value, RENAME, MOVE, COPY, FLUSHDB. A plain `SET k v` or
        // `GET k` never pays for it.
        let grouped = !store.in_group()
            && (!hs.is_empty() || !ttl.is_empty() || {
                let mut first = 0u8;
                let r = args[0].start..(args[0].start + 1).min(args[0].end);
                io.with_bytes(r, &mut |b| first = b.first().copied().unwrap_or(0));
                match first.to_ascii_lowercase() {
                    b'h' | b'r' | b'c' | b'f' => true,
                    b's' | b'm' | b'g' | b'p' => args.len() > 3,
                    _ => false,
                }
            });
        if grouped {
            store.begin_group();
        }
        let name_buf = command_name(&*io, &args[0], idx);
        let name: &str = &name_buf;
        // FLUSHALL/FLUSHDB touch the watched keys they delete (not absent ones).
        let mut flushed = Vec::new();
        if !w.is_empty() && (name == "FLUSHALL" || name == "FLUSHDB") {
            flushed = w.existing(store, (name == "FLUSHDB").then_some(c.db));
        }
        let go = self.exec_one(c, name, args, io, store, ttl, hs, out);
        if grouped {
            store.end_group();
        }
        if !w.is_empty() && !READ_ONLY.contains(&name) {
            match name {
                "FLUSHALL" | "FLUSHDB" => {
                    for k in &flushed {
                        w.touch(k);
                    }
                }
                "SWAPDB" if args.len() == 3 => {
                    // Every watched key of both databases may have changed.
                    let db = |i: usize| {
                        let mut v = Vec::new();
                        io.gather(args[i].clone(), &mut v);
                        parse_int(&v)
                    };
                    if let (Some(a), Some(b)) = (db(1), db(2)) {
                        w.touch_dbs(&[a, b]);
                    }
                }
                _ => {
                    if let Some(KeyArgs::At(pos)) = key_positions(name, args.len()) {
                        for i in pos {
                            let mut k = Vec::new();
                            io.gather(args[i].clone(), &mut k);
                            w.touch(&db_key(c.db, k));
                        }
                    }
                }
            }
        }
        go
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_one(
        &self,
        c: &mut KvConn,
        name: &str,
        args: &[Range<u64>],
        io: &mut dyn Io,
        store: &mut PoolStore,
        ttl: &mut Ttl,
        hs: &mut Hashes,
        out: &mut Out<'_>,
    ) -> bool {
        let n = args.len();
        let arg = |io: &dyn Io, i: usize| {
            let mut v = Vec::new();
            io.gather(args[i].clone(), &mut v);
            v
        };
        let db = c.db;
        // Argument `i` as a key of the selected database.
        let key = |io: &dyn Io, i: usize| db_key(db, arg(io, i));
        if let Some(pw) = &self.password {
            if !c.authed && !matches!(name, "AUTH" | "PING" | "QUIT" | "HELLO") {
                reply::error(&mut out.buf, "NOAUTH Authentication required.");
                return true;
            }
            if name == "AUTH" {
                // `AUTH password`, or `AUTH default password` (the only user there is).
                let ok = match n {
                    2 => Some(arg(&*io, 1) == pw.as_bytes()),
                    3 => Some(arg(&*io, 1) == b"default" && arg(&*io, 2) == pw.as_bytes()),
                    _ => None,
                };
                match ok {
                    None => arity_error(&mut out.buf, name),
                    Some(true) => {
                        c.authed = true;
                        reply::simple(&mut out.buf, "OK");
                    }
                    Some(false) => reply::error(
                        &mut out.buf,
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    ),
                }
                return true;
            }
        }
        // Lazy expiry: the keys this command names, or every due key for commands that count
        // or list keys.
        let now = now_ms();
        match (!ttl.is_empty()).then(|| key_positions(name, n)).flatten() {
            None => {}
            Some(KeyArgs::All) => {
                for k in ttl.reap_due(store, now, usize::MAX) {
                    let _ = hs.drop_fields(store, &k);
                }
            }
            Some(KeyArgs::At(pos)) => {
                for i in pos {
                    expire(ttl, hs, store, &key(&*io, i), now);
                }
            }
        }
        // A set command (not the hot `SET`): checked by name once, here.
        let set_cmd = name.starts_with('S')
            && name != "SET"
            && (sets::SET_COMMANDS.contains(&name) || name.ends_with("STORE"));
        // Answers from the in-memory tables (hash fields, set members, deadlines) carry no
        // record of their own: they wait until everything written so far is durable, so no
        // reply shows a field or deadline a crash could take back (pipelined commit).
        if (!hs.is_empty() || !ttl.is_empty())
            && (set_cmd || name.starts_with('H') || DERIVED_READS.contains(&name))
        {
            store.depend_on_all();
        }
        if !hs.is_empty() || name.starts_with('H') || set_cmd {
            match self.types(name, args, io, store, hs, db) {
                TypeCheck::Wrong => {
                    store.depend_on_all();
                    reply::error(&mut out.buf, WRONGTYPE);
                    return true;
                }
                TypeCheck::Ok => {}
            }
        }
        let len = |r: &Range<u64>| r.end - r.start;
        if set_cmd {
            let writes = matches!(
                name,
                "SADD" | "SMOVE" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE"
            );
            let bytes = args[1..].iter().map(len).sum();
            if writes && (!io.has_room(bytes) || self.over_maxmemory(store, bytes)) {
                reply::error(&mut out.buf, OOM);
                return true;
            }
            if let Some(go) = sets::exec(name, db, args, io, store, ttl, hs, out) {
                return go;
            }
        }
        match name {
            "HELLO" => {
                // HELLO [protover [AUTH user pass] [SETNAME name]]
                let mut proto = if c.resp3 { 3 } else { 2 };
                let mut i = 1;
                if n > 1 {
                    match parse_int(&arg(&*io, 1)) {
                        Some(v @ (2 | 3)) => proto = v,
                        Some(_) => {
                            reply::error(&mut out.buf, "NOPROTO unsupported protocol version");
                            return true;
                        }
                        None => {
                            reply::error(&mut out.buf, "ERR Protocol version is not an integer or out of range");
                            return true;
                        }
                    }
                    i = 2;
                }
                let mut name = None;
                while i < n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"AUTH" if i + 2 < n => {
                            let ok = match &self.password {
                                Some(pw) => arg(&*io, i + 1) == b"default" && arg(&*io, i + 2) == pw.as_bytes(),
                                None => arg(&*io, i + 1) == b"default",
                            };
                            if !ok {
                                reply::error(&mut out.buf, "WRONGPASS invalid username-password pair or user is disabled.");
                                return true;
                            }
                            c.authed = true;
                            i += 3;
                        }
                        b"SETNAME" if i + 1 < n => {
                            name = Some(arg(&*io, i + 1));
                            i += 2;
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                }
                if !c.authed {
                    reply::error(&mut out.buf, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
                    return true;
                }
                if let Some(nm) = name {
                    c.name = (!nm.is_empty()).then_some(nm);
                }
                c.resp3 = proto == 3;
                out.resp3 = c.resp3;
                out.map(7);
                for (k, v) in [("server", "redis"), ("version", "7.0.0")] {
                    reply::bulk(&mut out.buf, k.as_bytes());
                    reply::bulk(&mut out.buf, v.as_bytes());
                }
                reply::bulk(&mut out.buf, b"proto");
                reply::int(&mut out.buf, proto);
                reply::bulk(&mut out.buf, b"id");
                reply::int(&mut out.buf, c.id as i64);
                for (k, v) in [("mode", "standalone"), ("role", "master")] {
                    reply::bulk(&mut out.buf, k.as_bytes());
                    reply::bulk(&mut out.buf, v.as_bytes());
                }
                reply::bulk(&mut out.buf, b"modules");
                reply::array(&mut out.buf, 0);
            }
            "PING" => match n {
                1 => reply::simple(&mut out.buf, "PONG"),
                2 => reply::bulk(&mut out.buf, &arg(&*io, 1)),
                _ => arity_error(&mut out.buf, name),
            },
            "ECHO" if n == 2 => reply::bulk(&mut out.buf, &arg(&*io, 1)),
            "QUIT" => {
                reply::simple(&mut out.buf, "OK");
                return false;
            }
            // Every acknowledged write is already durable (group commit before replies):
            // there is nothing more to save.
            "SAVE" if n == 1 => reply::simple(&mut out.buf, "OK"),
            "SHUTDOWN" => {
                let mut abort = false;
                for i in 1..n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"NOSAVE" | b"SAVE" | b"NOW" | b"FORCE" => {}
                        b"ABORT" => abort = true,
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                }
                match &self.shutdown {
                    _ if abort => reply::error(&mut out.buf, "ERR No shutdown in progress."),
                    Some(stop) => {
                        tracing::warn!(client = c.id, "SHUTDOWN: stopping the server");
                        stop.store(true, Ordering::Relaxed);
                        // As Redis: no reply, the connection closes.
                        return false;
                    }
                    None => reply::error(
                        &mut out.buf,
                        "ERR SHUTDOWN is not enabled on this server (no stop flag)",
                    ),
                }
            }
            // No password: the default user takes any password; other users do not exist.
            "AUTH" if n == 3 && arg(&*io, 1) == b"default" => reply::simple(&mut out.buf, "OK"),
            "AUTH" if n == 3 => reply::error(
                &mut out.buf,
                "WRONGPASS invalid username-password pair or user is disabled.",
            ),
            "AUTH" if n > 3 => reply::error(&mut out.buf, "ERR syntax error"),
            "AUTH" if n == 1 => arity_error(&mut out.buf, name),
            "AUTH" if n == 2 => reply::error(&mut out.buf, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            "SET" | "MSET" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "GETSET" | "SETNX" | "MSETNX"
            | "SETEX" | "PSETEX" | "SETRANGE" | "HSET" | "HMSET" | "HSETNX" | "HINCRBY"
            | "HINCRBYFLOAT"
                if !io.has_room(args[1..].iter().map(len).sum())
                    || self.over_maxmemory(store, args[1..].iter().map(len).sum()) =>
            {
                reply::error(&mut out.buf, OOM)
            }
            "SET" if n == 3 => {
                let key = hot_key(&*io, db, &args[1]);
                match io.extents(args[2].clone()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts).and_then(|_| ttl.clear(store, &key)) {
                        Ok(_) => reply::simple(&mut out.buf, "OK"),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "SET" if n > 3 => {
                // SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]
                let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
                let mut expire: Option<i64> = None;
                let mut i = 3;
                while i < n {
                    let opt = arg(&*io, i).to_ascii_uppercase();
                    match opt.as_slice() {
                        b"NX" if !xx => nx = true,
                        b"XX" if !nx => xx = true,
                        b"GET" => get = true,
                        b"KEEPTTL" if expire.is_none() => keepttl = true,
                        b"EX" | b"PX" | b"EXAT" | b"PXAT" if expire.is_none() && !keepttl && i + 1 < n => {
                            i += 1;
                            let Some(v) = parse_int(&arg(&*io, i)) else {
                                reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                                return true;
                            };
                            let ms = opt.starts_with(b"P");
                            let at = (v > 0)
                                .then(|| deadline(v, ms, opt.ends_with(b"AT"), now))
                                .flatten();
                            let Some(at) = at else {
                                invalid_expire(&mut out.buf, "set");
                                return true;
                            };
                            expire = Some(at);
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 1;
                }
                let key = key(&*io, 1);
                // The old value (for GET) is read before the write, replied after it: one
                // reply per command, whatever happens.
                let mut old = Vec::new();
                let exists = match store.read_value(&key, &mut old) {
                    Ok(e) => e,
                    Err(_) => {
                        reply::error(&mut out.buf, "ERR stored value is corrupt");
                        return true;
                    }
                };
                let old_reply = |out: &mut Out<'_>| match exists {
                    true => reply::bulk(&mut out.buf, &old),
                    false => out.null(),
                };
                if (nx && exists) || (xx && !exists) {
                    match get {
                        true => old_reply(out),
                        false => out.null(),
                    }
                    return true;
                }
                match io.extents(args[2].clone()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => {
                        let r = store.put(&key, exts).and_then(|_| match expire {
                            Some(at) => ttl.set(store, io, &key, at),
                            None if keepttl => Ok(()),
                            None => ttl.clear(store, &key).map(drop),
                        });
                        match r {
                            Ok(_) if get => old_reply(out),
                            Ok(_) => reply::simple(&mut out.buf, "OK"),
                            Err(e) => write_err(out, e),
                        }
                    }
                }
            }
            "GETSET" if n == 3 => {
                let key = key(&*io, 1);
                let mut old = Vec::new();
                let Ok(exists) = store.read_value(&key, &mut old) else {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                };
                match io.extents(args[2].clone()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts).and_then(|_| ttl.clear(store, &key)) {
                        Ok(_) if exists => reply::bulk(&mut out.buf, &old),
                        Ok(_) => out.null(),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "SETNX" if n == 3 => {
                let key = key(&*io, 1);
                if store.get(&key).is_some() {
                    reply::int(&mut out.buf, 0);
                } else {
                    match io.extents(args[2].clone()) {
                        None => reply::error(&mut out.buf, OOM),
                        Some(exts) => match store.put(&key, exts) {
                            Ok(_) => reply::int(&mut out.buf, 1),
                            Err(e) => write_err(out, e),
                        },
                    }
                }
            }
            "MSETNX" if n >= 3 && !n.is_multiple_of(2) => {
                if (1..n).step_by(2).any(|i| store.get(&key(&*io, i)).is_some()) {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                for i in (1..n).step_by(2) {
                    let r = match io.extents(args[i + 1].clone()) {
                        None => Err(pst_store::StoreError::LogFull),
                        Some(exts) => store.put(&key(&*io, i), exts),
                    };
                    if let Err(e) = r {
                        write_err(out, e);
                        return true;
                    }
                }
                reply::int(&mut out.buf, 1);
            }
            "GETDEL" if n == 2 => {
                let key = key(&*io, 1);
                let mut val = Vec::new();
                match store.read_value(&key, &mut val) {
                    Ok(false) => out.null(),
                    Ok(true) => match store.delete(&key).and_then(|_| ttl.clear(store, &key)) {
                        Ok(_) => reply::bulk(&mut out.buf, &val),
                        Err(e) => write_err(out, e),
                    },
                    Err(_) => reply::error(&mut out.buf, "ERR stored value is corrupt"),
                }
            }
            "SCAN" if n >= 2 => {
                // SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]. The cursor is a position in
                // the order of a fixed 64-bit hash of the stored key: a key present for the
                // whole scan is returned (its hash never changes), at least once.
                let Some(cursor) = std::str::from_utf8(&arg(&*io, 1)).ok().and_then(|c| c.parse::<u64>().ok()) else {
                    reply::error(&mut out.buf, "ERR invalid cursor");
                    return true;
                };
                let (mut pat, mut count, mut want_type) = (None, 10usize, None::<Vec<u8>>);
                let mut i = 2;
                while i < n {
                    let opt = arg(&*io, i).to_ascii_uppercase();
                    if i + 1 >= n {
                        reply::error(&mut out.buf, "ERR syntax error");
                        return true;
                    }
                    match opt.as_slice() {
                        b"MATCH" => pat = Some(arg(&*io, i + 1)),
                        b"COUNT" => match parse_int(&arg(&*io, i + 1)) {
                            Some(c) if c >= 1 => count = c as usize,
                            Some(_) => {
                                reply::error(&mut out.buf, "ERR syntax error");
                                return true;
                            }
                            None => {
                                reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                                return true;
                            }
                        },
                        b"TYPE" => want_type = Some(arg(&*io, i + 1).to_ascii_lowercase()),
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 2;
                }
                let mut found: Vec<(u64, &[u8])> = store
                    .keys()
                    .filter(|k| key_db(k) == db)
                    .map(|k| (scan_hash(k), k))
                    .filter(|(h, _)| *h >= cursor)
                    .collect();
                found.sort_unstable();
                // Take `count` keys, never splitting keys of equal hash between two calls.
                let mut end = found.len().min(count);
                while end < found.len() && found[end].0 == found[end - 1].0 {
                    end += 1;
                }
                let next = found.get(end).map_or(0, |f| f.0);
                let keys: Vec<&[u8]> = found[..end]
                    .iter()
                    .filter(|(_, k)| {
                        let t = hs.kind(k).map_or("string", Kind::name).as_bytes();
                        want_type.as_deref().is_none_or(|w| w == t)
                    })
                    .map(|(_, k)| user_key(k))
                    .filter(|k| pat.as_ref().is_none_or(|p| glob_case(p, k)))
                    .collect();
                reply::array(&mut out.buf, 2);
                reply::bulk(&mut out.buf, next.to_string().as_bytes());
                reply::array(&mut out.buf, keys.len());
                for k in keys {
                    reply::bulk(&mut out.buf, k);
                }
            }
            "MEMORY" if n >= 2 => match arg(&*io, 1).to_ascii_uppercase().as_slice() {
                b"USAGE" if n == 3 || (n == 5 && arg(&*io, 3).eq_ignore_ascii_case(b"SAMPLES")) => {
                    // Bytes the key costs in the store: its records' payloads and keys, plus
                    // a record header each (pool-buffer rounding not counted).
                    let k = key(&*io, 2);
                    match store.get(&k) {
                        None => out.null(),
                        Some(v) => {
                            let mut total = v.len as usize + k.len() + 48;
                            for f in hs.fields(&k) {
                                let fk = field_key(&k, f);
                                total += store.get(&fk).map_or(0, |r| r.len as usize) + fk.len() + 48;
                            }
                            reply::int(&mut out.buf, total as i64);
                        }
                    }
                }
                _ => error_line(&mut out.buf, &format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try MEMORY HELP.", cap(&arg(&*io, 1), 128))),
            },
            "TIME" if n == 1 => {
                let d = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                reply::array(&mut out.buf, 2);
                reply::bulk(&mut out.buf, d.as_secs().to_string().as_bytes());
                reply::bulk(&mut out.buf, d.subsec_micros().to_string().as_bytes());
            }
            "TOUCH" if n >= 2 => {
                let count = (1..n).filter(|&i| store.get(&key(&*io, i)).is_some()).count();
                reply::int(&mut out.buf, count as i64);
            }
            "OBJECT" if n >= 2 => {
                let sub = arg(&*io, 1).to_ascii_uppercase();
                let val = (n == 3).then(|| store.get(&key(&*io, 2)).map(|v| v.len)).flatten();
                match (sub.as_slice(), n) {
                    (b"HELP", 2) => {
                        let lines = ["OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", "ENCODING <key>", "FREQ <key>", "IDLETIME <key>", "REFCOUNT <key>", "HELP"];
                        reply::array(&mut out.buf, lines.len());
                        for l in lines {
                            reply::simple(&mut out.buf, l);
                        }
                    }
                    (_, 3) if val.is_none() => out.null(),
                    (b"ENCODING", 3) => {
                        let mut v = Vec::new();
                        let _ = store.read_value(&key(&*io, 2), &mut v);
                        let k = key(&*io, 2);
                        let enc = if hs.is_set(&k) {
                            let ints = hs.fields(&k).all(|m| parse_int(m).is_some());
                            if ints && hs.len(&k) <= 512 { "intset" } else { "hashtable" }
                        } else if hs.is_hash(&k) {
                            if hs.len(&k) <= 128 { "listpack" } else { "hashtable" }
                        } else if parse_int(&v).is_some() {
                            "int"
                        } else if v.len() <= 44 {
                            "embstr"
                        } else {
                            "raw"
                        };
                        reply::bulk(&mut out.buf, enc.as_bytes());
                    }
                    (b"REFCOUNT", 3) => reply::int(&mut out.buf, 1),
                    (b"IDLETIME" | b"FREQ", 3) => reply::int(&mut out.buf, 0),
                    _ => error_line(&mut out.buf, &format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.", cap(&arg(&*io, 1), 128))),
                }
            }
            "KEYS" if n == 2 => {
                let pat = arg(&*io, 1);
                let keys: Vec<&[u8]> = store
                    .keys()
                    .filter(|k| key_db(k) == db)
                    .map(user_key)
                    .filter(|k| glob_case(&pat, k))
                    .collect();
                reply::array(&mut out.buf, keys.len());
                for k in keys {
                    reply::bulk(&mut out.buf, k);
                }
            }
            "RANDOMKEY" if n == 1 => {
                let keys: Vec<&[u8]> = store.keys().filter(|k| key_db(k) == db).collect();
                if keys.is_empty() {
                    out.null();
                } else {
                    let pick = random_index(keys.len());
                    reply::bulk(&mut out.buf, user_key(keys[pick]));
                }
            }
            "STRLEN" if n == 2 => {
                let len = store.get(&key(&*io, 1)).map_or(0, |v| v.len);
                reply::int(&mut out.buf, len as i64);
            }
            "APPEND" if n == 3 => {
                let key = key(&*io, 1);
                let mut val = Vec::new();
                if store.read_value(&key, &mut val).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                io.with_bytes(args[2].clone(), &mut |b| val.extend_from_slice(b));
                if !io.has_room(val.len() as u64) {
                    reply::error(&mut out.buf, OOM);
                    return true;
                }
                match io.copy_in(&val) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts) {
                        Ok(_) => reply::int(&mut out.buf, val.len() as i64),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "GETRANGE" | "SUBSTR" if n == 4 => {
                let (Some(start), Some(end)) = (parse_int(&arg(&*io, 2)), parse_int(&arg(&*io, 3))) else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                let mut val = Vec::new();
                if store.read_value(&key(&*io, 1), &mut val).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                reply::bulk(&mut out.buf, redis_range(&val, start, end));
            }
            "GET" if n == 2 => bulk_value(store, &hot_key(&*io, db, &args[1]), io, out),
            "MGET" if n >= 2 => {
                reply::array(&mut out.buf, n - 1);
                for i in 1..n {
                    let k = key(&*io, i);
                    if hs.kind(&k).is_some() {
                        out.null();
                    } else {
                        bulk_value(store, &k, io, out);
                    }
                }
            }
            "MSET" if n >= 3 && n % 2 == 1 => {
                let mut err = None;
                for i in (1..n).step_by(2) {
                    let key = key(&*io, i);
                    let r = match io.extents(args[i + 1].clone()) {
                        None => Err(pst_store::StoreError::LogFull),
                        Some(exts) => store.put(&key, exts).and_then(|_| ttl.clear(store, &key)),
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
                    let k = key(&*io, i);
                    let r = hs
                        .drop_fields(store, &k)
                        .and_then(|_| store.delete(&k))
                        .and_then(|d| ttl.clear(store, &k).map(|_| d));
                    match r {
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
                let count = (1..n).filter(|&i| store.get(&key(&*io, i)).is_some()).count();
                reply::int(&mut out.buf, count as i64);
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by: Option<i64> = match (name, n) {
                    ("INCR", 2) => Some(1),
                    ("DECR", 2) => Some(-1),
                    ("INCRBY", 3) | ("DECRBY", 3) => {
                        let v = parse_int(&arg(&*io, 2));
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
                        arity_error(&mut out.buf, name);
                        None
                    }
                };
                let Some(by) = by else { return true };
                let key = key(&*io, 1);
                let mut cur = Vec::new();
                let old = match store.read_value(&key, &mut cur) {
                    Ok(true) => parse_int(&cur),
                    Ok(false) => Some(0),
                    Err(_) => None,
                };
                let Some(old) = old else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                let Some(new) = old.checked_add(by) else {
                    reply::error(&mut out.buf, "ERR increment or decrement would overflow");
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
            "DBSIZE" if n == 1 => {
                let count = store.keys().filter(|k| key_db(k) == db).count();
                reply::int(&mut out.buf, count as i64)
            }
            "FLUSHALL" | "FLUSHDB" if n > 2 || (n == 2 && !matches!(arg(&*io, 1).to_ascii_uppercase().as_slice(), b"ASYNC" | b"SYNC")) => {
                reply::error(&mut out.buf, "ERR syntax error")
            }
            "FLUSHALL" => match store.clear() {
                Ok(_) => {
                    ttl.clear_all();
                    hs.clear_all();
                    reply::simple(&mut out.buf, "OK")
                }
                Err(e) => write_err(out, e),
            },
            "FLUSHDB" => {
                let keys: Vec<Vec<u8>> =
                    store.keys().filter(|k| key_db(k) == db).map(<[u8]>::to_vec).collect();
                for k in keys {
                    let r = hs
                        .drop_fields(store, &k)
                        .and_then(|_| store.delete(&k))
                        .and_then(|_| ttl.clear(store, &k));
                    if let Err(e) = r {
                        write_err(out, e);
                        return true;
                    }
                }
                reply::simple(&mut out.buf, "OK")
            }
            "SELECT" if n == 2 => match parse_int(&arg(&*io, 1)) {
                Some(i) if (0..DATABASES as i64).contains(&i) => {
                    c.db = i as u8;
                    reply::simple(&mut out.buf, "OK")
                }
                Some(_) => reply::error(&mut out.buf, "ERR DB index is out of range"),
                None => reply::error(&mut out.buf, "ERR value is not an integer or out of range"),
            },
            "INFO" => {
                let st = store.stats();
                let mut per_db = [0u64; DATABASES as usize];
                for k in store.keys() {
                    if let Some(c) = per_db.get_mut(key_db(k) as usize) {
                        *c += 1;
                    }
                }
                let mut keyspace = String::new();
                for (i, &count) in per_db.iter().enumerate().filter(|(_, &c)| c > 0) {
                    let expires = ttl.count(|k| key_db(k) == i as u8);
                    keyspace += &format!("db{i}:keys={count},expires={expires},avg_ttl=0\r\n");
                }
                let durable = self.persist != pst::PersistMode::None;
                let (user, sys) = process_cpu();
                let m = self.metrics.totals();
                let sections = [
                    ("server", format!("redis_version:7.0.0\r\npst_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\n", env!("CARGO_PKG_VERSION"), std::process::id(), self.metrics.uptime() as u64)),
                    ("memory", format!("used_memory:{}\r\nused_memory_rss:{}\r\nmaxmemory:{}\r\npst_buffers_held:{}\r\n", used_memory(store), process_rss(), self.maxmemory.load(Ordering::Relaxed), st.buffers_held)),
                    ("persistence", format!("aof_enabled:{}\r\npst_persist:{}\r\npst_log_records:{}\r\npst_log_segments_free:{}/{}\r\npst_log_capacity_bytes:{}\r\npst_log_dead_bytes:{}\r\npst_log_borrowed_segments:{}\r\npst_commits:{}\r\npst_compactions:{}\r\n", durable as u8, self.persist, st.records, st.free_segments, st.segments, st.log_capacity, st.dead_log_bytes, st.borrowed_segments, st.commits, st.compactions)),
                    ("clients", format!("connected_clients:{}\r\n", m.conns)),
                    ("stats", format!(
                        "total_commands_processed:{}\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\npst_syscalls:{}\r\npst_syscalls_per_request:{:.3}\r\npst_pool_capacity_buffers:{}\r\npst_pool_free_buffers:{}\r\npst_recv_ring_empty:{}\r\npst_commit_latency_avg_us:{:.1}\r\n",
                        m.requests, m.bytes_in, m.bytes_out, m.syscalls,
                        if m.requests > 0 { m.syscalls as f64 / m.requests as f64 } else { 0.0 },
                        m.capacity_bufs, m.free_bufs, m.ring_empty,
                        if m.commits > 0 { m.commit_ns as f64 / m.commits as f64 / 1e3 } else { 0.0 })),
                    ("replication", "role:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n".to_owned()),
                    ("cpu", format!("used_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n")),
                    ("keyspace", keyspace),
                    ("commandstats", self.command_stats()),
                ];
                let wanted: Vec<Vec<u8>> = (1..n).map(|i| arg(&*io, i).to_ascii_lowercase()).collect();
                let all = wanted.is_empty()
                    || wanted.iter().any(|w| matches!(w.as_slice(), b"all" | b"everything" | b"default"));
                let everything = wanted.iter().any(|w| matches!(w.as_slice(), b"all" | b"everything"));
                let mut text = String::new();
                for (name, body) in sections {
                    // Command statistics are not part of the default sections (as in Redis).
                    let listed = if name == "commandstats" { everything } else { all };
                    if listed || wanted.iter().any(|w| w.as_slice() == name.as_bytes()) {
                        if !text.is_empty() {
                            text += "\r\n";
                        }
                        let mut title = name.to_owned();
                        title[..1].make_ascii_uppercase();
                        if name == "cpu" {
                            title = "CPU".to_owned();
                        } else if name == "commandstats" {
                            title = "Commandstats".to_owned();
                        }
                        text += &format!("# {title}\r\n{body}");
                    }
                }
                reply::bulk(&mut out.buf, text.as_bytes());
            }
            // There are no functions; flushing them is truthfully a no-op.
            "FUNCTION" if n >= 2 => {
                let sub = arg(&*io, 1).to_ascii_uppercase();
                match sub.as_slice() {
                    b"FLUSH" if n <= 3 => reply::simple(&mut out.buf, "OK"),
                    b"LIST" => reply::array(&mut out.buf, 0),
                    _ => error_line(
                        &mut out.buf,
                        &format!("ERR unknown subcommand '{}'. Try FUNCTION HELP.", cap(&sub, 128)),
                    ),
                }
            }
            // redis-cli asks for COMMAND DOCS at start: an empty answer is accepted.
            "COMMAND" if n == 1 => reply::array(&mut out.buf, 0),
            "COMMAND" => {
                let sub = arg(&*io, 1).to_ascii_uppercase();
                match sub.as_slice() {
                    b"DOCS" => reply::array(&mut out.buf, 0),
                    b"COUNT" => reply::int(&mut out.buf, COMMANDS.len() as i64),
                    _ => error_line(
                        &mut out.buf,
                        &format!("ERR unknown subcommand '{}'. Try COMMAND HELP.", cap(&sub, 128)),
                    ),
                }
            }
            "CONFIG" if n >= 3 && arg(&*io, 1).eq_ignore_ascii_case(b"GET") => {
                let all = self.config();
                let mut hits: Vec<&(String, Vec<u8>)> = Vec::new();
                for i in 2..n {
                    let pat = arg(&*io, i);
                    for p in &all {
                        if glob(&pat, p.0.as_bytes()) && !hits.iter().any(|h| h.0 == p.0) {
                            hits.push(p);
                        }
                    }
                }
                out.map(hits.len());
                for (name, value) in hits {
                    reply::bulk(&mut out.buf, name.as_bytes());
                    reply::bulk(&mut out.buf, value);
                }
            }
            "CONFIG" if n >= 4 && n.is_multiple_of(2) && arg(&*io, 1).eq_ignore_ascii_case(b"SET") => {
                let mut set = Vec::new();
                let mut set_max = None;
                for i in (2..n).step_by(2) {
                    let name = String::from_utf8_lossy(&arg(&*io, i)).to_ascii_lowercase();
                    let value = arg(&*io, i + 1);
                    if name == "maxmemory" {
                        match parse_memory(&value) {
                            Some(v) => {
                                set_max = Some(v);
                                continue;
                            }
                            None => {
                                error_line(
                                    &mut out.buf,
                                    "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value",
                                );
                                return true;
                            }
                        }
                    }
                    if harmless_knob(&name) && (value.len() > 64 || !value.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')) {
                        error_line(
                            &mut out.buf,
                            &format!("ERR Invalid argument '{}' for CONFIG SET '{}'", cap(&value, 64), cap(name.as_bytes(), 64)),
                        );
                        return true;
                    }
                    if !harmless_knob(&name) {
                        error_line(
                            &mut out.buf,
                            &format!("ERR Unknown option or number of arguments for CONFIG SET - '{}'", cap(name.as_bytes(), 128)),
                        );
                        return true;
                    }
                    set.push((name, arg(&*io, i + 1)));
                }
                if let Some(v) = set_max {
                    self.maxmemory.store(v, Ordering::Relaxed);
                }
                let mut tuning = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
                for (name, value) in set {
                    tuning.retain(|t| t.0 != name);
                    tuning.push((name, value));
                }
                reply::simple(&mut out.buf, "OK")
            }
            "CONFIG" if n == 2 && arg(&*io, 1).eq_ignore_ascii_case(b"RESETSTAT") => {
                reply::simple(&mut out.buf, "OK")
            }
            "CONFIG" => {
                let sub = if n > 1 { arg(&*io, 1) } else { Vec::new() };
                error_line(
                    &mut out.buf,
                    &format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try CONFIG HELP.", cap(&sub, 128)),
                )
            }
            "CLIENT" if n >= 2 => {
                let sub = arg(&*io, 1).to_ascii_uppercase();
                match (sub.as_slice(), n) {
                    (b"ID", 2) => reply::int(&mut out.buf, c.id as i64),
                    (b"GETNAME", 2) => match &c.name {
                        Some(name) => reply::bulk(&mut out.buf, name),
                        None => out.null(),
                    },
                    (b"SETNAME", 3) => {
                        let name = arg(&*io, 2);
                        if name.iter().any(|&b| b <= b' ' || b > b'~') {
                            reply::error(&mut out.buf, "ERR Client names cannot contain spaces, newlines or special characters.");
                        } else {
                            c.name = (!name.is_empty()).then_some(name);
                            reply::simple(&mut out.buf, "OK");
                        }
                    }
                    (b"INFO", 2) => {
                        let line = format!(
                            "id={} name={} db={}\n",
                            c.id,
                            String::from_utf8_lossy(c.name.as_deref().unwrap_or_default()),
                            c.db
                        );
                        reply::bulk(&mut out.buf, line.as_bytes());
                    }
                    _ => error_line(
                        &mut out.buf,
                        &format!("ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.", cap(&sub, 128)),
                    ),
                }
            }
            "HSET" | "HMSET" if n >= 4 && n.is_multiple_of(2) => {
                let key = key(&*io, 1);
                let mut added = 0;
                for i in (2..n).step_by(2) {
                    let field = arg(&*io, i);
                    let r = match io.extents(args[i + 1].clone()) {
                        None => Err(pst_store::StoreError::LogFull),
                        Some(exts) => hs.set(store, io, &key, &field, exts),
                    };
                    match r {
                        Ok(new) => added += new as i64,
                        Err(e) => {
                            write_err(out, e);
                            return true;
                        }
                    }
                }
                match name {
                    "HSET" => reply::int(&mut out.buf, added),
                    _ => reply::simple(&mut out.buf, "OK"),
                }
            }
            "HSETNX" if n == 4 => {
                let (key, field) = (key(&*io, 1), arg(&*io, 2));
                if store.get(&field_key(&key, &field)).is_some() {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                let r = match io.extents(args[3].clone()) {
                    None => Err(pst_store::StoreError::LogFull),
                    Some(exts) => hs.set(store, io, &key, &field, exts),
                };
                match r {
                    Ok(_) => reply::int(&mut out.buf, 1),
                    Err(e) => write_err(out, e),
                }
            }
            "HGET" if n == 3 => {
                let fk = field_key(&key(&*io, 1), &arg(&*io, 2));
                bulk_value(store, &fk, io, out);
            }
            "HMGET" if n >= 3 => {
                let key = key(&*io, 1);
                reply::array(&mut out.buf, n - 2);
                for i in 2..n {
                    bulk_value(store, &field_key(&key, &arg(&*io, i)), io, out);
                }
            }
            "HDEL" if n >= 3 => {
                let key = key(&*io, 1);
                let fields: Vec<Vec<u8>> = (2..n).map(|i| arg(&*io, i)).collect();
                match sets::remove_fields(store, ttl, hs, &key, &fields) {
                    Ok(count) => reply::int(&mut out.buf, count),
                    Err(e) => write_err(out, e),
                }
            }
            "HLEN" if n == 2 => reply::int(&mut out.buf, hs.len(&key(&*io, 1)) as i64),
            "HEXISTS" if n == 3 => {
                let fk = field_key(&key(&*io, 1), &arg(&*io, 2));
                reply::int(&mut out.buf, store.get(&fk).is_some() as i64);
            }
            "HSTRLEN" if n == 3 => {
                let fk = field_key(&key(&*io, 1), &arg(&*io, 2));
                reply::int(&mut out.buf, store.get(&fk).map_or(0, |v| v.len) as i64);
            }
            "HKEYS" | "HVALS" | "HGETALL" if n == 2 => {
                let key = key(&*io, 1);
                let fields: Vec<Vec<u8>> = hs.fields(&key).map(<[u8]>::to_vec).collect();
                if name == "HGETALL" {
                    out.map(fields.len());
                } else {
                    reply::array(&mut out.buf, fields.len());
                }
                for f in fields {
                    if name != "HVALS" {
                        reply::bulk(&mut out.buf, &f);
                    }
                    if name != "HKEYS" {
                        bulk_value(store, &field_key(&key, &f), io, out);
                    }
                }
            }
            "HINCRBY" | "HINCRBYFLOAT" if n == 4 => {
                let (key, field) = (key(&*io, 1), arg(&*io, 2));
                let fk = field_key(&key, &field);
                let mut cur = Vec::new();
                let exists = match store.read_value(&fk, &mut cur) {
                    Ok(e) => e,
                    Err(_) => {
                        reply::error(&mut out.buf, "ERR stored value is corrupt");
                        return true;
                    }
                };
                let text = if name == "HINCRBY" {
                    let Some(by) = parse_int(&arg(&*io, 3)) else {
                        reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                        return true;
                    };
                    let Some(old) = (if exists { parse_int(&cur) } else { Some(0) }) else {
                        reply::error(&mut out.buf, "ERR hash value is not an integer");
                        return true;
                    };
                    let Some(new) = old.checked_add(by) else {
                        reply::error(&mut out.buf, "ERR increment or decrement would overflow");
                        return true;
                    };
                    new.to_string()
                } else {
                    let Some(by) = parse_float(&arg(&*io, 3)) else {
                        reply::error(&mut out.buf, "ERR value is not a valid float");
                        return true;
                    };
                    if !by.is_finite() {
                        reply::error(&mut out.buf, "ERR value is NaN or Infinity");
                        return true;
                    }
                    let Some(old) = (if exists { parse_float(&cur) } else { Some(0.0) }) else {
                        reply::error(&mut out.buf, "ERR hash value is not a float");
                        return true;
                    };
                    let new = old + by;
                    if !new.is_finite() {
                        reply::error(&mut out.buf, "ERR increment would produce NaN or Infinity");
                        return true;
                    }
                    format_float(new, old.abs().max(by.abs()))
                };
                let exts = if io.has_room(text.len() as u64) { io.copy_in(text.as_bytes()) } else { None };
                let Some(exts) = exts else {
                    reply::error(&mut out.buf, OOM);
                    return true;
                };
                match hs.set(store, io, &key, &field, exts) {
                    Ok(_) if name == "HINCRBY" => reply::int(&mut out.buf, text.parse().unwrap_or(0)),
                    Ok(_) => reply::bulk(&mut out.buf, text.as_bytes()),
                    Err(e) => write_err(out, e),
                }
            }
            "HRANDFIELD" if (2..=4).contains(&n) => {
                let key = key(&*io, 1);
                let fields: Vec<Vec<u8>> = hs.fields(&key).map(<[u8]>::to_vec).collect();
                if n == 2 {
                    match fields.len() {
                        0 => out.null(),
                        len => reply::bulk(&mut out.buf, &fields[random_index(len)]),
                    }
                    return true;
                }
                let Some(count) = parse_int(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                let with_values = n == 4;
                if with_values && !arg(&*io, 3).eq_ignore_ascii_case(b"WITHVALUES") {
                    reply::error(&mut out.buf, "ERR syntax error");
                    return true;
                }
                if count == i64::MIN || (count.unsigned_abs() > (i64::MAX / 2) as u64 && with_values) {
                    reply::error(&mut out.buf, "ERR value is out of range");
                    return true;
                }
                // Positive: distinct fields, at most all; negative: that many, repeats allowed.
                let picks: Vec<&Vec<u8>> = if fields.is_empty() {
                    Vec::new()
                } else if count >= 0 {
                    let mut idx: Vec<usize> = (0..fields.len()).collect();
                    for i in (1..idx.len()).rev() {
                        idx.swap(i, random_index(i + 1));
                    }
                    idx.into_iter().take(count as usize).map(|i| &fields[i]).collect()
                } else {
                    (0..count.unsigned_abs().min(1 << 20)).map(|_| &fields[random_index(fields.len())]).collect()
                };
                // RESP3 nests each field with its value (Redis's reply schema); RESP2 is flat.
                let nested = with_values && out.resp3;
                let flat = if with_values && !nested { 2 } else { 1 };
                reply::array(&mut out.buf, picks.len() * flat);
                for f in picks {
                    if nested {
                        reply::array(&mut out.buf, 2);
                    }
                    reply::bulk(&mut out.buf, f);
                    if with_values {
                        bulk_value(store, &field_key(&key, f), io, out);
                    }
                }
            }
            "HSCAN" | "SSCAN" if n >= 3 => {
                // One page: the whole hash or set, cursor 0 (a valid SCAN answer for any COUNT).
                let key = key(&*io, 1);
                let mut pat = None;
                let mut i = 3;
                while i < n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"MATCH" if i + 1 < n => pat = Some(arg(&*io, i + 1)),
                        b"COUNT" if i + 1 < n => {
                            if !matches!(parse_int(&arg(&*io, i + 1)), Some(c) if c >= 1) {
                                reply::error(&mut out.buf, "ERR syntax error");
                                return true;
                            }
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 2;
                }
                let fields: Vec<Vec<u8>> = hs
                    .fields(&key)
                    .filter(|f| pat.as_ref().is_none_or(|p| glob_case(p, f)))
                    .map(<[u8]>::to_vec)
                    .collect();
                reply::array(&mut out.buf, 2);
                reply::bulk(&mut out.buf, b"0");
                let values = name == "HSCAN";
                reply::array(&mut out.buf, fields.len() * if values { 2 } else { 1 });
                for f in fields {
                    reply::bulk(&mut out.buf, &f);
                    if values {
                        bulk_value(store, &field_key(&key, &f), io, out);
                    }
                }
            }
            "LCS" if n >= 3 => {
                let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0i64);
                let mut i = 3;
                while i < n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"IDX" => idx = true,
                        b"LEN" => len_only = true,
                        b"WITHMATCHLEN" => with_len = true,
                        b"MINMATCHLEN" if i + 1 < n => {
                            i += 1;
                            let Some(v) = parse_int(&arg(&*io, i)) else {
                                reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                                return true;
                            };
                            min_len = v.max(0);
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 1;
                }
                let (ka, kb) = (key(&*io, 1), key(&*io, 2));
                if hs.kind(&ka).is_some() || hs.kind(&kb).is_some() {
                    reply::error(&mut out.buf, "ERR The specified keys must contain string values");
                    return true;
                }
                if len_only && idx {
                    reply::error(&mut out.buf, "ERR If you want both the length and indexes, please just use IDX.");
                    return true;
                }
                let (mut a, mut b) = (Vec::new(), Vec::new());
                if store.read_value(&ka, &mut a).is_err() || store.read_value(&kb, &mut b).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                // The table is (|a|+1)·(|b|+1) u32s: bounded like a value.
                if ((a.len() as u64 + 1) * (b.len() as u64 + 1)).saturating_mul(4) > self.limits.max_bulk.max(64 << 20) {
                    reply::error(&mut out.buf, "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
                    return true;
                }
                let m = lcs(&a, &b);
                if len_only {
                    reply::int(&mut out.buf, m.len as i64);
                } else if !idx {
                    reply::bulk(&mut out.buf, &m.common);
                } else {
                    let ranges: Vec<_> = m
                        .ranges
                        .iter()
                        .filter(|r| min_len == 0 || r.len as i64 >= min_len)
                        .collect();
                    reply::array(&mut out.buf, 4);
                    reply::bulk(&mut out.buf, b"matches");
                    reply::array(&mut out.buf, ranges.len());
                    for r in ranges {
                        reply::array(&mut out.buf, 2 + with_len as usize);
                        for (s, e) in [r.a, r.b] {
                            reply::array(&mut out.buf, 2);
                            reply::int(&mut out.buf, s as i64);
                            reply::int(&mut out.buf, e as i64);
                        }
                        if with_len {
                            reply::int(&mut out.buf, r.len as i64);
                        }
                    }
                    reply::bulk(&mut out.buf, b"len");
                    reply::int(&mut out.buf, m.len as i64);
                }
            }
            "SWAPDB" if n == 3 => {
                let (Some(a), Some(b)) = (parse_int(&arg(&*io, 1)), parse_int(&arg(&*io, 2))) else {
                    reply::error(&mut out.buf, "ERR invalid first DB index");
                    return true;
                };
                if !(0..DATABASES as i64).contains(&a) || !(0..DATABASES as i64).contains(&b) {
                    reply::error(&mut out.buf, "ERR DB index is out of range");
                    return true;
                }
                let (a, b) = (a as u8, b as u8);
                if a != b {
                    // a → a scratch database no client can select, b → a, scratch → b: every
                    // key with its deadline and hash fields, in one atomic group.
                    const SCRATCH: u8 = u8::MAX;
                    let mut r = Ok(());
                    for (from, to) in [(a, SCRATCH), (b, a), (SCRATCH, b)] {
                        let keys: Vec<Vec<u8>> = store
                            .keys()
                            .filter(|k| (from == SCRATCH && k.starts_with(&db_key(SCRATCH, Vec::new()))) || (from != SCRATCH && key_db(k) == from))
                            .map(<[u8]>::to_vec)
                            .collect();
                        for k in keys {
                            let dst = db_key(to, user_key_any(&k).to_vec());
                            r = r.and_then(|_| relocate(store, io, ttl, hs, &k, &dst, false));
                        }
                    }
                    if let Err(e) = r {
                        write_err(out, e);
                        return true;
                    }
                }
                reply::simple(&mut out.buf, "OK");
            }
            "SETRANGE" if n == 4 => {
                let Some(off) = parse_int(&arg(&*io, 2)).filter(|o| *o >= 0) else {
                    reply::error(&mut out.buf, "ERR offset is out of range");
                    return true;
                };
                let key = key(&*io, 1);
                let mut val = Vec::new();
                if store.read_value(&key, &mut val).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                let piece = arg(&*io, 3);
                if piece.is_empty() {
                    reply::int(&mut out.buf, val.len() as i64); // nothing to write, nothing created
                    return true;
                }
                let end = off as u64 + piece.len() as u64;
                if end > MAX_STRING {
                    reply::error(&mut out.buf, "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
                    return true;
                }
                if val.len() < end as usize {
                    val.resize(end as usize, 0);
                }
                val[off as usize..end as usize].copy_from_slice(&piece);
                self.store_copy(store, io, &key, &val, out, |o| reply::int(o, val.len() as i64));
            }
            "GETBIT" if n == 3 => {
                let Some(bit) = bit_offset(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR bit offset is not an integer or out of range");
                    return true;
                };
                let mut val = Vec::new();
                if store.read_value(&key(&*io, 1), &mut val).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                let byte = val.get((bit >> 3) as usize).copied().unwrap_or(0);
                reply::int(&mut out.buf, ((byte >> (7 - (bit & 7))) & 1) as i64);
            }
            "SETBIT" if n == 4 => {
                let Some(bit) = bit_offset(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR bit offset is not an integer or out of range");
                    return true;
                };
                let on = match arg(&*io, 3).as_slice() {
                    b"1" => true,
                    b"0" => false,
                    _ => {
                        reply::error(&mut out.buf, "ERR bit is not an integer or out of range");
                        return true;
                    }
                };
                let key = key(&*io, 1);
                let mut val = Vec::new();
                if store.read_value(&key, &mut val).is_err() {
                    reply::error(&mut out.buf, "ERR stored value is corrupt");
                    return true;
                }
                let byte = (bit >> 3) as usize;
                if val.len() <= byte {
                    val.resize(byte + 1, 0);
                }
                let mask = 1u8 << (7 - (bit & 7));
                let old = (val[byte] & mask != 0) as i64;
                if on {
                    val[byte] |= mask;
                } else {
                    val[byte] &= !mask;
                }
                self.store_copy(store, io, &key, &val, out, |o| reply::int(o, old));
            }
            "INCRBYFLOAT" if n == 3 => {
                let Some(by) = parse_float(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR value is not a valid float");
                    return true;
                };
                let key = key(&*io, 1);
                let mut cur = Vec::new();
                let old = match store.read_value(&key, &mut cur) {
                    Ok(true) => parse_float(&cur),
                    Ok(false) => Some(0.0),
                    Err(_) => None,
                };
                let Some(old) = old else {
                    reply::error(&mut out.buf, "ERR value is not a valid float");
                    return true;
                };
                let new = old + by;
                if !new.is_finite() {
                    reply::error(&mut out.buf, "ERR increment would produce NaN or Infinity");
                    return true;
                }
                let text = format_float(new, old.abs().max(by.abs()));
                self.store_copy(store, io, &key, text.as_bytes(), out, |o| reply::bulk(o, text.as_bytes()));
            }
            "RENAME" | "RENAMENX" | "COPY" | "MOVE" if n == 3 || (name == "COPY" && n > 3) => {
                // RENAME src dst; RENAMENX src dst; COPY src dst [DB n] [REPLACE]; MOVE key db.
                // Strings and hashes alike, with their deadlines (`relocate`).
                let (mut dst_db, mut replace) = (db, name == "RENAME");
                let db_arg = |io: &dyn Io, i: usize| match parse_int(&arg(io, i)) {
                    Some(d) if (0..DATABASES as i64).contains(&d) => Ok(d as u8),
                    Some(_) => Err("ERR DB index is out of range"),
                    None => Err("ERR value is not an integer or out of range"),
                };
                let mut i = 3;
                while name == "COPY" && i < n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"REPLACE" => replace = true,
                        b"DB" if i + 1 < n => {
                            i += 1;
                            match db_arg(&*io, i) {
                                Ok(d) => dst_db = d,
                                Err(e) => {
                                    reply::error(&mut out.buf, e);
                                    return true;
                                }
                            }
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 1;
                }
                if name == "MOVE" {
                    match db_arg(&*io, 2) {
                        Ok(d) => dst_db = d,
                        Err(e) => {
                            reply::error(&mut out.buf, e);
                            return true;
                        }
                    }
                }
                let src = key(&*io, 1);
                let dst = db_key(dst_db, arg(&*io, if name == "MOVE" { 1 } else { 2 }));
                let renaming = name.starts_with("RENAME");
                let exists = store.get(&src).is_some();
                if renaming && !exists {
                    reply::error(&mut out.buf, "ERR no such key");
                    return true;
                }
                if src == dst {
                    match name {
                        "RENAME" => reply::simple(&mut out.buf, "OK"),
                        "RENAMENX" => reply::int(&mut out.buf, 0),
                        _ => reply::error(&mut out.buf, "ERR source and destination objects are the same"),
                    }
                    return true;
                }
                expire(ttl, hs, store, &dst, now);
                if !exists || (store.get(&dst).is_some() && !replace) {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                match relocate(store, io, ttl, hs, &src, &dst, name == "COPY") {
                    Ok(()) if name == "RENAME" => reply::simple(&mut out.buf, "OK"),
                    Ok(()) => reply::int(&mut out.buf, 1),
                    Err(pst_store::StoreError::ValueCorrupt { .. }) => {
                        reply::error(&mut out.buf, "ERR stored value is corrupt")
                    }
                    Err(e) => write_err(out, e),
                }
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if n >= 3 => {
                let Some(v) = parse_int(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
                for i in 3..n {
                    let opt = arg(&*io, i);
                    match opt.to_ascii_uppercase().as_slice() {
                        b"NX" => nx = true,
                        b"XX" => xx = true,
                        b"GT" => gt = true,
                        b"LT" => lt = true,
                        _ => {
                            error_line(&mut out.buf, &format!("ERR Unsupported option {}", cap(&opt, 128)));
                            return true;
                        }
                    }
                }
                if nx && (xx || gt || lt) {
                    reply::error(&mut out.buf, "ERR NX and XX, GT or LT options at the same time are not compatible");
                    return true;
                }
                if gt && lt {
                    reply::error(&mut out.buf, "ERR GT and LT options at the same time are not compatible");
                    return true;
                }
                let Some(at) = deadline(v, name.starts_with('P'), name.ends_with("AT"), now) else {
                    invalid_expire(&mut out.buf, name);
                    return true;
                };
                let key = key(&*io, 1);
                if store.get(&key).is_none() {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                let cur = ttl.get(&key);
                // No deadline counts as an infinite one (GT never beats it, LT always does).
                let refused = nx && cur.is_some()
                    || xx && cur.is_none()
                    || gt && cur.is_none_or(|c| at <= c)
                    || lt && cur.is_some_and(|c| at >= c);
                if refused {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                let r = if at <= now {
                    store.delete(&key).and_then(|_| ttl.clear(store, &key)).map(drop)
                } else {
                    ttl.set(store, io, &key, at)
                };
                match r {
                    Ok(()) => reply::int(&mut out.buf, 1),
                    Err(e) => write_err(out, e),
                }
            }
            "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" if n == 2 => {
                let key = key(&*io, 1);
                let v = match (store.get(&key).is_some(), ttl.get(&key)) {
                    (false, _) => -2,
                    (true, None) => -1,
                    (true, Some(at)) => match name {
                        "TTL" => ((at - now).max(0) + 500) / 1000,
                        "PTTL" => (at - now).max(0),
                        "EXPIRETIME" => at / 1000,
                        _ => at,
                    },
                };
                reply::int(&mut out.buf, v);
            }
            "PERSIST" if n == 2 => {
                let key = key(&*io, 1);
                if store.get(&key).is_none() {
                    reply::int(&mut out.buf, 0);
                    return true;
                }
                match ttl.clear(store, &key) {
                    Ok(had) => reply::int(&mut out.buf, had as i64),
                    Err(e) => write_err(out, e),
                }
            }
            "DUMP" if n == 2 => {
                let k = key(&*io, 1);
                let mut v = Vec::new();
                let value = match hs.kind(&k) {
                    Some(Kind::Set) => Some(dump::Value::Set(hs.fields(&k).map(<[u8]>::to_vec).collect())),
                    Some(Kind::Hash) => {
                        let fields: Vec<Vec<u8>> = hs.fields(&k).map(<[u8]>::to_vec).collect();
                        let mut pairs = Vec::with_capacity(fields.len());
                        for f in fields {
                            if let Ok(true) = store.read_value(&field_key(&k, &f), &mut v) {
                                pairs.push((f, std::mem::take(&mut v)));
                            }
                        }
                        Some(dump::Value::Hash(pairs))
                    }
                    None => match store.read_value(&k, &mut v) {
                        Ok(true) => Some(dump::Value::String(v)),
                        Ok(false) => None,
                        Err(_) => {
                            reply::error(&mut out.buf, "ERR stored value is corrupt");
                            return true;
                        }
                    },
                };
                match value {
                    Some(v) => reply::bulk(&mut out.buf, &dump::encode(&v)),
                    None => out.null(),
                }
            }
            "RESTORE" if n >= 4 => {
                // RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]
                let (mut replace, mut abs) = (false, false);
                let mut i = 4;
                while i < n {
                    match arg(&*io, i).to_ascii_uppercase().as_slice() {
                        b"REPLACE" => replace = true,
                        b"ABSTTL" => abs = true,
                        b"IDLETIME" | b"FREQ" if i + 1 < n => {
                            // Eviction hints: pst does not evict. Checked, then ignored.
                            if !matches!(parse_int(&arg(&*io, i + 1)), Some(v) if v >= 0) {
                                reply::error(&mut out.buf, "ERR Invalid IDLETIME or FREQ value");
                                return true;
                            }
                            i += 1;
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 1;
                }
                let k = key(&*io, 1);
                let ttl_ms = match parse_int(&arg(&*io, 2)) {
                    Some(t) if t >= 0 => t,
                    Some(_) => {
                        reply::error(&mut out.buf, "ERR Invalid TTL value, must be >= 0");
                        return true;
                    }
                    None => {
                        reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                        return true;
                    }
                };
                if !replace && store.get(&k).is_some() {
                    reply::error(&mut out.buf, "BUSYKEY Target key name already exists.");
                    return true;
                }
                let value = match dump::decode(&arg(&*io, 3)) {
                    Ok(v) => v,
                    Err(e) => {
                        reply::error(&mut out.buf, e.reply());
                        return true;
                    }
                };
                let bytes = match &value {
                    dump::Value::String(v) => v.len(),
                    dump::Value::Hash(p) => p.iter().map(|(f, v)| f.len() + v.len()).sum(),
                    dump::Value::Set(m) => m.iter().map(Vec::len).sum(),
                } as u64;
                if !io.has_room(bytes) || self.over_maxmemory(store, bytes) {
                    reply::error(&mut out.buf, OOM);
                    return true;
                }
                let deadline = match (ttl_ms, abs) {
                    (0, _) => None,
                    (t, true) => Some(t),
                    (t, false) => Some(now.saturating_add(t)),
                };
                let written = restore(store, io, ttl, hs, &k, value, deadline, now);
                match written {
                    Ok(()) => reply::simple(&mut out.buf, "OK"),
                    Err(e) => write_err(out, e),
                }
            }
            "TYPE" if n == 2 => {
                let k = key(&*io, 1);
                let t = match store.get(&k) {
                    Some(_) if hs.kind(&k).is_some() => hs.kind(&k).map_or("string", Kind::name),
                    Some(_) => "string",
                    None => "none",
                };
                reply::simple(&mut out.buf, t);
            }
            "SETEX" | "PSETEX" if n == 4 => {
                let Some(v) = parse_int(&arg(&*io, 2)) else {
                    reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                    return true;
                };
                let Some(at) = (v > 0).then(|| deadline(v, name == "PSETEX", false, now)).flatten() else {
                    invalid_expire(&mut out.buf, name);
                    return true;
                };
                let key = key(&*io, 1);
                match io.extents(args[3].clone()) {
                    None => reply::error(&mut out.buf, OOM),
                    Some(exts) => match store.put(&key, exts).and_then(|_| ttl.set(store, io, &key, at)) {
                        Ok(()) => reply::simple(&mut out.buf, "OK"),
                        Err(e) => write_err(out, e),
                    },
                }
            }
            "GETEX" if n >= 2 => {
                // GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]
                enum Change {
                    Keep,
                    At(i64),
                    Persist,
                }
                let mut change = Change::Keep;
                let mut i = 2;
                while i < n {
                    let opt = arg(&*io, i).to_ascii_uppercase();
                    match opt.as_slice() {
                        b"PERSIST" if matches!(change, Change::Keep) => change = Change::Persist,
                        b"EX" | b"PX" | b"EXAT" | b"PXAT" if matches!(change, Change::Keep) && i + 1 < n => {
                            i += 1;
                            let Some(v) = parse_int(&arg(&*io, i)) else {
                                reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                                return true;
                            };
                            let at = (v > 0)
                                .then(|| deadline(v, opt.starts_with(b"P"), opt.ends_with(b"AT"), now))
                                .flatten();
                            let Some(at) = at else {
                                invalid_expire(&mut out.buf, "getex");
                                return true;
                            };
                            change = Change::At(at);
                        }
                        _ => {
                            reply::error(&mut out.buf, "ERR syntax error");
                            return true;
                        }
                    }
                    i += 1;
                }
                let key = key(&*io, 1);
                let mut val = Vec::new();
                match store.read_value(&key, &mut val) {
                    Ok(false) => {
                        out.null();
                        return true;
                    }
                    Err(_) => {
                        reply::error(&mut out.buf, "ERR stored value is corrupt");
                        return true;
                    }
                    Ok(true) => {}
                }
                let r = match change {
                    Change::Keep => Ok(()),
                    Change::Persist => ttl.clear(store, &key).map(drop),
                    Change::At(at) if at <= now => {
                        store.delete(&key).and_then(|_| ttl.clear(store, &key)).map(drop)
                    }
                    Change::At(at) => ttl.set(store, io, &key, at),
                };
                match r {
                    Ok(()) => reply::bulk(&mut out.buf, &val),
                    Err(e) => write_err(out, e),
                }
            }
            "ECHO" | "SET" | "GET" | "MGET" | "MSET" | "DEL" | "UNLINK" | "EXISTS" | "DBSIZE"
            | "SELECT" | "FUNCTION" | "CLIENT" | "GETSET" | "SETNX" | "MSETNX" | "GETDEL"
            | "STRLEN" | "APPEND" | "GETRANGE" | "SUBSTR" | "KEYS" | "RANDOMKEY" | "RENAME"
            | "RENAMENX" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "TTL" | "PTTL"
            | "EXPIRETIME" | "PEXPIRETIME" | "PERSIST" | "TYPE" | "SETEX" | "PSETEX" | "GETEX"
            | "SETRANGE" | "GETBIT" | "SETBIT" | "INCRBYFLOAT" | "COPY" | "MOVE" | "SCAN" | "TOUCH"
            | "OBJECT" | "TIME" | "HSET" | "HMSET" | "HSETNX" | "HGET" | "HMGET" | "HDEL" | "HLEN"
            | "HEXISTS" | "HSTRLEN" | "HKEYS" | "HVALS" | "HGETALL" | "HINCRBY" | "HINCRBYFLOAT"
            | "HRANDFIELD" | "HSCAN" | "MEMORY" | "LCS" | "SWAPDB" => {
                arity_error(&mut out.buf, name)
            }
            _ => {
                // As Redis: the name and the first arguments, at most 128 bytes each and in
                // all, CR/LF turned into spaces (an echo must never split the reply).
                let mut args_text = String::new();
                for i in 1..n {
                    if args_text.len() >= 128 {
                        break;
                    }
                    let room = 128 - args_text.len();
                    args_text += &format!("'{}' ", cap(&arg(&*io, i), room));
                }
                error_line(
                    &mut out.buf,
                    &format!(
                        "ERR unknown command '{}', with args beginning with: {args_text}",
                        cap(&arg(&*io, 0), 128)
                    ),
                );
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
            db: 0,
            // Relaxed: a unique number is all that is needed.
            id: self.next_client_id.fetch_add(1, Ordering::Relaxed),
            name: None,
            tx: None,
            watched: Vec::new(),
            resp3: false,
            inline: OwnedArgs::default(),
            queue: std::collections::VecDeque::new(),
            fed: Vec::new(),
            deferred: None,
        }
    }

    fn needed_from(&self, c: &KvConn) -> u64 {
        let queued =
            c.tx.as_ref()
                .and_then(|t| t.queued.first())
                .and_then(|args| args.first())
                .map_or(u64::MAX, |r| r.start);
        let deferred = c
            .queue
            .iter()
            .find_map(|e| match e {
                Event::Command(args) => args.first().map(|r| r.start),
                _ => None,
            })
            .unwrap_or(u64::MAX);
        c.framer.needed_from().min(queued).min(deferred)
    }

    fn parked(&self, c: &KvConn) -> bool {
        c.deferred.is_some()
    }

    fn resume(
        &self,
        c: &mut KvConn,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        let Some(deadline) = c.deferred.take() else {
            return true;
        };
        let Some(store) = store else { return false };
        self.run(c, Some(deadline), io, store, pieces)
    }

    fn peer_closed(
        &self,
        c: &mut KvConn,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        // The client sent all it will: answer what it waits for now (a held delete runs and
        // is refused if there is still no room).
        if let Some(d) = c.deferred.as_mut() {
            *d = std::time::Instant::now();
        }
        self.resume(c, io, store, pieces)
    }

    fn on_chunk(
        &self,
        c: &mut KvConn,
        chunk: Range<u64>,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        let mut fed = std::mem::take(&mut c.fed);
        io.with_bytes(chunk, &mut |b| c.framer.feed(b, &mut fed));
        c.queue.extend(fed.drain(..)); // behind a held command, if any: in order
        c.fed = fed;
        let Some(store) = store else { return false };
        if c.deferred.is_some() {
            return true;
        }
        self.run(c, None, io, store, pieces)
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"-ERR max number of clients reached\r\n"
    }

    fn full_reply(&self) -> &'static [u8] {
        b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    }

    fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }
}

impl KvService {
    /// Run a connection's queued commands in order; a removal the log has no room for yet
    /// holds the rest back (`KvConn::deferred`; `held`: the deadline of the one at the front).
    fn run(
        &self,
        c: &mut KvConn,
        mut held: Option<std::time::Instant>,
        io: &mut dyn Io,
        store: &mut PoolStore,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        let mut ttl = self.ttl.lock().unwrap_or_else(|e| e.into_inner());
        let mut hs = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        ttl.load(store);
        hs.load(store);
        if !ttl.is_empty() {
            for k in ttl.reap_due(store, now_ms(), crate::expiry::ACTIVE_BATCH) {
                let _ = hs.drop_fields(store, &k);
            }
        }
        let mut out = Out {
            buf: crate::protocol::reply_buf(),
            pieces,
            resp3: c.resp3,
        };
        let mut keep = true;
        while let Some(ev) = c.queue.pop_front() {
            // A log short of free segments borrows a slot now, not at the end of the batch: a
            // pipelined flood would otherwise find it full while the pool has room (cheap when
            // nothing is wanted, and when no slot is free: the allocator remembers).
            if store.segment_wanted().is_some() {
                io.lend_segment(store);
            }
            // The command's index, once looked up (for the hold check, then for the counts).
            let mut looked_up = None;
            if let Event::Command(args) = &ev {
                let idx = command_index(&*io, &args[0]);
                looked_up = Some(idx);
                let len = |r: &Range<u64>| r.end - r.start;
                let put = put_like(idx) && args.len() >= 2;
                let full = c.tx.is_none()
                    && (removal_need(idx, args).is_some_and(|(n, b)| !store.removal_room(n, b))
                        || (put
                            && store.put_must_wait(
                                len(&args[1]) as usize,
                                args[2..].iter().map(len).sum(),
                            )));
                if full {
                    let deadline = held.unwrap_or_else(|| std::time::Instant::now() + DEFER_LIMIT);
                    if std::time::Instant::now() < deadline {
                        c.queue.push_front(ev);
                        c.deferred = Some(deadline);
                        break;
                    }
                    // Still no room: refuse it whole. Run, it could delete some of its keys
                    // and then fail (a multi-key DEL is all or nothing, as in Redis).
                    held = None;
                    io.count_request();
                    reply::error(&mut out.buf, if put { OOM } else { OOM_REMOVAL });
                    if let Event::Command(args) = ev {
                        c.framer.recycle(args);
                    }
                    continue;
                }
            }
            held = None; // the held command runs now; a later one waits afresh
            let args = match ev {
                Event::Command(args) => args,
                Event::Inline(owned) => c.inline.stage(owned),
                Event::Error(why) => {
                    reply::error(&mut out.buf, &format!("ERR Protocol error: {why}"));
                    keep = false;
                    c.queue.clear();
                    break;
                }
            };
            io.count_request();
            let inline = std::mem::take(&mut c.inline);
            let mut owned;
            let io: &mut dyn Io = if inline.is_empty() {
                &mut *io
            } else {
                owned = OwnedIo {
                    inner: &mut *io,
                    owned: &inline,
                };
                &mut owned
            };
            let idx = looked_up.unwrap_or_else(|| command_index(&*io, &args[0]));
            let (t0, before) = (std::time::Instant::now(), out.buf.len());
            let go = match self.transaction(
                c, &args, idx, io, store, &mut ttl, &mut hs, &mut w, &mut out,
            ) {
                Some(go) => go,
                None => self.exec(
                    c, &args, idx, io, store, &mut ttl, &mut hs, &mut w, &mut out,
                ),
            };
            self.count_command(idx, t0.elapsed(), out.buf.get(before..));
            c.inline = inline;
            if c.tx.is_none() {
                // Nothing queued refers to them any more.
                c.inline.clear();
            }
            c.framer.recycle(args); // a transaction queues copies
            if !go {
                keep = false;
                c.queue.clear();
                break;
            }
        }
        out.finish();
        keep
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
        // Redis's quoting: the quotes are not part of the key or value; escapes decode.
        assert_eq!(c.say("SET \"my key\" 'it\\'s'\r\n"), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "my key"])), "$4\r\nit's\r\n");
        assert_eq!(c.say("SET k \"a\\x00\\r\\nb\"\r\n"), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["STRLEN", "k"])), ":5\r\n");
        // Queued inline commands keep their decoded arguments until EXEC.
        assert_eq!(c.say("MULTI\r\n"), "+OK\r\n");
        assert_eq!(c.say("SET \"q 1\" \"v 1\"\r\n"), "+QUEUED\r\n");
        assert_eq!(c.say(&cmd(&["SET", "q2", "v2"])), "+QUEUED\r\n");
        assert_eq!(c.say("GET 'q 1'\r\n"), "+QUEUED\r\n");
        assert_eq!(c.say("EXEC\r\n"), "*3\r\n+OK\r\n+OK\r\n$3\r\nv 1\r\n");
        // Unbalanced quotes: a protocol error, and the connection ends.
        let mut c = conv(None);
        assert_eq!(
            c.say("set \"\"\"test-key\"\"\" test-value\r\nping\r\n"),
            "-ERR Protocol error: unbalanced quotes in request\r\n"
        );
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
        // The refusal of a request the full pool cannot take is the same OOM error.
        assert_eq!(svc.full_reply(), format!("-{OOM}\r\n").as_bytes());
    }

    #[test]
    fn databases_are_separate() {
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["SET", "k", "zero"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["SELECT", "9"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$-1\r\n");
        assert_eq!(c.say(&cmd(&["SET", "k", "nine"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":1\r\n");
        assert_eq!(c.say(&cmd(&["FLUSHDB"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["SELECT", "0"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$4\r\nzero\r\n");
        assert_eq!(
            c.say(&cmd(&["SELECT", "16"])),
            "-ERR DB index is out of range\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["SELECT", "x"])),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(c.say(&cmd(&["FLUSHALL", "junk"])), "-ERR syntax error\r\n");
        assert_eq!(c.say(&cmd(&["FUNCTION", "FLUSH"])), "+OK\r\n");
    }

    #[test]
    fn unknown_command_echo_cannot_split_the_reply() {
        let mut c = conv(None);
        let evil = c.say(&cmd(&["NOPE", "a\r\n+OK", &"z".repeat(500)]));
        assert_eq!(evil.matches("\r\n").count(), 1, "{evil:?}");
        assert!(
            evil.starts_with("-ERR unknown command 'NOPE', with args beginning with: 'a  +OK' ")
        );
        assert!(evil.len() < 300, "echo is capped: {}", evil.len());
        assert_eq!(c.say(&cmd(&["PING"])), "+PONG\r\n", "replies stay in step");
    }

    #[test]
    fn integers_follow_redis_syntax() {
        for bad in ["+1", "007", "-0", " 1", "1 ", "", "99999999999999999999"] {
            assert_eq!(parse_int(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["SET", "n", "007"])), "+OK\r\n");
        assert_eq!(
            c.say(&cmd(&["INCR", "n"])),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["INCRBY", "m", "+1"])),
            "-ERR value is not an integer or out of range\r\n"
        );
    }

    #[test]
    fn config_get_is_truthful_and_set_takes_only_harmless_knobs() {
        let mut c = Conversation::new(
            KvService::new(1 << 20, None).with_persist(pst::PersistMode::None),
            true,
        );
        assert_eq!(
            c.say(&cmd(&["CONFIG", "GET", "appendonly"])),
            "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        assert_eq!(c.say(&cmd(&["CONFIG", "GET", "no-such-thing"])), "*0\r\n");
        let both = c.say(&cmd(&["CONFIG", "GET", "append*"]));
        assert!(both.starts_with("*4\r\n"), "{both}");
        assert_eq!(
            c.say(&cmd(&["CONFIG", "SET", "hash-max-listpack-entries", "0"])),
            "+OK\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["CONFIG", "GET", "hash-max-listpack-entries"])),
            "*2\r\n$25\r\nhash-max-listpack-entries\r\n$1\r\n0\r\n"
        );
        let refused = c.say(&cmd(&["CONFIG", "SET", "appendonly", "yes"]));
        assert!(refused.starts_with("-ERR Unknown option"), "{refused}");
        let durable = Conversation::new(
            KvService::new(1 << 20, None).with_persist(pst::PersistMode::Fsync),
            true,
        )
        .say(&cmd(&["CONFIG", "GET", "appendonly"]));
        assert!(durable.ends_with("$3\r\nyes\r\n"), "{durable}");
    }

    #[test]
    fn client_and_command_answer_what_they_are_asked() {
        let mut c = conv(None);
        assert!(c.say(&cmd(&["CLIENT", "ID"])).starts_with(':'));
        assert_eq!(c.say(&cmd(&["CLIENT", "GETNAME"])), "$-1\r\n");
        assert_eq!(c.say(&cmd(&["CLIENT", "SETNAME", "app"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["CLIENT", "GETNAME"])), "$3\r\napp\r\n");
        assert!(c
            .say(&cmd(&["CLIENT", "KILL", "x"]))
            .starts_with("-ERR unknown subcommand"));
        assert_eq!(
            c.say(&cmd(&["COMMAND", "COUNT"])),
            format!(":{}\r\n", COMMANDS.len())
        );
        assert_eq!(c.say(&cmd(&["AUTH", "default", "anything"])), "+OK\r\n");
        assert!(c.say(&cmd(&["AUTH", "bob", "x"])).starts_with("-WRONGPASS"));
    }

    #[test]
    fn auth_default_user_with_a_password() {
        let mut c = conv(Some("pw"));
        assert!(c
            .say(&cmd(&["AUTH", "default", "nope"]))
            .starts_with("-WRONGPASS"));
        assert_eq!(c.say(&cmd(&["AUTH", "default", "pw"])), "+OK\r\n");
    }

    #[test]
    fn sets() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["SADD", "s", "a", "b", "c", "a"]), ":3\r\n");
        assert_eq!(say(&mut c, &["SADD", "s", "a"]), ":0\r\n");
        assert_eq!(say(&mut c, &["SCARD", "s"]), ":3\r\n");
        assert_eq!(say(&mut c, &["TYPE", "s"]), "+set\r\n");
        assert_eq!(say(&mut c, &["SISMEMBER", "s", "b"]), ":1\r\n");
        assert_eq!(
            say(&mut c, &["SMISMEMBER", "s", "b", "z"]),
            "*2\r\n:1\r\n:0\r\n"
        );
        assert_eq!(
            say(&mut c, &["SMEMBERS", "s"]),
            "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(say(&mut c, &["SRANDMEMBER", "nope"]), "$-1\r\n");
        assert!(say(&mut c, &["SRANDMEMBER", "s", "-5"]).starts_with("*5\r\n"));
        assert!(say(&mut c, &["SRANDMEMBER", "s", "10"]).starts_with("*3\r\n"));
        // Type rules both ways.
        assert_eq!(say(&mut c, &["SET", "str", "x"]), "+OK\r\n");
        assert!(say(&mut c, &["SADD", "str", "a"]).starts_with("-WRONGTYPE"));
        assert!(say(&mut c, &["GET", "s"]).starts_with("-WRONGTYPE"));
        assert!(say(&mut c, &["HGET", "s", "a"]).starts_with("-WRONGTYPE"));
        assert!(say(&mut c, &["SINTER", "s", "str"]).starts_with("-WRONGTYPE"));
        assert_eq!(say(&mut c, &["MGET", "s"]), "*1\r\n$-1\r\n");
        // Algebra and STORE forms (the destination's old value goes, whatever its type).
        assert_eq!(say(&mut c, &["SADD", "t", "b", "c", "d"]), ":3\r\n");
        assert_eq!(
            say(&mut c, &["SINTER", "s", "t"]),
            "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            say(&mut c, &["SDIFF", "s", "t", "nope"]),
            "*1\r\n$1\r\na\r\n"
        );
        assert_eq!(say(&mut c, &["SUNIONSTORE", "str", "s", "t"]), ":4\r\n");
        assert_eq!(say(&mut c, &["TYPE", "str"]), "+set\r\n");
        assert_eq!(say(&mut c, &["SINTERSTORE", "str", "s", "nope"]), ":0\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "str"]), ":0\r\n");
        // SMOVE, SREM, SPOP; the set goes with its last member.
        assert_eq!(say(&mut c, &["SMOVE", "s", "u", "a"]), ":1\r\n");
        assert_eq!(say(&mut c, &["SMOVE", "s", "u", "a"]), ":0\r\n");
        assert_eq!(say(&mut c, &["SMEMBERS", "u"]), "*1\r\n$1\r\na\r\n");
        assert_eq!(say(&mut c, &["SREM", "u", "a", "zz"]), ":1\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "u"]), ":0\r\n");
        assert!(say(&mut c, &["SPOP", "s", "-1"]).starts_with("-ERR value is out of range"));
        assert!(say(&mut c, &["SPOP", "s", "5"]).starts_with("*2\r\n"));
        assert_eq!(say(&mut c, &["EXISTS", "s"]), ":0\r\n");
        // SSCAN with MATCH; RENAME and COPY keep the type; DEL drops the members.
        assert_eq!(say(&mut c, &["SADD", "v", "1", "a", "ab"]), ":3\r\n");
        assert_eq!(
            say(&mut c, &["SSCAN", "v", "0", "MATCH", "a*"]),
            "*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$2\r\nab\r\n"
        );
        assert_eq!(say(&mut c, &["COPY", "v", "w"]), ":1\r\n");
        assert_eq!(say(&mut c, &["RENAME", "w", "x"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TYPE", "x"]), "+set\r\n");
        assert_eq!(say(&mut c, &["SCARD", "x"]), ":3\r\n");
        assert_eq!(say(&mut c, &["DEL", "v", "x"]), ":2\r\n");
        assert_eq!(say(&mut c, &["SCARD", "x"]), ":0\r\n");
        // RESP3: a set reply.
        c.say(&cmd(&["HELLO", "3"]));
        assert_eq!(say(&mut c, &["SADD", "y", "m"]), ":1\r\n");
        assert_eq!(say(&mut c, &["SMEMBERS", "y"]), "~1\r\n$1\r\nm\r\n");
    }

    #[test]
    fn dump_and_restore() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["DUMP", "nope"]), "$-1\r\n");
        // A DUMP reply is one bulk string; RESTORE takes it back (binary-safe).
        let payload = |c: &mut Conversation<KvService>, k: &str| -> Vec<u8> {
            let (r, _) = c.send(cmd(&["DUMP", k]).as_bytes());
            let head = r.iter().position(|&b| b == b'\n').unwrap() + 1;
            r[head..r.len() - 2].to_vec()
        };
        let restore =
            |c: &mut Conversation<KvService>, k: &str, ttl: &str, p: &[u8], extra: &[&str]| {
                let mut m = format!("*{}\r\n", 4 + extra.len()).into_bytes();
                for a in [&b"RESTORE"[..], k.as_bytes(), ttl.as_bytes(), p]
                    .into_iter()
                    .chain(extra.iter().map(|e| e.as_bytes()))
                {
                    m.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    m.extend_from_slice(a);
                    m.extend_from_slice(b"\r\n");
                }
                String::from_utf8_lossy(&c.send(&m).0).into_owned()
            };
        assert_eq!(say(&mut c, &["SET", "s", "va\r\nlue"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["HSET", "h", "f1", "v1", "f2", ""]), ":2\r\n");
        assert_eq!(say(&mut c, &["SADD", "set", "a", "b"]), ":2\r\n");
        let (ps, ph, pset) = (
            payload(&mut c, "s"),
            payload(&mut c, "h"),
            payload(&mut c, "set"),
        );
        assert_eq!(
            restore(&mut c, "s", "0", &ps, &[]),
            "-BUSYKEY Target key name already exists.\r\n"
        );
        assert_eq!(restore(&mut c, "s2", "0", &ps, &[]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "s2"]), "$7\r\nva\r\nlue\r\n");
        assert_eq!(restore(&mut c, "s", "0", &ph, &["REPLACE"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["HGET", "s", "f1"]), "$2\r\nv1\r\n");
        assert_eq!(say(&mut c, &["HLEN", "s"]), ":2\r\n");
        assert_eq!(restore(&mut c, "s3", "100000", &pset, &[]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TYPE", "s3"]), "+set\r\n");
        let pttl: i64 = say(&mut c, &["PTTL", "s3"])[1..].trim().parse().unwrap();
        assert!((90_000..=100_000).contains(&pttl), "{pttl}");
        // A deadline already past restores nothing.
        assert_eq!(restore(&mut c, "s4", "1", &ps, &["ABSTTL"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "s4"]), ":0\r\n");
        let mut bad = ps.clone();
        bad[2] ^= 1;
        assert_eq!(
            restore(&mut c, "s5", "0", &bad, &[]),
            "-ERR DUMP payload version or checksum are wrong\r\n"
        );
        assert_eq!(
            restore(&mut c, "s5", "-1", &ps, &[]),
            "-ERR Invalid TTL value, must be >= 0\r\n"
        );
    }

    #[test]
    fn save_shutdown_and_maxmemory() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["SAVE"]), "+OK\r\n");
        // Not inside MULTI (Redis's CMD_NO_MULTI): the transaction aborts.
        assert_eq!(say(&mut c, &["MULTI"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["SET", "foo", "bar"]), "+QUEUED\r\n");
        assert_eq!(
            say(&mut c, &["SAVE"]),
            "-ERR Command not allowed inside a transaction\r\n"
        );
        assert!(say(&mut c, &["EXEC"]).starts_with("-EXECABORT"));
        assert_eq!(say(&mut c, &["GET", "foo"]), "$-1\r\n");
        // A bad maxmemory inside MULTI fails at EXEC, as Redis words it.
        assert_eq!(say(&mut c, &["MULTI"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["SET", "foo", "bar"]), "+QUEUED\r\n");
        assert_eq!(
            say(&mut c, &["CONFIG", "SET", "maxmemory", "bla"]),
            "+QUEUED\r\n"
        );
        let r = say(&mut c, &["EXEC"]);
        assert!(r.starts_with("*2\r\n+OK\r\n-ERR CONFIG SET failed"), "{r}");
        // maxmemory bounds the pool bytes the store holds: writes refused, reads and deletes
        // served, and writable again once it is lifted.
        assert_eq!(
            say(&mut c, &["CONFIG", "SET", "maxmemory", "1kb"]),
            "+OK\r\n"
        );
        assert_eq!(
            say(&mut c, &["CONFIG", "GET", "maxmemory"]),
            "*2\r\n$9\r\nmaxmemory\r\n$4\r\n1024\r\n"
        );
        assert!(say(&mut c, &["SET", "big", &"x".repeat(2000)]).starts_with("-OOM"));
        assert_eq!(say(&mut c, &["GET", "foo"]), "$3\r\nbar\r\n");
        assert_eq!(say(&mut c, &["DEL", "foo"]), ":1\r\n");
        assert_eq!(say(&mut c, &["CONFIG", "SET", "maxmemory", "0"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["SET", "big", "x"]), "+OK\r\n");
        // SHUTDOWN: refused without a stop flag; with one, it sets it and closes silently.
        assert!(say(&mut c, &["SHUTDOWN"]).starts_with("-ERR SHUTDOWN is not enabled"));
        assert_eq!(say(&mut c, &["SHUTDOWN", "bogus"]), "-ERR syntax error\r\n");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut c = Conversation::new(
            KvService::new(1 << 20, None).with_shutdown(stop.clone()),
            true,
        );
        assert_eq!(
            c.say(&cmd(&["SHUTDOWN", "ABORT"])),
            "-ERR No shutdown in progress.\r\n"
        );
        assert!(!stop.load(Ordering::Relaxed));
        let (reply, keep) = c.send(cmd(&["SHUTDOWN", "NOSAVE"]).as_bytes());
        assert!(reply.is_empty() && !keep);
        assert!(stop.load(Ordering::Relaxed));
    }

    #[test]
    fn multi_exec_discard_and_watch() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["MULTI"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["SET", "a", "1"]), "+QUEUED\r\n");
        assert_eq!(say(&mut c, &["INCR", "a"]), "+QUEUED\r\n");
        assert_eq!(say(&mut c, &["GET", "a"]), "+QUEUED\r\n");
        assert_eq!(
            say(&mut c, &["MULTI"]),
            "-ERR MULTI calls can not be nested\r\n"
        );
        assert_eq!(say(&mut c, &["EXEC"]), "*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n");
        assert_eq!(say(&mut c, &["EXEC"]), "-ERR EXEC without MULTI\r\n");
        assert_eq!(say(&mut c, &["DISCARD"]), "-ERR DISCARD without MULTI\r\n");
        // DISCARD drops what was queued.
        say(&mut c, &["MULTI"]);
        say(&mut c, &["SET", "a", "9"]);
        assert_eq!(say(&mut c, &["DISCARD"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "a"]), "$1\r\n2\r\n");
        // Errors while queueing abort the transaction.
        say(&mut c, &["MULTI"]);
        assert_eq!(
            say(&mut c, &["SET", "a"]),
            "-ERR wrong number of arguments for 'set' command\r\n"
        );
        assert!(say(&mut c, &["NOSUCH"]).starts_with("-ERR unknown command"));
        say(&mut c, &["SET", "a", "3"]);
        assert_eq!(
            say(&mut c, &["EXEC"]),
            "-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(say(&mut c, &["GET", "a"]), "$1\r\n2\r\n");
        // WATCH: a change to a watched key (even by this client) aborts EXEC with a null array.
        assert_eq!(say(&mut c, &["WATCH", "a", "b"]), "+OK\r\n");
        say(&mut c, &["SET", "a", "changed"]);
        say(&mut c, &["MULTI"]);
        say(&mut c, &["SET", "b", "x"]);
        assert_eq!(say(&mut c, &["EXEC"]), "*-1\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "b"]), ":0\r\n");
        // Unchanged watched keys let it through; EXEC unwatches.
        say(&mut c, &["WATCH", "a"]);
        say(&mut c, &["MULTI"]);
        assert_eq!(
            say(&mut c, &["WATCH", "a"]),
            "-ERR WATCH inside MULTI is not allowed\r\n"
        );
        say(&mut c, &["SET", "b", "y"]);
        assert_eq!(say(&mut c, &["EXEC"]), "*1\r\n+OK\r\n");
        // A key that appeared and vanished again counts as a change too.
        say(&mut c, &["WATCH", "ghost"]);
        say(&mut c, &["SET", "ghost", "1"]);
        say(&mut c, &["DEL", "ghost"]);
        say(&mut c, &["MULTI"]);
        assert_eq!(say(&mut c, &["EXEC"]), "*-1\r\n");
        // A new deadline on a watched key counts as a change.
        say(&mut c, &["WATCH", "b"]);
        say(&mut c, &["EXPIRE", "b", "100"]);
        say(&mut c, &["MULTI"]);
        assert_eq!(say(&mut c, &["EXEC"]), "*-1\r\n");
        say(&mut c, &["PERSIST", "b"]);
        // UNWATCH forgets.
        say(&mut c, &["WATCH", "b"]);
        say(&mut c, &["SET", "b", "z"]);
        assert_eq!(say(&mut c, &["UNWATCH"]), "+OK\r\n");
        say(&mut c, &["MULTI"]);
        say(&mut c, &["GET", "b"]);
        assert_eq!(say(&mut c, &["EXEC"]), "*1\r\n$1\r\nz\r\n");
        // RESET discards a transaction and the selected database.
        say(&mut c, &["SELECT", "2"]);
        say(&mut c, &["MULTI"]);
        assert_eq!(say(&mut c, &["RESET"]), "+RESET\r\n");
        assert_eq!(say(&mut c, &["EXEC"]), "-ERR EXEC without MULTI\r\n");
        assert_eq!(
            say(&mut c, &["GET", "b"]),
            "$1\r\nz\r\n",
            "database 0 again"
        );
    }

    #[test]
    fn setrange_bits_floats_copy_move() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["SETRANGE", "r", "2", "ab"]), ":4\r\n");
        assert_eq!(say(&mut c, &["GET", "r"]), "$4\r\n\0\0ab\r\n");
        assert_eq!(say(&mut c, &["SETRANGE", "r", "1", "X"]), ":4\r\n");
        assert_eq!(say(&mut c, &["GET", "r"]), "$4\r\n\0Xab\r\n");
        assert_eq!(say(&mut c, &["SETRANGE", "none", "5", ""]), ":0\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "none"]), ":0\r\n");
        assert_eq!(
            say(&mut c, &["SETRANGE", "r", "-1", "x"]),
            "-ERR offset is out of range\r\n"
        );
        assert_eq!(
            say(&mut c, &["SETRANGE", "r", "536870911", "xx"]),
            "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
        );
        assert_eq!(say(&mut c, &["SETBIT", "b", "7", "1"]), ":0\r\n");
        assert_eq!(say(&mut c, &["SETBIT", "b", "7", "1"]), ":1\r\n");
        assert_eq!(say(&mut c, &["GET", "b"]), "$1\r\n\u{1}\r\n");
        assert_eq!(say(&mut c, &["GETBIT", "b", "7"]), ":1\r\n");
        assert_eq!(say(&mut c, &["GETBIT", "b", "100"]), ":0\r\n");
        assert_eq!(
            say(&mut c, &["SETBIT", "b", "1", "2"]),
            "-ERR bit is not an integer or out of range\r\n"
        );
        assert_eq!(
            say(&mut c, &["GETBIT", "b", "-1"]),
            "-ERR bit offset is not an integer or out of range\r\n"
        );
        assert_eq!(say(&mut c, &["INCRBYFLOAT", "f", "10.5"]), "$4\r\n10.5\r\n");
        assert_eq!(say(&mut c, &["INCRBYFLOAT", "f", "0.1"]), "$4\r\n10.6\r\n");
        assert_eq!(say(&mut c, &["SET", "g", "1"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["INCRBYFLOAT", "g", "-1.1"]), "$4\r\n-0.1\r\n");
        assert_eq!(say(&mut c, &["INCRBYFLOAT", "g", "0.1"]), "$1\r\n0\r\n");
        assert_eq!(
            say(&mut c, &["INCRBYFLOAT", "g", "+inf"]),
            "-ERR increment would produce NaN or Infinity\r\n"
        );
        assert_eq!(
            say(&mut c, &["INCRBYFLOAT", "g", " 1"]),
            "-ERR value is not a valid float\r\n"
        );
        let third = format!("{}", 1.0f64 / 41.0);
        let minus = format!("-{third}");
        say(&mut c, &["SET", "z", "0"]);
        say(&mut c, &["INCRBYFLOAT", "z", &third]);
        assert_eq!(
            say(&mut c, &["INCRBYFLOAT", "z", &minus]),
            "$1\r\n0\r\n",
            "no negative zero, no noise"
        );
        assert_eq!(say(&mut c, &["SET", "big", "17179869184"]), "+OK\r\n");
        assert_eq!(
            say(&mut c, &["INCRBYFLOAT", "big", "1.5"]),
            "$13\r\n17179869185.5\r\n"
        );
        // COPY (with its deadline) and MOVE between databases.
        assert_eq!(say(&mut c, &["SET", "src", "v", "EX", "100"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["COPY", "src", "dst"]), ":1\r\n");
        assert_eq!(say(&mut c, &["TTL", "dst"]), ":100\r\n");
        assert_eq!(say(&mut c, &["COPY", "src", "dst"]), ":0\r\n", "no REPLACE");
        assert_eq!(say(&mut c, &["COPY", "src", "dst", "REPLACE"]), ":1\r\n");
        assert_eq!(
            say(&mut c, &["COPY", "src", "src"]),
            "-ERR source and destination objects are the same\r\n"
        );
        assert_eq!(say(&mut c, &["COPY", "src", "x", "DB", "3"]), ":1\r\n");
        assert_eq!(say(&mut c, &["MOVE", "dst", "5"]), ":1\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "dst"]), ":0\r\n");
        assert_eq!(
            say(&mut c, &["MOVE", "dst", "99"]),
            "-ERR DB index is out of range\r\n"
        );
        assert_eq!(say(&mut c, &["SELECT", "5"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "dst"]), "$1\r\nv\r\n");
        assert_eq!(say(&mut c, &["TTL", "dst"]), ":100\r\n");
        assert_eq!(say(&mut c, &["SELECT", "3"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "x"]), "$1\r\nv\r\n");
    }

    #[test]
    fn scan_returns_every_key_once_across_calls() {
        let mut c = conv(None);
        for i in 0..57 {
            c.say(&cmd(&["SET", &format!("key:{i}"), "v"]));
        }
        c.say(&cmd(&["SET", "other", "v"]));
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_owned();
        let mut calls = 0;
        loop {
            calls += 1;
            let raw = c.say(&cmd(&["SCAN", &cursor, "MATCH", "key:*", "COUNT", "5"]));
            let lines: Vec<&str> = raw.split("\r\n").collect();
            assert_eq!(lines[0], "*2");
            cursor = lines[2].to_owned();
            for k in lines[4..].iter().filter(|l| l.starts_with("key:")) {
                assert!(seen.insert(k.to_string()), "{k} twice");
            }
            if cursor == "0" {
                break;
            }
            assert!(calls < 100, "the scan ends");
        }
        assert_eq!(seen.len(), 57);
        assert!(calls >= 11, "COUNT bounds each call ({calls} calls)");
        assert_eq!(c.say(&cmd(&["SCAN", "x"])), "-ERR invalid cursor\r\n");
        assert_eq!(
            c.say(&cmd(&["SCAN", "0", "TYPE", "hash", "COUNT", "1000"])),
            "*2\r\n$1\r\n0\r\n*0\r\n"
        );
        assert_eq!(c.say(&cmd(&["TOUCH", "other", "nope"])), ":1\r\n");
        assert_eq!(
            c.say(&cmd(&["OBJECT", "ENCODING", "other"])),
            "$6\r\nembstr\r\n"
        );
        assert_eq!(c.say(&cmd(&["OBJECT", "ENCODING", "nope"])), "$-1\r\n");
    }

    #[test]
    fn commands_are_sorted_for_the_binary_search() {
        assert!(COMMANDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn lcs_as_redis_documents_it() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        say(&mut c, &["MSET", "key1", "ohmytext", "key2", "mynewtext"]);
        assert_eq!(say(&mut c, &["LCS", "key1", "key2"]), "$6\r\nmytext\r\n");
        assert_eq!(say(&mut c, &["LCS", "key1", "key2", "LEN"]), ":6\r\n");
        // From Redis's documentation: matches [4,7]~[5,8] and [2,3]~[0,1], len 6.
        assert_eq!(
            say(&mut c, &["LCS", "key1", "key2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"]),
            "*4\r\n$7\r\nmatches\r\n*1\r\n*3\r\n*2\r\n:4\r\n:7\r\n*2\r\n:5\r\n:8\r\n:4\r\n$3\r\nlen\r\n:6\r\n"
        );
        assert!(say(&mut c, &["LCS", "key1", "key2", "IDX"]).contains(
            "*2\r\n*2\r\n:4\r\n:7\r\n*2\r\n:5\r\n:8\r\n*2\r\n*2\r\n:2\r\n:3\r\n*2\r\n:0\r\n:1\r\n"
        ));
        assert_eq!(say(&mut c, &["LCS", "key1", "nokey"]), "$0\r\n\r\n");
    }

    #[test]
    fn hello_switches_to_resp3_nulls_and_maps() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert!(say(&mut c, &["HELLO", "2"]).starts_with("*14\r\n$6\r\nserver\r\n"));
        assert_eq!(
            say(&mut c, &["HELLO", "4"]),
            "-NOPROTO unsupported protocol version\r\n"
        );
        assert!(say(&mut c, &["HELLO", "3"]).starts_with("%7\r\n"));
        assert_eq!(say(&mut c, &["GET", "nope"]), "_\r\n");
        say(&mut c, &["HSET", "h", "f", "v"]);
        assert_eq!(
            say(&mut c, &["HGETALL", "h"]),
            "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        say(&mut c, &["HELLO", "2"]);
        assert_eq!(say(&mut c, &["GET", "nope"]), "$-1\r\n");
    }

    #[test]
    fn hashes() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["HSET", "h", "a", "1", "b", "2"]), ":2\r\n");
        assert_eq!(say(&mut c, &["HSET", "h", "a", "10"]), ":0\r\n");
        assert_eq!(say(&mut c, &["HGET", "h", "a"]), "$2\r\n10\r\n");
        assert_eq!(say(&mut c, &["HGET", "h", "zz"]), "$-1\r\n");
        assert_eq!(say(&mut c, &["HLEN", "h"]), ":2\r\n");
        assert_eq!(
            say(&mut c, &["HGETALL", "h"]),
            "*4\r\n$1\r\na\r\n$2\r\n10\r\n$1\r\nb\r\n$1\r\n2\r\n"
        );
        assert_eq!(
            say(&mut c, &["HMGET", "h", "b", "x"]),
            "*2\r\n$1\r\n2\r\n$-1\r\n"
        );
        assert_eq!(say(&mut c, &["HSETNX", "h", "b", "9"]), ":0\r\n");
        assert_eq!(say(&mut c, &["HINCRBY", "h", "a", "5"]), ":15\r\n");
        assert_eq!(
            say(&mut c, &["HINCRBYFLOAT", "h", "a", "0.5"]),
            "$4\r\n15.5\r\n"
        );
        assert_eq!(
            say(&mut c, &["HINCRBY", "h", "a", "1"]),
            "-ERR hash value is not an integer\r\n"
        );
        assert_eq!(say(&mut c, &["HSTRLEN", "h", "a"]), ":4\r\n");
        assert_eq!(say(&mut c, &["HEXISTS", "h", "b"]), ":1\r\n");
        assert_eq!(say(&mut c, &["TYPE", "h"]), "+hash\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "h"]), ":1\r\n");
        assert_eq!(say(&mut c, &["DBSIZE"]), ":1\r\n", "fields are not keys");
        assert_eq!(
            say(&mut c, &["GET", "h"]),
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        );
        say(&mut c, &["SET", "s", "v"]);
        assert_eq!(
            say(&mut c, &["HSET", "s", "f", "v"]),
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        );
        assert_eq!(say(&mut c, &["MGET", "h", "s"]), "*2\r\n$-1\r\n$1\r\nv\r\n");
        assert_eq!(say(&mut c, &["HDEL", "h", "a", "nope"]), ":1\r\n");
        assert_eq!(say(&mut c, &["HDEL", "h", "b"]), ":1\r\n");
        assert_eq!(
            say(&mut c, &["EXISTS", "h"]),
            ":0\r\n",
            "the hash goes with its last field"
        );
        // SET over a hash replaces it; DEL of a hash drops its fields.
        say(&mut c, &["HSET", "h2", "f", "v"]);
        assert_eq!(say(&mut c, &["SET", "h2", "str"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "h2"]), "$3\r\nstr\r\n");
        assert_eq!(
            say(&mut c, &["HSET", "h2", "f", "v"]),
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        );
        assert_eq!(say(&mut c, &["DEL", "h2"]), ":1\r\n");
        assert_eq!(say(&mut c, &["HSET", "h2", "g", "w"]), ":1\r\n");
        assert_eq!(
            say(&mut c, &["HGETALL", "h2"]),
            "*2\r\n$1\r\ng\r\n$1\r\nw\r\n",
            "the old field is gone"
        );
        assert_eq!(say(&mut c, &["DEL", "h2"]), ":1\r\n");
        assert_eq!(say(&mut c, &["HLEN", "h2"]), ":0\r\n");
        assert_eq!(say(&mut c, &["HRANDFIELD", "nope"]), "$-1\r\n");
        say(&mut c, &["HSET", "r", "x", "1", "y", "2", "z", "3"]);
        assert!(
            say(&mut c, &["HRANDFIELD", "r", "5"]).starts_with("*3\r\n"),
            "at most every field"
        );
        assert!(say(&mut c, &["HRANDFIELD", "r", "-5", "WITHVALUES"]).starts_with("*10\r\n"));
        assert_eq!(say(&mut c, &["HELLO", "3"]).chars().next(), Some('%'));
        assert!(say(&mut c, &["HRANDFIELD", "r", "-5", "WITHVALUES"]).starts_with("*5\r\n*2\r\n"));
        assert!(say(&mut c, &["HELLO", "2"]).starts_with('*'));
        assert_eq!(
            say(&mut c, &["HSCAN", "r", "0", "MATCH", "y"]),
            "*2\r\n$1\r\n0\r\n*2\r\n$1\r\ny\r\n$1\r\n2\r\n"
        );
        assert_eq!(say(&mut c, &["EXPIRE", "r", "100"]), ":1\r\n");
        assert_eq!(say(&mut c, &["TTL", "r"]), ":100\r\n");
        // Hashes move like strings, deadline included.
        assert_eq!(say(&mut c, &["RENAME", "r", "r2"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["HGET", "r2", "y"]), "$1\r\n2\r\n");
        assert_eq!(say(&mut c, &["TTL", "r2"]), ":100\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "r"]), ":0\r\n");
        assert_eq!(say(&mut c, &["COPY", "r2", "r3"]), ":1\r\n");
        assert_eq!(say(&mut c, &["HLEN", "r3"]), ":3\r\n");
        assert_eq!(say(&mut c, &["MOVE", "r3", "4"]), ":1\r\n");
        assert_eq!(say(&mut c, &["HLEN", "r3"]), ":0\r\n");
        // SWAPDB swaps every key, hashes and deadlines with them.
        assert_eq!(say(&mut c, &["SWAPDB", "0", "4"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["HLEN", "r3"]), ":3\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "r2"]), ":0\r\n");
        say(&mut c, &["SELECT", "4"]);
        assert_eq!(say(&mut c, &["HGET", "r2", "x"]), "$1\r\n1\r\n");
        assert_eq!(say(&mut c, &["TTL", "r2"]), ":100\r\n");
        assert_eq!(
            say(&mut c, &["SWAPDB", "4", "x"]),
            "-ERR invalid first DB index\r\n"
        );
    }

    #[test]
    fn expiry_commands() {
        let mut c = conv(None);
        let say = |c: &mut Conversation<KvService>, a: &[&str]| c.say(&cmd(a));
        assert_eq!(say(&mut c, &["SET", "k", "v", "EX", "100"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TTL", "k"]), ":100\r\n");
        let pttl: i64 = say(&mut c, &["PTTL", "k"])[1..].trim().parse().unwrap();
        assert!((99_000..=100_000).contains(&pttl), "{pttl}");
        assert_eq!(say(&mut c, &["TTL", "missing"]), ":-2\r\n");
        assert_eq!(say(&mut c, &["SET", "p", "v"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TTL", "p"]), ":-1\r\n");
        assert_eq!(
            say(&mut c, &["EXPIRE", "p", "50", "XX"]),
            ":0\r\n",
            "XX needs a deadline"
        );
        assert_eq!(
            say(&mut c, &["EXPIRE", "p", "50", "GT"]),
            ":0\r\n",
            "none is infinite"
        );
        assert_eq!(say(&mut c, &["EXPIRE", "p", "50", "LT"]), ":1\r\n");
        assert_eq!(say(&mut c, &["EXPIRE", "p", "40", "NX"]), ":0\r\n");
        assert_eq!(say(&mut c, &["EXPIRE", "p", "60", "GT"]), ":1\r\n");
        assert_eq!(say(&mut c, &["TTL", "p"]), ":60\r\n");
        assert_eq!(say(&mut c, &["PERSIST", "p"]), ":1\r\n");
        assert_eq!(say(&mut c, &["PERSIST", "p"]), ":0\r\n");
        assert_eq!(
            say(&mut c, &["EXPIRE", "p", "1", "NX", "XX"]),
            "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
        );
        assert_eq!(
            say(&mut c, &["EXPIRE", "p", "1", "GT", "LT"]),
            "-ERR GT and LT options at the same time are not compatible\r\n"
        );
        assert_eq!(
            say(&mut c, &["EXPIRE", "p", "1", "FOO"]),
            "-ERR Unsupported option FOO\r\n"
        );
        assert_eq!(
            say(&mut c, &["SET", "k", "v", "EX", "0"]),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(
            say(&mut c, &["SETEX", "k", "-1", "v"]),
            "-ERR invalid expire time in 'setex' command\r\n"
        );
        assert_eq!(
            say(&mut c, &["EXPIRE", "k", "9223372036854775807"]),
            "-ERR invalid expire time in 'expire' command\r\n"
        );
        assert_eq!(
            say(&mut c, &["SET", "k", "v", "EX", "5", "KEEPTTL"]),
            "-ERR syntax error\r\n"
        );
        // SET without KEEPTTL clears the deadline; KEEPTTL keeps it.
        assert_eq!(say(&mut c, &["SET", "k", "v2", "KEEPTTL"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TTL", "k"]), ":100\r\n");
        assert_eq!(say(&mut c, &["SET", "k", "v3"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TTL", "k"]), ":-1\r\n");
        // A past deadline deletes at once; a short one expires by itself.
        assert_eq!(say(&mut c, &["EXPIRE", "k", "-1"]), ":1\r\n");
        assert_eq!(say(&mut c, &["EXISTS", "k"]), ":0\r\n");
        assert_eq!(say(&mut c, &["PSETEX", "s", "20", "v"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["GET", "s"]), "$1\r\nv\r\n");
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(say(&mut c, &["GET", "s"]), "$-1\r\n");
        assert_eq!(say(&mut c, &["DBSIZE"]), ":1\r\n", "only p is left");
        // RENAME carries the deadline; DEL drops it; GETEX changes it.
        assert_eq!(say(&mut c, &["SETEX", "a", "100", "x"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["RENAME", "a", "b"]), "+OK\r\n");
        assert_eq!(say(&mut c, &["TTL", "b"]), ":100\r\n");
        assert_eq!(say(&mut c, &["GETEX", "b", "PERSIST"]), "$1\r\nx\r\n");
        assert_eq!(say(&mut c, &["TTL", "b"]), ":-1\r\n");
        assert_eq!(say(&mut c, &["GETEX", "b", "EX", "7"]), "$1\r\nx\r\n");
        assert_eq!(say(&mut c, &["TTL", "b"]), ":7\r\n");
        let at: i64 = say(&mut c, &["EXPIRETIME", "b"])[1..]
            .trim()
            .parse()
            .unwrap();
        assert!(at > 1_700_000_000, "{at}");
        assert_eq!(say(&mut c, &["DEL", "b"]), ":1\r\n");
        assert_eq!(say(&mut c, &["SET", "b", "y"]), "+OK\r\n");
        assert_eq!(
            say(&mut c, &["TTL", "b"]),
            ":-1\r\n",
            "a deleted key's deadline is gone"
        );
        assert_eq!(say(&mut c, &["TYPE", "b"]), "+string\r\n");
        assert_eq!(say(&mut c, &["TYPE", "zz"]), "+none\r\n");
        assert!(say(&mut c, &["INFO", "keyspace"]).contains("db0:keys=2,expires=0"));
        assert_eq!(say(&mut c, &["EXPIRE", "b", "100"]), ":1\r\n");
        assert!(say(&mut c, &["INFO", "keyspace"]).contains("db0:keys=2,expires=1"));
        let stats = say(&mut c, &["INFO", "commandstats"]);
        assert!(stats.contains("cmdstat_ttl:calls="), "{stats}");
        assert!(stats.contains("cmdstat_set:calls="), "{stats}");
        assert!(
            !say(&mut c, &["INFO"]).contains("cmdstat_"),
            "not a default section"
        );
        assert!(say(&mut c, &["INFO", "all"]).contains("rejected_calls="));
        assert_eq!(
            say(&mut c, &["KEYS", "*"]).matches("$1").count(),
            2,
            "deadline records are not keys"
        );
    }

    #[test]
    fn string_commands() {
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["SET", "k", "v1", "NX"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["SET", "k", "v2", "NX"])), "$-1\r\n");
        assert_eq!(
            c.say(&cmd(&["SET", "k", "v3", "XX", "GET"])),
            "$2\r\nv1\r\n"
        );
        assert_eq!(c.say(&cmd(&["SET", "nope", "x", "XX"])), "$-1\r\n");
        assert_eq!(
            c.say(&cmd(&["SET", "k", "x", "NX", "XX"])),
            "-ERR syntax error\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["SET", "k", "x", "EX", "10", "NX"])),
            "$-1\r\n",
            "an expiry is an option like the others (NX: k exists, nothing set)"
        );
        assert_eq!(c.say(&cmd(&["GETSET", "k", "v4"])), "$2\r\nv3\r\n");
        assert_eq!(c.say(&cmd(&["SETNX", "k", "v5"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["SETNX", "n", "v5"])), ":1\r\n");
        assert_eq!(c.say(&cmd(&["STRLEN", "k"])), ":2\r\n");
        assert_eq!(c.say(&cmd(&["STRLEN", "missing"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["APPEND", "k", "-more"])), ":7\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$7\r\nv4-more\r\n");
        assert_eq!(c.say(&cmd(&["GETRANGE", "k", "0", "1"])), "$2\r\nv4\r\n");
        assert_eq!(
            c.say(&cmd(&["GETRANGE", "k", "-4", "-1"])),
            "$4\r\nmore\r\n"
        );
        assert_eq!(c.say(&cmd(&["GETRANGE", "k", "5", "2"])), "$0\r\n\r\n");
        assert_eq!(c.say(&cmd(&["GETDEL", "k"])), "$7\r\nv4-more\r\n");
        assert_eq!(c.say(&cmd(&["GET", "k"])), "$-1\r\n");
        assert_eq!(c.say(&cmd(&["MSETNX", "a", "1", "n", "2"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["MSETNX", "a", "1", "b", "2"])), ":1\r\n");
        assert_eq!(c.say(&cmd(&["GET", "b"])), "$1\r\n2\r\n");
    }

    #[test]
    fn keyspace_commands() {
        let mut c = conv(None);
        for k in ["foo_a", "foo_b", "foo_c", "key_x", "key_y"] {
            assert_eq!(c.say(&cmd(&["SET", k, "v"])), "+OK\r\n");
        }
        let keys = c.say(&cmd(&["KEYS", "foo*"]));
        assert!(keys.starts_with("*3\r\n"), "{keys}");
        assert!(c.say(&cmd(&["KEYS", "key_[xy]"])).starts_with("*2\r\n"));
        assert!(c.say(&cmd(&["KEYS", "key_[^x]"])).starts_with("*1\r\n"));
        assert_eq!(c.say(&cmd(&["RENAME", "foo_a", "bar"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "bar"])), "$1\r\nv\r\n");
        assert_eq!(c.say(&cmd(&["EXISTS", "foo_a"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["RENAMENX", "bar", "foo_b"])), ":0\r\n");
        assert_eq!(
            c.say(&cmd(&["RENAME", "nope", "x"])),
            "-ERR no such key\r\n"
        );
        assert!(c.say(&cmd(&["RANDOMKEY"])).starts_with('$'));
        assert!(glob(b"a[b-d]e", b"ACE"));
        assert!(!glob_case(b"a[b-d]e", b"ACE"));
        assert!(glob_case(b"a\\*", b"a*"));
        assert!(!glob_case(b"a\\*", b"ab"));
        assert!(glob_case(b"*", b""));
        assert!(glob_case(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_case(b"a*b*c", b"aXXbYY"));
        // A pattern that backtracks exponentially in a naive matcher: must answer at once.
        let evil = b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!glob_case(evil, &[b'a'; 60]));
    }

    #[test]
    fn info_sections() {
        let mut c = conv(None);
        let all = c.say(&cmd(&["INFO"]));
        for field in [
            "redis_version:",
            "used_memory:",
            "used_cpu_user:",
            "aof_enabled:",
            "# Keyspace",
        ] {
            assert!(all.contains(field), "{field} in {all}");
        }
        let cpu = c.say(&cmd(&["INFO", "cpu"]));
        assert!(
            cpu.contains("# CPU") && cpu.contains("used_cpu_sys:"),
            "{cpu}"
        );
        assert!(!cpu.contains("# Server"), "only the asked section: {cpu}");
        let none = c.say(&cmd(&["INFO", "nosuchsection"]));
        assert_eq!(none, "$0\r\n\r\n");
    }

    #[test]
    fn a_db0_key_cannot_pose_as_another_databases() {
        let mut c = conv(None);
        // SET "\xffpst:db\x05foo" leaked, in database 0, as raw bytes.
        let mut bytes = b"*3\r\n$3\r\nSET\r\n$11\r\n".to_vec();
        bytes.extend_from_slice(b"\xffpst:db\x05foo\r\n$6\r\nleaked\r\n");
        assert_eq!(c.send(&bytes).0, b"+OK\r\n");
        assert_eq!(c.say(&cmd(&["SELECT", "5"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["GET", "foo"])), "$-1\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":0\r\n");
        assert_eq!(c.say(&cmd(&["SELECT", "0"])), "+OK\r\n");
        assert_eq!(c.say(&cmd(&["DBSIZE"])), ":1\r\n");
    }

    #[test]
    fn randomkey_varies_and_config_set_is_bounded() {
        let mut c = conv(None);
        for i in 0..8 {
            c.say(&cmd(&["SET", &format!("k{i}"), "v"]));
        }
        let seen: std::collections::HashSet<String> =
            (0..64).map(|_| c.say(&cmd(&["RANDOMKEY"]))).collect();
        assert!(seen.len() > 2, "RANDOMKEY gave {seen:?}");
        assert!(c
            .say(&cmd(&["CONFIG", "SET", "x-max-listpack-entries", "1"]))
            .starts_with("-ERR Unknown option"));
        assert!(c
            .say(&cmd(&["CONFIG", "SET", "hz", &"9".repeat(100)]))
            .starts_with("-ERR Invalid argument"));
    }

    #[test]
    fn overflow_and_auth_arity_texts() {
        let mut c = conv(None);
        assert_eq!(c.say(&cmd(&["SET", "n", "9223372036854775807"])), "+OK\r\n");
        assert_eq!(
            c.say(&cmd(&["INCR", "n"])),
            "-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["AUTH"])),
            "-ERR wrong number of arguments for 'auth' command\r\n"
        );
        assert_eq!(
            c.say(&cmd(&["AUTH", "a", "b", "c"])),
            "-ERR syntax error\r\n"
        );
    }
}
