//! HTTP/1.1 request framing over a byte stream that arrives in arbitrary pieces (pool buffers),
//! without copying bodies. Pure code: no I/O, no allocation per body byte.
//!
//! The caller feeds each received chunk with [`RequestFramer::feed`]. Stream positions count
//! bytes since the connection opened. Only request heads are copied (into a small carry
//! buffer, to be parsed by `httparse`); a body is reported as a *range of stream positions*,
//! which the caller maps onto the buffers it kept (zero copy) or onto its own read buffer.
//! Keep-alive and pipelining work: one chunk may hold many requests, one request many chunks.
#![forbid(unsafe_code)]

use std::ops::Range;

/// Limits, with the defaults a server should use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line + headers), bytes. Beyond: 431.
    pub max_head: usize,
    /// Most header fields. Beyond: 431.
    pub max_headers: usize,
    /// Largest body, bytes. Beyond: 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 << 10,
            max_headers: 64,
            max_body: 1 << 20,
        }
    }
}

/// Request methods the applications distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// Anything else.
    Other,
}

/// A complete request: its head, and where its body lies in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request target (path and query), as sent.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Value of `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// Body bytes as stream positions (empty when there is no body).
    pub body: Range<u64>,
}

/// A request the framer refuses; the connection must answer with the status and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Malformed request line or header.
    #[error("400 Bad Request")]
    BadRequest,
    /// A body-carrying method without `Content-Length` (chunked bodies are not supported).
    #[error("411 Length Required")]
    LengthRequired,
    /// Body larger than the limit.
    #[error("413 Content Too Large")]
    TooLarge,
    /// Head too large or too many header fields.
    #[error("431 Request Header Fields Too Large")]
    HeadTooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    #[error("505 HTTP Version Not Supported")]
    Version,
}

impl FrameError {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            FrameError::BadRequest => 400,
            FrameError::LengthRequired => 411,
            FrameError::TooLarge => 413,
            FrameError::HeadTooLarge => 431,
            FrameError::Version => 505,
        }
    }
}

/// What framing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request (head and whole body received).
    Request(Request),
    /// The stream is unusable from here on; answer with this error and close.
    Error(FrameError),
}

#[derive(Debug)]
enum State {
    /// Collecting a head in `carry`, which starts at stream position `carry_pos`.
    Head,
    /// Waiting for the body of `req` to end at `req.body.end`.
    Body(Request),
    /// After an error: ignore everything.
    Dead,
}

/// Per-connection request framer.
#[derive(Debug)]
pub struct RequestFramer {
    limits: Limits,
    state: State,
    carry: Vec<u8>,
    carry_pos: u64,
    /// Stream position of the next byte to be fed.
    pos: u64,
}

impl RequestFramer {
    /// A framer for a new connection.
    pub fn new(limits: Limits) -> RequestFramer {
        RequestFramer {
            limits,
            state: State::Head,
            carry: Vec::new(),
            carry_pos: 0,
            pos: 0,
        }
    }

    /// Stream position of the next byte expected.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Every byte before this position is no longer needed by the framer, nor by any request
    /// it has emitted except through ranges the caller has already taken.
    pub fn needed_from(&self) -> u64 {
        match &self.state {
            State::Head => self.carry_pos,
            State::Body(r) => r.body.start,
            State::Dead => self.pos,
        }
    }

