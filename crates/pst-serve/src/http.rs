//! `pst httpd`: phttpd parity. POST bodies are persisted where they landed (`--store wal`: a
//! WAL record naming the body's extents; `--store kv`: `POST /key` stores the body under `key`,
//! `GET /key` sends it from the pool without copying). Other GETs return a fixed 64-byte body
//! (the RPC workload). Replies leave only after the batch's group commit.

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pst_http::{write_head_for, Event, FrameError, Limits, Method, Request, RequestFramer};

use crate::metrics::Metrics;
use crate::protocol::{Io, Piece, Protocol};
use crate::store::PoolStore;

/// What POST bodies go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Not stored (acknowledged only).
    None,
    /// Appended to the write-ahead log (oldest records dropped when the log fills).
    Wal,
    /// Key-value: `POST /key` stores, `GET /key` reads, `DELETE /key` deletes.
    Kv,
}

impl std::str::FromStr for StoreMode {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreMode, String> {
        match s {
            "none" => Ok(StoreMode::None),
            "wal" => Ok(StoreMode::Wal),
            "kv" => Ok(StoreMode::Kv),
            _ => Err(format!("unknown store {s:?} (expected none, wal or kv)")),
        }
    }
}

impl std::fmt::Display for StoreMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreMode::None => "none",
            StoreMode::Wal => "wal",
            StoreMode::Kv => "kv",
        })
    }
}

/// The fixed body of the RPC workload: 64 bytes.
pub const RPC_BODY: &[u8; 64] =
    b"pst rpc reply: a fixed 64-byte body for the RPC benchmark.....\r\n";

/// Most requests a client may pipeline behind a parked long poll (or `--max-body` bytes of
/// bodies); beyond, the poll is answered at once so that nothing stays pinned behind it.
pub const MAX_BEHIND_POLL: usize = 16;

/// Most records one `GET /log` returns (`max` is capped to it).
pub const LOG_MAX_RECORDS: usize = 10_000;
/// Payload bytes after which a `GET /log` reply stops adding records (at least one record is
/// always returned).
pub const LOG_MAX_BYTES: u64 = 8 << 20;
/// Longest long poll (`wait`, milliseconds, is capped to it): below the slow-request timeout.
pub const LOG_MAX_WAIT_MS: u64 = 25_000;
/// A chunked body split into more chunks than this is gathered into fresh pool buffers when
/// stored (a few long extents instead of one per tiny chunk).
pub const GATHER_CHUNKS: usize = 256;

/// The HTTP service.
#[derive(Debug)]
pub struct HttpService {
    mode: StoreMode,
    limits: Limits,
    token: Option<String>,
    metrics: Arc<Metrics>,
}

/// A `GET /log` waiting for records (a long poll).
#[derive(Debug, Clone)]
struct LogPoll {
    query: LogQuery,
    deadline: Instant,
    keep_alive: Ka,
    head: bool,
}

impl LogPoll {
    /// The request method's index for the metrics.
    fn method(&self) -> usize {
        method_index(if self.head { Method::Head } else { Method::Get })
    }
}

/// Per-connection state: the framer, and a long poll with the requests queued behind it.
#[derive(Debug)]
pub struct HttpConn {
    framer: RequestFramer,
    parked: Option<LogPoll>,
    /// Requests (pipelined) framed while parked, handled in order once the poll ends.
    queued: VecDeque<Event>,
    /// Events framed from one chunk; empty between calls, kept for its memory.
    events: Vec<Event>,
}

/// `GET /log` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogQuery {
    from: u64,
    max: usize,
    wait_ms: u64,
}

/// How a response ends its connection: kept alive or not, and whether the request was
/// HTTP/1.0 (which needs `Connection: keep-alive` said).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ka {
    keep: bool,
    http10: bool,
    /// The request was a HEAD: the response says the body's length but carries no body.
    head: bool,
}

impl Ka {
    const CLOSE: Ka = Ka {
        keep: false,
        http10: false,
        head: false,
    };
}

