//! `pst httpd`: phttpd parity. POST bodies are persisted where they landed (`--store wal`: a
//! WAL record naming the body's extents; `--store kv`: `POST /key` stores the body under `key`,
//! `GET /key` sends it from the pool without copying). Other GETs return a fixed 64-byte body
//! (the RPC workload). Replies leave only after the batch's group commit.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use pst_http::{write_head, Event, FrameError, Limits, Method, Request, RequestFramer};

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

/// The HTTP service.
#[derive(Debug)]
pub struct HttpService {
    mode: StoreMode,
    limits: Limits,
    token: Option<String>,
    requests: AtomicU64,
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
            requests: AtomicU64::new(0),
        }
    }

    fn respond(reply: &mut Vec<Piece>, status: u16, body: &[u8], keep_alive: bool) {
        let mut out = Vec::with_capacity(96 + body.len());
        write_head(&mut out, status, body.len(), keep_alive);
        out.extend_from_slice(body);
        reply.push(Piece::Bytes(out));
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

    fn handle(
        &self,
        req: &Request,
        io: &mut dyn Io,
        store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) {
        let ka = req.keep_alive;
        let write = matches!(req.method, Method::Post | Method::Put | Method::Delete);
        if write {
            if let Some(t) = &self.token {
                if req.bearer.as_deref() != Some(t.as_str()) {
                    return Self::respond(reply, 401, b"bearer token required for writes\n", ka);
                }
            }
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
                let mut head = Vec::with_capacity(96);
                write_head(&mut head, 200, v.len as usize, ka);
                if req.method == Method::Head {
                    reply.push(Piece::Bytes(head));
                    return;
                }
                match io.zero_copy(v.extents) {
                    Some(exts) => {
                        reply.push(Piece::Bytes(head));
                        reply.extend(exts.into_iter().map(Piece::Ext));
                    }
                    None => {
                        let mut body = Vec::new();
                        match store.read_value(key.as_bytes(), &mut body) {
                            Ok(true) => {
                                head.extend_from_slice(&body);
                                reply.push(Piece::Bytes(head));
                            }
                            _ => Self::respond(reply, 500, b"stored value is corrupt\n", ka),
                        }
                    }
                }
            }
            (Method::Get, _, _) => Self::respond(reply, 200, RPC_BODY, ka),
            (Method::Head, _, _) => {
                let mut head = Vec::new();
                write_head(&mut head, 200, RPC_BODY.len(), ka);
                reply.push(Piece::Bytes(head));
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
                if !io.has_room(req.body.end - req.body.start) {
                    return full(reply);
                }
                let Some(exts) = io.extents(req.body.clone()) else {
                    return full(reply);
                };
                let r = match key {
                    Some(k) => store.put(k.as_bytes(), exts),
                    None => store.append(exts),
                };
                match r {
                    Ok(_) => Self::respond(
                        reply,
                        if mode == StoreMode::Kv { 201 } else { 200 },
                        b"",
                        ka,
                    ),
                    Err(pst_store::StoreError::LogFull) => full(reply),
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
            _ => Self::respond(reply, 405, b"method not allowed\n", ka),
        }
    }
}

impl Protocol for HttpService {
    type Conn = RequestFramer;

    fn conn(&self) -> RequestFramer {
        RequestFramer::new(self.limits)
    }

    fn needed_from(&self, c: &RequestFramer) -> u64 {
        c.needed_from()
    }

    fn on_chunk(
        &self,
        c: &mut RequestFramer,
        chunk: Range<u64>,
        io: &mut dyn Io,
        mut store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        let mut events = Vec::new();
        io.with_bytes(chunk, &mut |b| c.feed(b, &mut events));
        for ev in events {
            match ev {
                Event::Request(req) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    self.handle(&req, io, store.as_deref_mut(), reply);
                    if !req.keep_alive {
                        return false;
                    }
                }
                Event::Error(e) => {
                    let msg = format!("{e}\n");
                    Self::respond(reply, e.status(), msg.as_bytes(), false);
                    if e == FrameError::TooLarge {
                        tracing::debug!("request body over the limit");
                    }
                    return false;
                }
            }
        }
        true
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 25\r\nConnection: close\r\n\r\ntoo many connections, bye"
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
        assert_eq!(c.svc.requests(), 5);
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
    fn busy_reply_is_well_framed() {
        let svc = HttpService::new(StoreMode::None, 1024, None);
        let (status, body) = parse(std::str::from_utf8(svc.busy_reply()).unwrap());
        assert_eq!(status, 503);
        assert_eq!(body, "too many connections, bye");
    }
}