    /// Feed the next chunk of the stream; complete requests (and at most one error, after which
    /// the framer ignores input) are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        let mut at = 0usize; // index into chunk
        let chunk_pos = self.pos;
        self.pos += chunk.len() as u64;
        while at < chunk.len() {
            match &mut self.state {
                State::Dead => return,
                State::Body(req) => {
                    let here = chunk_pos + at as u64;
                    let need = req.body.end - here;
                    let have = (chunk.len() - at) as u64;
                    if have < need {
                        return;
                    }
                    at += need as usize;
                    let State::Body(req) = std::mem::replace(&mut self.state, State::Head) else {
                        unreachable!()
                    };
                    out.push(Event::Request(req));
                    self.carry.clear();
                    self.carry_pos = chunk_pos + at as u64;
                }
                State::Head => {
                    if self.carry.is_empty() {
                        self.carry_pos = chunk_pos + at as u64;
                    }
                    // Copy at most up to the head limit (+1 so overflow is detectable).
                    let room = (self.limits.max_head + 1).saturating_sub(self.carry.len());
                    let take = room.min(chunk.len() - at);
                    let before = self.carry.len();
                    self.carry.extend_from_slice(&chunk[at..at + take]);
                    match self.parse_head() {
                        Ok(None) => {
                            if self.carry.len() > self.limits.max_head {
                                self.fail(FrameError::HeadTooLarge, out);
                                return;
                            }
                            at += take;
                        }
                        Ok(Some((req, head_len))) => {
                            // Bytes of this chunk consumed by the head.
                            at += head_len - before;
                            self.carry.clear();
                            if req.body.is_empty() {
                                out.push(Event::Request(req));
                                self.carry_pos = chunk_pos + at as u64;
                            } else {
                                self.state = State::Body(req);
                            }
                        }
                        Err(e) => {
                            self.fail(e, out);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: FrameError, out: &mut Vec<Event>) {
        self.state = State::Dead;
        self.carry = Vec::new();
        out.push(Event::Error(e));
    }

    /// Parse `carry` as a head. `Ok(None)`: incomplete.
    fn parse_head(&self) -> Result<Option<(Request, usize)>, FrameError> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut r = httparse::Request::new(&mut headers);
        let head_len = match r.parse(&self.carry) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
            Err(httparse::Error::Version) => return Err(self.version_error()),
            Err(_) => return Err(FrameError::BadRequest),
        };
        if head_len > self.limits.max_head {
            return Err(FrameError::HeadTooLarge);
        }
        let version = r.version.ok_or(FrameError::BadRequest)?;
        let method = match r.method.ok_or(FrameError::BadRequest)? {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        };
        let path = r.path.ok_or(FrameError::BadRequest)?.to_owned();
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut conn_close = false;
        let mut conn_keep = false;
        let mut bearer = None;
        for h in r.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .map_err(|_| FrameError::BadRequest)?
                    .trim();
                let n: u64 = v.parse().map_err(|_| FrameError::BadRequest)?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(FrameError::BadRequest); // conflicting lengths: request smuggling
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                conn_close |= v.split(',').any(|t| t.trim() == "close");
                conn_keep |= v.split(',').any(|t| t.trim() == "keep-alive");
            } else if name.eq_ignore_ascii_case("authorization") {
                let v = String::from_utf8_lossy(h.value);
                if let Some(t) = v.strip_prefix("Bearer ") {
                    bearer = Some(t.trim().to_owned());
                }
            }
        }
        if chunked {
            return Err(FrameError::LengthRequired);
        }
        let body_len = match (method, content_length) {
            (Method::Post | Method::Put, None) => return Err(FrameError::LengthRequired),
            (_, Some(n)) => n,
            (_, None) => 0,
        };
        if body_len > self.limits.max_body {
            return Err(FrameError::TooLarge);
        }
        let keep_alive = if version == 1 {
            !conn_close
        } else {
            conn_keep && !conn_close
        };
        let start = self.carry_pos + head_len as u64;
        Ok(Some((
            Request {
                method,
                path,
                keep_alive,
                bearer,
                body: start..start + body_len,
            },
            head_len,
        )))
    }

    fn version_error(&self) -> FrameError {
        // httparse reports any non-1.x version as a version error; a request line that does
        // not even look like HTTP is a bad request. Decide from the version token alone (what
        // follows the second space of the request line), never from bytes after it: the answer
        // must not depend on how much of the stream has arrived (found by fuzzing).
        let line = self.carry.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let mut parts = line.splitn(3, |&b| b == b' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(version)) if version.starts_with(b"HTTP/") => {
                FrameError::Version
            }
            _ => FrameError::BadRequest,
        }
    }
}