/// The value of an extra header line ([`HttpService::respond_with`]).
enum HeaderValue<'a> {
    Text(&'a str),
    Num(u64),
}

fn write_head(out: &mut Vec<u8>, status: u16, len: usize, ka: Ka) {
    write_head_for(out, status, len, ka.keep, ka.http10);
}

/// What handling one request did.
enum Handled {
    /// Answered with this status.
    Status(u16),
    /// Parked (a long poll); answered later.
    Parked(LogPoll),
}

fn method_index(m: Method) -> usize {
    match m {
        Method::Get => 0,
        Method::Head => 1,
        Method::Post => 2,
        Method::Put => 3,
        Method::Delete => 4,
        Method::Other => 5,
    }
}

/// The value of `name` in the request target's query string.
fn query<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_u64(path: &str, name: &str) -> Result<Option<u64>, ()> {
    query(path, name)
        .map(|v| v.parse().map_err(|_| ()))
        .transpose()
}

impl HttpService {
    /// A service storing POST bodies per `mode`; writes need `Authorization: Bearer <token>`
    /// when a token is set.
    pub fn new(mode: StoreMode, max_body: u64, token: Option<String>) -> HttpService {
        HttpService {
            mode,
            limits: Limits {
                max_body,
                ..Limits::default()
            },
            token,
            metrics: Arc::default(),
        }
    }

    fn respond(reply: &mut Vec<Piece>, status: u16, body: &[u8], keep_alive: Ka) -> Handled {
        let mut out = crate::protocol::reply_buf();
        out.reserve(96 + body.len());
        write_head(&mut out, status, body.len(), keep_alive);
        if !keep_alive.head {
            out.extend_from_slice(body);
        }
        reply.push(Piece::Bytes(out));
        Handled::Status(status)
    }