/// The reason phrase for the statuses the servers send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Write a response head for a body of `len` bytes.
pub fn write_head(out: &mut Vec<u8>, status: u16, len: usize, keep_alive: bool) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\n{}\r\n",
        reason(status),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut f = RequestFramer::new(Limits::default());
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        out
    }

    fn req(e: &Event) -> &Request {
        match e {
            Event::Request(r) => r,
            Event::Error(e) => panic!("unexpected {e}"),
        }
    }

    /// Found by fuzzing (`http_framing`): whether a bad request line is a 505 or a 400 was
    /// decided by searching every byte received so far for `HTTP/`, so it depended on how the
    /// stream was cut (a later request or body in the same chunk could contain `HTTP/`).
    #[test]
    fn bad_version_status_does_not_depend_on_later_bytes() {
        let s: &[u8] = b"POST /k 1H1\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.1\r\n\r\n";
        for cut in 1..s.len() {
            let ev = feed_all(&[&s[..cut], &s[cut..]]);
            assert_eq!(
                ev,
                vec![Event::Error(FrameError::BadRequest)],
                "cut at {cut}"
            );
        }
        let ev = feed_all(&[b"GET / HTTP/2.0\r\n\r\n"]);
        assert_eq!(ev, vec![Event::Error(FrameError::Version)]);
    }

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let s = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let ev = feed_all(&[s]);
        assert_eq!(ev.len(), 3);
        assert_eq!(req(&ev[0]).path, "/a");
        let p = req(&ev[1]);
        assert_eq!(p.method, Method::Post);
        assert_eq!(&s[p.body.start as usize..p.body.end as usize], b"hello");
        assert_eq!(req(&ev[2]).path, "/b");
    }

    #[test]
    fn every_split_gives_the_same_requests() {
        let s: &[u8] = b"POST /k1 HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello worldPOST /k2 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let whole = feed_all(&[s]);
        assert_eq!(whole.len(), 2);
        for i in 0..s.len() {
            for j in i..s.len() {
                assert_eq!(
                    feed_all(&[&s[..i], &s[i..j], &s[j..]]),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
        assert!(!req(&whole[1]).keep_alive);
    }

    #[test]
    fn errors_have_the_right_status() {
        let st = |s: &[u8]| match feed_all(&[s]).pop() {
            Some(Event::Error(e)) => e.status(),
            other => panic!("{other:?}"),
        };
        assert_eq!(st(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(st(b"POST / HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(st(b"GET / HTTP/2.0\r\n\r\n"), 505);
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\n"[..],
            &b"X: y\r\n".repeat(100),
            b"\r\n",
        ]
        .concat();
        assert_eq!(st(&many), 431);
        let long: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nX: "[..],
            &vec![b'a'; 20_000],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(st(&long), 431);
    }

    #[test]
    fn after_an_error_input_is_ignored() {
        let ev = feed_all(&[b"BAD\r\n\r\nGET / HTTP/1.1\r\n\r\n"]);
        assert_eq!(ev, vec![Event::Error(FrameError::BadRequest)]);
    }

    #[test]
    fn http10_closes_by_default() {
        let ev =
            feed_all(&[b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]);
        assert!(!req(&ev[0]).keep_alive);
        assert!(req(&ev[1]).keep_alive);
    }

    #[test]
    fn needed_from_tracks_the_oldest_needed_byte() {
        let mut f = RequestFramer::new(Limits::default());
        let mut out = Vec::new();
        f.feed(b"POST /k HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", &mut out);
        assert!(out.is_empty());
        assert_eq!(f.needed_from(), 39, "body start");
        f.feed(b"cdGET", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.needed_from(), 43, "start of the partial next head");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..8)) {
            let mut f = RequestFramer::new(Limits { max_head: 256, max_headers: 8, max_body: 1000 });
            let mut out = Vec::new();
            for c in &chunks {
                f.feed(c, &mut out);
            }
            for e in &out {
                if let Event::Request(r) = e {
                    proptest::prop_assert!(r.body.end <= f.position() && r.body.start <= r.body.end);
                }
            }
        }
    }
}