    /// A response with one extra header line, `name: value` (written straight into the reply
    /// bytes; `itoa` for a number, as every write answers with one).
    fn respond_with(
        reply: &mut Vec<Piece>,
        status: u16,
        (name, value): (&str, HeaderValue<'_>),
        body: &[u8],
        keep_alive: Ka,
    ) -> Handled {
        let mut out = crate::protocol::reply_buf();
        out.reserve(160 + body.len());
        write_head(&mut out, status, body.len(), keep_alive);
        out.truncate(out.len() - 2); // before the blank line
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        match value {
            HeaderValue::Text(t) => out.extend_from_slice(t.as_bytes()),
            HeaderValue::Num(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !keep_alive.head {
            out.extend_from_slice(body);
        }
        reply.push(Piece::Bytes(out));
        Handled::Status(status)
    }

    /// 405 with the methods the resource takes (`Allow`, RFC 9110 §15.5.6).
    fn not_allowed(reply: &mut Vec<Piece>, allow: &'static str, body: &[u8], ka: Ka) -> Handled {
        Self::respond_with(reply, 405, ("Allow", HeaderValue::Text(allow)), body, ka)
    }

    fn key(req: &Request) -> Option<&str> {
        let k = req
            .path
            .split('?')
            .next()
            .unwrap_or("")
            .trim_start_matches('/');
        (!k.is_empty()).then_some(k)
    }

    fn route(req: &Request) -> &str {
        req.path.split('?').next().unwrap_or("")
    }

    fn handle(
        &self,
        req: &Request,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> Handled {
        let ka = Ka {
            keep: req.keep_alive,
            http10: req.http10,
            head: req.method == Method::Head,
        };
        let write = matches!(req.method, Method::Post | Method::Put | Method::Delete);
        if write {
            if let Some(t) = &self.token {
                if req.bearer.as_deref() != Some(t.as_str()) {
                    return Self::respond(reply, 401, b"bearer token required for writes\n", ka);
                }
            }
        }
        let route = Self::route(req);
        if route == "/metrics" {
            return match req.method {
                Method::Get | Method::Head => {
                    let stats = store.as_ref().map(|s| s.stats());
                    let buf_size = store
                        .as_ref()
                        .map_or(0, |s| pst_pool::Media::header(s.media()).geometry.buf_size);
                    let text = self.metrics.prometheus(stats.as_ref(), buf_size);
                    let ct = HeaderValue::Text("text/plain; version=0.0.4; charset=utf-8");
                    Self::respond_with(reply, 200, ("Content-Type", ct), text.as_bytes(), ka)
                }
                _ => Self::not_allowed(reply, "GET, HEAD", b"/metrics is read-only\n", ka),
            };
        }
        if route == "/log" && self.mode == StoreMode::Wal {
            let Some(store) = store else {
                return Self::respond(reply, 503, b"no store\n", ka);
            };
            return match req.method {
                Method::Get | Method::Head => {
                    let (Ok(from), Ok(max), Ok(wait)) = (
                        query_u64(&req.path, "from"),
                        query_u64(&req.path, "max"),
                        query_u64(&req.path, "wait"),
                    ) else {
                        return Self::respond(
                            reply,
                            400,
                            b"from, max and wait must be unsigned integers\n",
                            ka,
                        );
                    };
                    let q = LogQuery {
                        from: from.unwrap_or(0),
                        max: max.unwrap_or(1000).clamp(1, LOG_MAX_RECORDS as u64) as usize,
                        wait_ms: wait.unwrap_or(0).min(LOG_MAX_WAIT_MS),
                    };
                    let poll = LogPoll {
                        query: q,
                        deadline: Instant::now() + Duration::from_millis(q.wait_ms),
                        keep_alive: ka,
                        head: req.method == Method::Head,
                    };
                    self.log_read(&poll, io, store, reply)
                }
                Method::Delete => match query_u64(&req.path, "before") {
                    Ok(Some(before)) => {
                        store.truncate_before(before);
                        let first = first_seq(store);
                        Self::respond_with(
                            reply,
                            200,
                            ("Pst-First-Seq", HeaderValue::Num(first)),
                            b"",
                            ka,
                        )
                    }
                    _ => Self::respond(reply, 400, b"DELETE /log needs ?before=SEQ\n", ka),
                },
                _ => Self::not_allowed(
                    reply,
                    "GET, HEAD, DELETE",
                    b"method not allowed on /log\n",
                    ka,
                ),
            };
        }
        match (req.method, self.mode, store) {
            (Method::Get | Method::Head, StoreMode::Kv, Some(store))
                if Self::key(req).is_some() =>
            {
                let key = Self::key(req).expect("checked");
                let Some(v) = store.get(key.as_bytes()) else {
                    return Self::respond(reply, 404, b"not found\n", ka);
                };
                if !store.verify(&v) {
                    tracing::error!(
                        key,
                        seq = v.seq,
                        "stored value fails its checksum; not served"
                    );
                    return Self::respond(reply, 500, b"stored value is corrupt\n", ka);
                }
                let mut head = crate::protocol::reply_buf();
                write_head(&mut head, 200, v.len as usize, ka);
                if req.method == Method::Head {
                    reply.push(Piece::Bytes(head));
                    return Handled::Status(200);
                }
                match io.zero_copy(v.extents) {
                    Some(exts) => {
                        reply.push(Piece::Bytes(head));
                        reply.extend(exts.into_iter().map(Piece::Ext));
                        Handled::Status(200)
                    }
                    None => {
                        let mut body = Vec::new();
                        match store.read_value(key.as_bytes(), &mut body) {
                            Ok(true) => {
                                head.extend_from_slice(&body);
                                reply.push(Piece::Bytes(head));
                                Handled::Status(200)
                            }
                            _ => Self::respond(reply, 500, b"stored value is corrupt\n", ka),
                        }
                    }
                }
            }
            (Method::Get, _, _) => Self::respond(reply, 200, RPC_BODY, ka),
            (Method::Head, _, _) => {
                let mut head = crate::protocol::reply_buf();
                write_head(&mut head, 200, RPC_BODY.len(), ka);
                reply.push(Piece::Bytes(head));
                Handled::Status(200)
            }
            (Method::Post | Method::Put, StoreMode::None, _) => Self::respond(reply, 200, b"", ka),
            (Method::Post | Method::Put, mode, Some(store)) => {
                let key = if mode == StoreMode::Kv {
                    match Self::key(req) {
                        Some(k) => Some(k.to_owned()),
                        None => return Self::respond(reply, 400, b"POST /<key> needs a key\n", ka),
                    }
                } else {
                    None
                };
                // Full: refuse the write, keep serving (the buffers left keep receiving).
                let full = |reply: &mut Vec<Piece>| {
                    Self::respond(reply, 507, b"insufficient storage: the store is full\n", ka)
                };
                if !io.has_room(req.body_len()) {
                    return full(reply);
                }
                let Some(exts) = body_extents(req, io) else {
                    return full(reply);
                };
                let r = match key {
                    Some(k) => store.put(k.as_bytes(), exts),
                    None => store.append(exts),
                };
                match r {
                    Ok(seq) => Self::respond_with(
                        reply,
                        if mode == StoreMode::Kv { 201 } else { 200 },
                        ("Pst-Seq", HeaderValue::Num(seq)),
                        b"",
                        ka,
                    ),
                    Err(pst_store::StoreError::LogFull) => full(reply),
                    Err(e @ pst_store::StoreError::TooLarge(_)) => {
                        Self::respond(reply, 413, format!("{e}\n").as_bytes(), ka)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store refused a write");
                        Self::respond(reply, 503, format!("{e}\n").as_bytes(), ka)
                    }
                }
            }
            (Method::Delete, StoreMode::Kv, Some(store)) => {
                match Self::key(req).map(|k| store.delete(k.as_bytes())) {
                    Some(Ok(Some(_))) => Self::respond(reply, 200, b"", ka),
                    Some(Ok(None)) => Self::respond(reply, 404, b"not found\n", ka),
                    Some(Err(e)) => Self::respond(reply, 503, format!("{e}\n").as_bytes(), ka),
                    None => Self::respond(reply, 400, b"DELETE /<key> needs a key\n", ka),
                }
            }
            (_, mode, _) => {
                let allow = match mode {
                    StoreMode::Kv => "GET, HEAD, POST, PUT, DELETE",
                    _ => "GET, HEAD, POST, PUT",
                };
                Self::not_allowed(reply, allow, b"method not allowed\n", ka)
            }
        }
    }

    /// Answer a `GET /log` from the store, or park it when it may wait and nothing is there.
    ///
    /// Reply body: for each record, `SEQ LEN\r\n`, the LEN payload bytes (sent from the pool
    /// without copying where the record's buffers belong to this worker), then `\r\n`.
    /// Headers: `Pst-Records` (how many), `Pst-Next-Seq` (the `from` of the next read),
    /// `Pst-First-Seq` (the oldest record still held: a consumer whose `from` is below it has
    /// missed records dropped by retention or truncation).
    fn log_read(
        &self,
        poll: &LogPoll,
        io: &mut dyn Io,
        store: &mut PoolStore,
        reply: &mut Vec<Piece>,
    ) -> Handled {
        let q = poll.query;
        let mut picked = Vec::new();
        let mut bytes = 0u64;
        for r in store.read_from(q.from) {
            if picked.len() >= q.max || (bytes >= LOG_MAX_BYTES && !picked.is_empty()) {
                break;
            }
            if r.kind != pst_store::RecordKind::Append {
                continue;
            }
            bytes += r.len as u64;
            picked.push(r.value());
        }
        if picked.is_empty() && Instant::now() < poll.deadline {
            return Handled::Parked(poll.clone());
        }
        let first = first_seq(store);
        let next = picked.last().map_or(q.from.max(first), |v| v.seq + 1);
        let mut body_len = 0usize;
        let mut parts: Vec<Piece> = Vec::with_capacity(picked.len() * 3);
        let mut text = Vec::new();
        for v in &picked {
            if !store.verify(v) {
                tracing::error!(seq = v.seq, "log record fails its checksum; not served");
                release_pieces(io, parts);
                return Self::respond(reply, 500, b"a log record is corrupt\n", poll.keep_alive);
            }
            let line = format!("{} {}\r\n", v.seq, v.len);
            body_len += line.len() + v.len as usize + 2;
            if poll.head {
                continue;
            }
            text.extend_from_slice(line.as_bytes());
            match io.zero_copy(v.extents) {
                Some(exts) => {
                    parts.push(Piece::Bytes(std::mem::take(&mut text)));
                    parts.extend(exts.into_iter().map(Piece::Ext));
                    text.extend_from_slice(b"\r\n");
                }
                None => {
                    if store.read_payload(v, &mut text).is_err() {
                        release_pieces(io, parts);
                        return Self::respond(
                            reply,
                            500,
                            b"a log record is corrupt\n",
                            poll.keep_alive,
                        );
                    }
                    text.extend_from_slice(b"\r\n");
                }
            }
        }
        if !text.is_empty() {
            parts.push(Piece::Bytes(text));
        }
        let mut head = Vec::with_capacity(256);
        write_head(&mut head, 200, body_len, poll.keep_alive);
        head.truncate(head.len() - 2);
        let _ = write!(
            head,
            "Content-Type: application/octet-stream\r\nPst-Records: {}\r\nPst-Next-Seq: {next}\r\nPst-First-Seq: {first}\r\n\r\n",
            picked.len()
        );
        reply.push(Piece::Bytes(head));
        reply.extend(parts);
        Handled::Status(200)
    }

    /// Handle framed events in order; a long poll parks the connection and queues the rest.
    fn run_events(
        &self,
        c: &mut HttpConn,
        events: impl IntoIterator<Item = Event>,
        io: &mut dyn Io,
        mut store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        let mut events = events.into_iter();
        while let Some(ev) = events.next() {
            if c.parked.is_some() {
                c.queued.push_back(ev);
                c.queued.extend(events);
                let bytes: u64 = c
                    .queued
                    .iter()
                    .map(|e| match e {
                        Event::Request(r) => r.body.end - r.body.start,
                        _ => 0,
                    })
                    .sum();
                if c.queued.len() <= MAX_BEHIND_POLL && bytes <= self.limits.max_body {
                    return true;
                }
                // Too much pipelined behind a long poll (its bytes stay pinned until it
                // ends): answer the poll now with what there is, then the rest.
                let mut poll = c.parked.take().expect("parked");
                poll.deadline = Instant::now();
                let Some(st) = store.as_deref_mut() else {
                    return false;
                };
                if let Handled::Status(status) = self.log_read(&poll, io, st, reply) {
                    self.metrics.http_response(poll.method(), status);
                }
                if !poll.keep_alive.keep {
                    return false;
                }
                let queued: Vec<Event> = c.queued.drain(..).collect();
                return self.run_events(c, queued, io, store, reply);
            }
            match ev {
                Event::Continue => reply.push(Piece::Bytes(CONTINUE.to_vec())),
                Event::Request(req) => {
                    io.count_request();
                    let handled = self.handle(&req, io, store.as_deref_mut(), reply);
                    let (method, keep_alive) = (req.method, req.keep_alive);
                    c.framer.recycle(req);
                    match handled {
                        Handled::Status(status) => {
                            self.metrics.http_response(method_index(method), status);
                            if !keep_alive {
                                return false;
                            }
                        }
                        Handled::Parked(poll) => c.parked = Some(poll),
                    }
                }
                Event::Error(e) => {
                    let msg = format!("{e}\n");
                    Self::respond(reply, e.status(), msg.as_bytes(), Ka::CLOSE);
                    self.metrics.http_response(5, e.status());
                    if e == FrameError::TooLarge {
                        tracing::debug!("request body over the limit");
                    }
                    return false;
                }
            }
        }
        true
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The oldest record the log still holds (or the next sequence number when it is empty).
fn first_seq(store: &PoolStore) -> u64 {
    store
        .read_from(0)
        .next()
        .map_or(store.next_seq(), |r| r.seq)
}

/// Give back the buffer references of pieces that will not be sent.
fn release_pieces(io: &mut dyn Io, parts: Vec<Piece>) {
    for p in parts {
        if let Piece::Ext(e) = p {
            io.release(e);
        }
    }
}

/// The pool extents of a request's body content, one buffer reference each: zero copy on the
/// port; a body cut into many small chunks is gathered into fresh buffers instead (fewer,
/// fuller extents for the log record). `None` when the pool is out of buffers.
fn body_extents(req: &Request, io: &mut dyn Io) -> Option<pst_store::ValueExtents> {
    if req.chunks.len() > GATHER_CHUNKS {
        // One pass over the body as sent, then the chunk data cut out of it (a lookup per
        // chunk would scan the connection's kept buffers once per chunk).
        let mut span = Vec::with_capacity((req.body.end - req.body.start) as usize);
        io.gather(req.body.clone(), &mut span);
        let mut body = Vec::with_capacity(req.body_len() as usize);
        for r in req.data() {
            let (a, b) = (r.start - req.body.start, r.end - req.body.start);
            body.extend_from_slice(&span[a as usize..b as usize]);
        }
        return io.copy_in(&body);
    }
    let mut out = pst_store::ValueExtents::new();
    for r in req.data() {
        match io.extents(r) {
            Some(e) => out.extend(e),
            None => {
                for e in out {
                    io.release(e);
                }
                return None;
            }
        }
    }
    Some(out)
}

impl Protocol for HttpService {
    type Conn = HttpConn;

    fn conn(&self) -> HttpConn {
        HttpConn {
            framer: RequestFramer::new(self.limits),
            parked: None,
            queued: VecDeque::new(),
            events: Vec::new(),
        }
    }

    fn needed_from(&self, c: &HttpConn) -> u64 {
        c.queued
            .iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r.body.start),
                _ => None,
            })
            .fold(c.framer.needed_from(), u64::min)
    }

    fn on_chunk(
        &self,
        c: &mut HttpConn,
        chunk: Range<u64>,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        let mut events = std::mem::take(&mut c.events);
        let framer = &mut c.framer;
        io.with_bytes(chunk, &mut |b| framer.feed(b, &mut events));
        let open = self.run_events(c, events.drain(..), io, store, reply);
        // Kept for the next chunk, unless a flood of tiny pipelined requests grew it.
        if events.capacity() <= 64 {
            c.events = events;
        }
        open
    }

    fn parked(&self, c: &HttpConn) -> bool {
        c.parked.is_some()
    }

    fn resume(
        &self,
        c: &mut HttpConn,
        io: &mut dyn Io,
        mut store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        let Some(poll) = c.parked.take() else {
            return true;
        };
        let Some(st) = store.as_deref_mut() else {
            return false;
        };
        match self.log_read(&poll, io, st, reply) {
            Handled::Parked(p) => {
                c.parked = Some(p);
                return true;
            }
            Handled::Status(status) => {
                self.metrics.http_response(poll.method(), status);
                if !poll.keep_alive.keep {
                    return false;
                }
            }
        }
        let queued: Vec<Event> = c.queued.drain(..).collect();
        self.run_events(c, queued, io, store, reply)
    }

    fn peer_closed(
        &self,
        c: &mut HttpConn,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        if let Some(p) = c.parked.as_mut() {
            p.deadline = Instant::now();
        }
        self.resume(c, io, store, reply)
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 25\r\nConnection: close\r\n\r\ntoo many connections, bye"
    }

    fn full_reply(&self) -> &'static [u8] {
        b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 29\r\nConnection: close\r\n\r\npool full: request not stored"
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::Conversation;

    fn conv(mode: StoreMode, token: Option<&str>) -> Conversation<HttpService> {
        let svc = HttpService::new(mode, 1 << 10, token.map(str::to_owned));
        Conversation::new(svc, mode != StoreMode::None)
    }

    /// Status and body of the one response in `raw`.
    fn parse(raw: &str) -> (u16, String) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(raw.as_bytes()).expect("a response") else {
            panic!("incomplete response: {raw:?}");
        };
        let len: usize = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .expect("content-length");
        assert_eq!(
            raw.len() - n,
            len,
            "body length matches Content-Length: {raw:?}"
        );
        (r.code.unwrap(), raw[n..].to_owned())
    }

    #[test]
    fn kv_routes_post_get_delete() {
        let mut c = conv(StoreMode::Kv, None);
        let post = "POST /greeting HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(&c.say(post)).0, 201);
        assert_eq!(
            parse(&c.say("GET /greeting HTTP/1.1\r\nHost: x\r\n\r\n")),
            (200, "hello".to_owned())
        );
        assert_eq!(
            parse(&c.say("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).0,
            404
        );
        let del = c.say("DELETE /greeting HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!((200..300).contains(&parse(&del).0), "{del}");
        assert_eq!(
            parse(&c.say("GET /greeting HTTP/1.1\r\nHost: x\r\n\r\n")).0,
            404
        );
        assert_eq!(c.requests(), 5);
    }

    #[test]
    fn root_is_the_fixed_rpc_body() {
        let mut c = conv(StoreMode::None, None);
        let (status, body) = parse(&c.say("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!((status, body.len()), (200, 64));
        assert_eq!(body.as_bytes(), RPC_BODY);
    }

    #[test]
    fn writes_need_the_token_reads_do_not() {
        let mut c = conv(StoreMode::Kv, Some("s3cret"));
        let post = "POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv";
        assert_eq!(parse(&c.say(post)).0, 401);
        let authed =
            "POST /k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\nv";
        assert_eq!(parse(&c.say(authed)).0, 201);
        assert_eq!(
            parse(&c.say("GET /k HTTP/1.1\r\nHost: x\r\n\r\n")),
            (200, "v".to_owned())
        );
    }

    #[test]
    fn oversized_body_is_413_and_closes() {
        let mut c = conv(StoreMode::Kv, None);
        let (out, keep) = c.send(b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n");
        assert_eq!(parse(&String::from_utf8(out).unwrap()).0, 413);
        assert!(!keep, "the connection closes after a 413");
    }

    #[test]
    fn malformed_request_is_400_and_closes() {
        let mut c = conv(StoreMode::Kv, None);
        let (out, keep) = c.send(b"GARBAGE\r\n\r\n");
        assert_eq!(parse(&String::from_utf8(out).unwrap()).0, 400);
        assert!(!keep);
    }

    #[test]
    fn connection_close_ends_the_connection_after_the_reply() {
        let mut c = conv(StoreMode::None, None);
        let (out, keep) = c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(parse(&String::from_utf8(out).unwrap()).0, 200);
        assert!(!keep);
    }

    #[test]
    fn wal_log_reads_back_records_with_their_seqs() {
        let mut c = conv(StoreMode::Wal, None);
        let mut seqs = Vec::new();
        for body in ["one", "two", "three"] {
            let raw = c.say(&format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
            assert_eq!(parse(&raw).0, 200);
            let seq = raw
                .lines()
                .find_map(|l| l.strip_prefix("Pst-Seq: "))
                .expect("Pst-Seq header");
            seqs.push(seq.parse::<u64>().unwrap());
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let raw = c.say(&format!(
            "GET /log?from={}&max=2 HTTP/1.1\r\nHost: x\r\n\r\n",
            seqs[1]
        ));
        let (status, body) = parse(&raw);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("{} 3\r\ntwo\r\n{} 5\r\nthree\r\n", seqs[1], seqs[2])
        );
        assert!(raw.contains(&format!("Pst-Next-Seq: {}\r\n", seqs[2] + 1)));
        // Nothing new and no wait: an empty answer at once.
        let raw = c.say(&format!(
            "GET /log?from={} HTTP/1.1\r\nHost: x\r\n\r\n",
            seqs[2] + 1
        ));
        assert_eq!(parse(&raw), (200, String::new()));
        // Truncation moves the first seq.
        let raw = c.say(&format!(
            "DELETE /log?before={} HTTP/1.1\r\nHost: x\r\n\r\n",
            seqs[2]
        ));
        assert!(
            raw.contains(&format!("Pst-First-Seq: {}", seqs[2])),
            "{raw}"
        );
        let raw = c.say("GET /log?from=0 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse(&raw).1, format!("{} 5\r\nthree\r\n", seqs[2]));
        assert_eq!(
            parse(&c.say("GET /log?from=x HTTP/1.1\r\nHost: x\r\n\r\n")).0,
            400
        );
    }

    #[test]
    fn a_long_poll_is_answered_early_when_too_much_queues_behind_it() {
        let mut c = conv(StoreMode::Wal, None);
        let (out, _) = c.send(b"GET /log?from=1&wait=20000 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.is_empty() && c.parked());
        let behind = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(MAX_BEHIND_POLL + 1);
        let (out, keep) = c.send(behind.as_bytes());
        let out = String::from_utf8(out).unwrap();
        assert!(keep && !c.parked());
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"),
            "{out}"
        );
        assert_eq!(
            out.matches("HTTP/1.1 200").count(),
            MAX_BEHIND_POLL + 2,
            "the poll, then every request"
        );
    }

    #[test]
    fn head_responses_never_carry_a_body() {
        let mut c = conv(StoreMode::Kv, None);
        let raw = c.say("HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            raw.starts_with("HTTP/1.1 404") && raw.ends_with("\r\n\r\n"),
            "{raw:?}"
        );
        let raw = c.say("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            raw.starts_with("HTTP/1.1 200") && raw.ends_with("\r\n\r\n"),
            "{raw:?}"
        );
    }

    #[test]
    fn a_long_poll_parks_and_holds_later_requests_back() {
        let mut c = conv(StoreMode::Wal, None);
        let (out, keep) = c.send(
            b"GET /log?from=1&wait=20000 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            out.is_empty() && keep,
            "parked: no reply yet, not even to the GET behind it"
        );
        assert!(c.parked());
    }

    #[test]
    fn chunked_post_stores_only_the_chunk_data() {
        let mut c = conv(StoreMode::Kv, None);
        let raw = c.say(
            "POST /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nT: 1\r\n\r\n",
        );
        assert_eq!(parse(&raw).0, 201);
        assert_eq!(
            parse(&c.say("GET /k HTTP/1.1\r\nHost: x\r\n\r\n")),
            (200, "abcde".to_owned())
        );
        // Many tiny chunks are gathered into fresh buffers; the value is the same.
        let mut req =
            String::from("POST /many HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        for i in 0..600 {
            req += &format!("1\r\n{}\r\n", (b'a' + (i % 26) as u8) as char);
        }
        req += "0\r\n\r\n";
        assert_eq!(parse(&c.say(&req)).0, 201);
        let want: String = (0..600).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        assert_eq!(
            parse(&c.say("GET /many HTTP/1.1\r\nHost: x\r\n\r\n")),
            (200, want)
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let mut c = conv(StoreMode::Kv, None);
        c.say("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, body) = parse(&c.say("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE pst_http_requests_total counter\n"));
        assert!(body.contains("pst_http_requests_total{method=\"GET\",code=\"404\"} 1\n"));
        let r = c.say("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(parse(&r).0, 405);
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
        let r = c.say("PATCH /k HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(parse(&r).0, 405);
        assert!(
            r.contains("\r\nAllow: GET, HEAD, POST, PUT, DELETE\r\n"),
            "{r}"
        );
    }

    #[test]
    fn full_reply_is_well_framed() {
        let svc = HttpService::new(StoreMode::Kv, 1024, None);
        let (status, body) = parse(std::str::from_utf8(svc.full_reply()).unwrap());
        assert_eq!(status, 507);
        assert_eq!(body, "pool full: request not stored");
    }

    #[test]
    fn busy_reply_is_well_framed() {
        let svc = HttpService::new(StoreMode::None, 1024, None);
        let (status, body) = parse(std::str::from_utf8(svc.busy_reply()).unwrap());
        assert_eq!(status, 503);
        assert_eq!(body, "too many connections, bye");
    }
}
