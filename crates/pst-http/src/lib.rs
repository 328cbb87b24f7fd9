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
    /// Largest request head (request line + headers), bytes. Beyond: 431 (414 when the
    /// request line alone is longer).
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
    /// An HTTP/1.0 request (a kept-alive 1.0 connection must be told so in the response:
    /// [`write_head_for`]).
    pub http10: bool,
    /// Value of `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// The body as sent, as stream positions (empty when there is no body). For a chunked
    /// body this span includes the chunk framing and trailers; its content is [`Request::data`].
    pub body: Range<u64>,
    /// Chunked body (`Transfer-Encoding: chunked`): the chunk-data ranges in order, framing
    /// excluded. Empty for a `Content-Length` body (no allocation on that path).
    pub chunks: Vec<Range<u64>>,
    /// Whether the body was sent chunked.
    pub chunked: bool,
}

impl Request {
    /// The body's content as stream ranges, in order: the whole body for `Content-Length`,
    /// each chunk's data for a chunked body.
    pub fn data(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let whole = (!self.chunked && !self.body.is_empty()).then(|| self.body.clone());
        whole.into_iter().chain(self.chunks.iter().cloned())
    }

    /// Length of the body's content (chunk framing excluded).
    pub fn body_len(&self) -> u64 {
        self.data().map(|r| r.end - r.start).sum()
    }
}

/// A request the framer refuses; the connection must answer with the status and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Malformed request line or header.
    #[error("400 Bad Request")]
    BadRequest,
    /// A body-carrying method with neither `Content-Length` nor a chunked body.
    #[error("411 Length Required")]
    LengthRequired,
    /// Body larger than the limit.
    #[error("413 Content Too Large")]
    TooLarge,
    /// Head too large or too many header fields.
    #[error("431 Request Header Fields Too Large")]
    HeadTooLarge,
    /// The request line alone is longer than the head limit (RFC 9110 §15.5.15).
    #[error("414 URI Too Long")]
    UriTooLong,
    /// Not HTTP/1.0 or HTTP/1.1.
    #[error("505 HTTP Version Not Supported")]
    Version,
    /// An `Expect` other than `100-continue`.
    #[error("417 Expectation Failed")]
    Expectation,
}

impl FrameError {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            FrameError::BadRequest => 400,
            FrameError::LengthRequired => 411,
            FrameError::TooLarge => 413,
            FrameError::HeadTooLarge => 431,
            FrameError::UriTooLong => 414,
            FrameError::Version => 505,
            FrameError::Expectation => 417,
        }
    }
}

/// What framing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request (head and whole body received).
    Request(Request),
    /// A request head asked `Expect: 100-continue` and its body is acceptable so far: the
    /// server should send `100 Continue` now (the request follows as [`Event::Request`]).
    Continue,
    /// The stream is unusable from here on; answer with this error and close.
    Error(FrameError),
}

#[derive(Debug)]
enum State {
    /// Collecting a head in `carry`, which starts at stream position `carry_pos`.
    Head,
    /// Waiting for the body of `req` to end at `req.body.end`.
    Body(Request),
    /// Inside a chunked body of `req` (`req.body.start` is where it began), with the data
    /// bytes seen so far (kept as a running total: summing the ranges per chunk would make a
    /// body of many tiny chunks cost quadratic time).
    Chunked(Request, Chunk, u64),
    /// After an error: ignore everything.
    Dead,
}

/// Where a chunked body's parser is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Collecting a `chunk-size [chunk-ext] CRLF` line in `carry`.
    Size,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// After chunk data: the CRLF that ends it; this many of its bytes seen.
    DataEnd(u8),
    /// Collecting trailer lines (dropped) in `carry`; this many trailer bytes so far.
    Trailer(usize),
}

/// Longest chunk-size line (size plus extensions) accepted; beyond it the request is a 400.
pub const MAX_CHUNK_LINE: usize = 1024;

/// Largest path capacity [`RequestFramer::recycle`] keeps for reuse (bytes).
const MAX_SPARE_PATH: usize = 1024;

/// Header slots parsed on the stack; a [`Limits::max_headers`] above it parses into a vector.
const STACK_HEADERS: usize = 64;

/// Most chunks one body may have (each is a range the server keeps); beyond: 413.
pub const MAX_CHUNKS: usize = 1 << 16;

/// Per-connection request framer.
#[derive(Debug)]
pub struct RequestFramer {
    limits: Limits,
    state: State,
    carry: Vec<u8>,
    carry_pos: u64,
    /// Stream position of the next byte to be fed.
    pos: u64,
    /// A handled request's path string, given back with [`RequestFramer::recycle`], for the
    /// next head's path (steady traffic allocates none).
    spare_path: String,
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
            spare_path: String::new(),
        }
    }

    /// Give back a request the caller is done with: its path's memory serves the next head,
    /// so a connection's steady traffic parses heads without allocating.
    pub fn recycle(&mut self, req: Request) {
        let mut path = req.path;
        if path.capacity() <= MAX_SPARE_PATH && path.capacity() > self.spare_path.capacity() {
            path.clear();
            self.spare_path = path;
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
            State::Body(r) | State::Chunked(r, _, _) => r.body.start,
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
                State::Chunked(..) => {
                    if let Err(e) = self.chunked(chunk, chunk_pos, &mut at, out) {
                        self.fail(e, out);
                        return;
                    }
                }
                State::Head => {
                    let fresh = self.carry.is_empty();
                    if fresh {
                        self.carry_pos = chunk_pos + at as u64;
                    }
                    // At most up to the head limit (+1 so overflow is detectable).
                    let room = (self.limits.max_head + 1).saturating_sub(self.carry.len());
                    let take = room.min(chunk.len() - at);
                    let before = self.carry.len();
                    let parsed = if fresh {
                        // The common case, a whole head in one chunk: parsed where it lies.
                        // Copying it (and the body after it) into `carry` first cost a
                        // `memcpy` of up to the head limit per request.
                        self.parse_head(&chunk[at..at + take])
                    } else {
                        self.carry.extend_from_slice(&chunk[at..at + take]);
                        let carry = std::mem::take(&mut self.carry);
                        let r = self.parse_head(&carry);
                        self.carry = carry;
                        r
                    };
                    match parsed {
                        Ok(None) => {
                            if fresh {
                                self.carry.extend_from_slice(&chunk[at..at + take]);
                            }
                            if self.carry.len() > self.limits.max_head {
                                // No line end yet: the request line itself is too long.
                                let e = match self.carry.contains(&b'\n') {
                                    true => FrameError::HeadTooLarge,
                                    false => FrameError::UriTooLong,
                                };
                                self.fail(e, out);
                                return;
                            }
                            at += take;
                        }
                        Ok(Some((req, head_len, expect))) => {
                            // Bytes of this chunk consumed by the head.
                            at += head_len - before;
                            self.carry.clear();
                            // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1).
                            if expect && !req.http10 && (req.chunked || !req.body.is_empty()) {
                                out.push(Event::Continue);
                            }
                            if req.chunked {
                                self.state = State::Chunked(req, Chunk::Size, 0);
                            } else if req.body.is_empty() {
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

    /// Advance through a chunked body from `chunk[*at..]`; emits the request when its
    /// trailer section ends. Lines (sizes, trailers) are collected in `carry`, bounded.
    fn chunked(
        &mut self,
        chunk: &[u8],
        chunk_pos: u64,
        at: &mut usize,
        out: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        let State::Chunked(req, phase, total) = &mut self.state else {
            unreachable!("called in the chunked state")
        };
        while *at < chunk.len() {
            match *phase {
                Chunk::Data(left) => {
                    let here = chunk_pos + *at as u64;
                    let take = left.min((chunk.len() - *at) as u64);
                    match req.chunks.last_mut() {
                        Some(r) if r.end == here => r.end += take,
                        _ => req.chunks.push(here..here + take),
                    }
                    *at += take as usize;
                    *phase = if take == left {
                        Chunk::DataEnd(0)
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd(seen) => {
                    let want = b"\r\n"[seen as usize];
                    if chunk[*at] != want {
                        return Err(FrameError::BadRequest);
                    }
                    *at += 1;
                    *phase = if seen == 1 {
                        Chunk::Size
                    } else {
                        Chunk::DataEnd(1)
                    };
                }
                Chunk::Size | Chunk::Trailer(_) => {
                    let Some(line) = take_line(&mut self.carry, chunk, at) else {
                        // Incomplete line: bound what is collected.
                        let limit = match *phase {
                            Chunk::Trailer(n) => self.limits.max_head.saturating_sub(n),
                            _ => MAX_CHUNK_LINE,
                        };
                        if self.carry.len() > limit {
                            return Err(match *phase {
                                Chunk::Trailer(_) => FrameError::HeadTooLarge,
                                _ => FrameError::BadRequest,
                            });
                        }
                        continue;
                    };
                    let line = line?;
                    // Size limits first, then the line's form: the same error however the
                    // stream was cut (the incomplete-line check above sees only sizes).
                    if let Chunk::Trailer(n) = *phase {
                        if line.len() > self.limits.max_head.saturating_sub(n) {
                            return Err(FrameError::HeadTooLarge);
                        }
                    } else if line.len() > MAX_CHUNK_LINE {
                        return Err(FrameError::BadRequest);
                    }
                    let line = crlf_line(line)?;
                    if let Chunk::Trailer(n) = *phase {
                        let n = n + line.len() + 2;
                        self.carry.clear();
                        if n > self.limits.max_head {
                            return Err(FrameError::HeadTooLarge);
                        }
                        if !line.is_empty() {
                            *phase = Chunk::Trailer(n);
                            continue;
                        }
                        // The empty line: the message ends here.
                        let end = chunk_pos + *at as u64;
                        let State::Chunked(mut req, _, _) =
                            std::mem::replace(&mut self.state, State::Head)
                        else {
                            unreachable!()
                        };
                        req.body.end = end;
                        out.push(Event::Request(req));
                        self.carry_pos = end;
                        return Ok(());
                    }
                    if line.len() > MAX_CHUNK_LINE {
                        return Err(FrameError::BadRequest);
                    }
                    let size = chunk_size(&line)?;
                    self.carry.clear();
                    if size > self.limits.max_body.saturating_sub(*total) {
                        return Err(FrameError::TooLarge);
                    }
                    *total += size;
                    if req.chunks.len() >= MAX_CHUNKS {
                        return Err(FrameError::TooLarge);
                    }
                    *phase = if size == 0 {
                        Chunk::Trailer(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: FrameError, out: &mut Vec<Event>) {
        self.state = State::Dead;
        self.carry = Vec::new();
        out.push(Event::Error(e));
    }

    /// Parse `buf` (the head's bytes so far: `carry`, or a chunk) as a head. `Ok(None)`:
    /// incomplete. Also says whether the head asked
    /// `Expect: 100-continue`.
    ///
    /// Request-smuggling defences (RFC 9112 §6.1–6.3): both `Transfer-Encoding` and
    /// `Content-Length`, a transfer coding other than a final `chunked`, differing
    /// `Content-Length`s, an obs-fold line and a bare CR are all refused with 400; so are a
    /// request with two Host headers and a Host value that is not `uri-host [":" port]` (RFC
    /// 9112 §3.2). A missing Host is accepted (see below).
    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<(Request, usize, bool)>, FrameError> {
        // Header slots left uninitialized (httparse writes those it fills): initializing 64
        // of them was a visible share of a short request's parse.
        type Slot<'a> = std::mem::MaybeUninit<httparse::Header<'a>>;
        let mut on_stack = [const { Slot::uninit() }; STACK_HEADERS];
        let mut on_heap: Vec<Slot<'_>> = Vec::new();
        let headers: &mut [Slot<'_>] = if self.limits.max_headers <= STACK_HEADERS {
            &mut on_stack[..self.limits.max_headers]
        } else {
            on_heap.resize_with(self.limits.max_headers, Slot::uninit);
            &mut on_heap
        };
        let mut r = httparse::Request::new(&mut []);
        let head_len = match r.parse_with_uninit_headers(buf, headers) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
            Err(httparse::Error::Version) => return Err(version_error(buf)),
            Err(_) => return Err(FrameError::BadRequest),
        };
        if head_len > self.limits.max_head {
            return Err(FrameError::HeadTooLarge);
        }
        // httparse accepts a bare LF as a line end and skips an obs-fold; both let two parsers
        // disagree on where a header ends, so refuse a CR not followed by LF and a header line
        // starting with whitespace.
        let head = &buf[..head_len];
        if memchr::memchr_iter(b'\r', head).any(|i| head.get(i + 1) != Some(&b'\n'))
            || memchr::memchr_iter(b'\n', head)
                .any(|i| matches!(head.get(i + 1), Some(b' ' | b'\t')))
        {
            return Err(FrameError::BadRequest);
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
        let mut path = std::mem::take(&mut self.spare_path);
        path.clear();
        let (slash, rest) = origin_form(r.path.ok_or(FrameError::BadRequest)?);
        if slash {
            path.push('/');
        }
        path.push_str(rest);
        let mut content_length: Option<u64> = None;
        let mut codings: Vec<String> = Vec::new();
        let mut expect = false;
        let mut conn_close = false;
        let mut conn_keep = false;
        let mut bearer = None;
        let mut hosts = 0u32;
        let mut bad_expect = false;
        for h in r.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                if !valid_host(trim_ows(h.value)) {
                    return Err(FrameError::BadRequest);
                }
                hosts += 1;
            } else if name.eq_ignore_ascii_case("content-length") {
                // `1*DIGIT` on the raw bytes (RFC 9110 §8.6): no sign, no Unicode whitespace
                // (what `str::trim` and `u64::from_str` would let through for a proxy in
                // front to read differently).
                let v = trim_ows(h.value);
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(FrameError::BadRequest);
                }
                let n: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or(FrameError::BadRequest)?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(FrameError::BadRequest); // conflicting lengths: request smuggling
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Transfer codings are tokens separated by commas and optional SP/HTAB.
                for t in h.value.split(|&b| b == b',').map(trim_ows) {
                    if t.is_empty() {
                        continue;
                    }
                    if !t.iter().all(|&b| is_tchar(b)) {
                        return Err(FrameError::BadRequest);
                    }
                    codings.push(String::from_utf8_lossy(t).to_ascii_lowercase());
                }
                if codings.is_empty() {
                    return Err(FrameError::BadRequest);
                }
            } else if name.eq_ignore_ascii_case("expect") {
                if h.value.eq_ignore_ascii_case(b"100-continue") {
                    expect = true;
                } else {
                    bad_expect = true; // 417, unless the request is malformed (400, below)
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for t in h.value.split(|&b| b == b',').map(trim_ows) {
                    conn_close |= t.eq_ignore_ascii_case(b"close");
                    conn_keep |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("authorization") {
                let v = String::from_utf8_lossy(h.value);
                if let Some(t) = v.strip_prefix("Bearer ") {
                    bearer = Some(t.trim().to_owned());
                }
            }
        }
        // Two Host lines are refused (RFC 9112 §3.2): a proxy in front may route by either.
        // An HTTP/1.1 request without one is served, a deliberate deviation from the same
        // section's MUST (hyper's choice too; nginx and Go refuse it): this server does no
        // virtual hosting, so a missing Host cannot be read two ways, and hand-written clients
        // and tests often leave it out.
        if hosts > 1 {
            return Err(FrameError::BadRequest);
        }
        if bad_expect {
            return Err(FrameError::Expectation);
        }
        let chunked = !codings.is_empty();
        if chunked {
            // Only `chunked` is implemented, and it must be the final coding; any other
            // coding, or a length beside it, is a smuggling attempt or something we cannot
            // frame (RFC 9112 §6.1, §6.3).
            if content_length.is_some() || version == 0 || codings != ["chunked"] {
                return Err(FrameError::BadRequest);
            }
        }
        let body_len = match (method, content_length) {
            _ if chunked => 0,
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
                http10: version == 0,
                bearer,
                body: start..start + body_len,
                chunks: Vec::new(),
                chunked,
            },
            head_len,
            expect,
        )))
    }
}

/// The error for a request line httparse refused as to its version: a request line that does
/// not even look like HTTP is a bad request, else 505. Decided from the version token alone
/// (what follows the second space of the request line), never from bytes after it: the answer
/// must not depend on how much of the stream has arrived (found by fuzzing).
fn version_error(head: &[u8]) -> FrameError {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(version)) if version.starts_with(b"HTTP/") => FrameError::Version,
        _ => FrameError::BadRequest,
    }
}

/// Take one LF-terminated line (returned without the LF), collecting partial lines in `carry`
/// across feeds. `None`: the line is not complete yet (what there is went into `carry`).
fn take_line(
    carry: &mut Vec<u8>,
    chunk: &[u8],
    at: &mut usize,
) -> Option<Result<Vec<u8>, FrameError>> {
    let rest = &chunk[*at..];
    match rest.iter().position(|&b| b == b'\n') {
        None => {
            carry.extend_from_slice(rest);
            *at = chunk.len();
            None
        }
        Some(i) => {
            carry.extend_from_slice(&rest[..=i]);
            *at += i + 1;
            let mut line = std::mem::take(carry);
            line.pop(); // LF
            Some(Ok(line))
        }
    }
}

/// A line must end in CR (before its LF) and hold no other CR (RFC 9112 §2.2: a bare CR is an
/// error); returns it without the CR.
fn crlf_line(mut line: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    if line.pop() != Some(b'\r') || line.contains(&b'\r') {
        return Err(FrameError::BadRequest);
    }
    Ok(line)
}

/// Strip optional whitespace (SP and HTAB only, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `v` is a Host field value: `uri-host [ ":" port ]` (RFC 9110 §7.2), possibly empty.
/// A host is an IP literal in brackets (IPv6, with a `%25` zone, or `v…` IPvFuture) or a
/// registered name / IPv4 address: unreserved bytes, `%HH` and sub-delims (RFC 3986 §3.2.2) —
/// except `,`, which is what a proxy makes of two Host lines merged into one. Nothing a proxy
/// in front could read as a path, userinfo or second host gets through.
fn valid_host(v: &[u8]) -> bool {
    // The common case, a registered name or IPv4 address and a port, checked with one table
    // lookup per byte (this runs for every request).
    let rest = if !v.starts_with(b"[") {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let (name, rest) = v.split_at(end);
        if !name.iter().all(|&b| REG_NAME[b as usize]) || !pct_ok(name) {
            return false;
        }
        rest
    } else {
        let lit = &v[1..];
        let Some(close) = lit.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &lit[..close];
        let in_set = |s: &[u8], set: &[u8]| {
            s.iter()
                .all(|b| b.is_ascii_alphanumeric() || set.contains(b))
        };
        let ok = if let Some(f) = inner.strip_prefix(b"v").or(inner.strip_prefix(b"V")) {
            // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
            let hex = f.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let rest = &f[hex..];
            hex > 0 && rest.len() > 1 && rest[0] == b'.' && in_set(&rest[1..], b"-._~!$&'()*+,;=:")
        } else {
            // IPv6address [ "%25" ZoneID ] (RFC 6874): hex digits, colons and dots, and a
            // non-empty zone of unreserved bytes and escapes.
            let (addr, zone) = match memchr::memmem::find(inner, b"%25") {
                Some(z) => (&inner[..z], Some(&inner[z + 3..])),
                None => (inner, None),
            };
            addr.contains(&b':')
                && addr
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
                && zone.is_none_or(|z| !z.is_empty() && in_set(z, b"-._~%") && pct_ok(z))
        };
        if !ok {
            return false;
        }
        &lit[close + 1..]
    };
    match rest.strip_prefix(b":") {
        None => rest.is_empty(),
        Some(port) => port.iter().all(u8::is_ascii_digit),
    }
}

/// Bytes of a registered name (RFC 3986 §3.2.2: unreserved, `%`, sub-delims but `,`).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'='
            );
        b += 1;
    }
    t
};

/// Every `%` in `s` starts a `%HH` escape.
fn pct_ok(s: &[u8]) -> bool {
    let hex = |i: usize| s.get(i).is_some_and(u8::is_ascii_hexdigit);
    memchr::memchr_iter(b'%', s).all(|i| hex(i + 1) && hex(i + 2))
}

/// Parse a chunk-size line: hex digits, then optional extensions after `;` (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, FrameError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FrameError::BadRequest);
    }
    let rest = &line[digits..];
    let ext = rest.iter().position(|&b| b != b' ' && b != b'\t');
    if let Some(i) = ext {
        if rest[i] != b';' {
            return Err(FrameError::BadRequest);
        }
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| FrameError::BadRequest)?;
    u64::from_str_radix(s, 16).map_err(|_| FrameError::BadRequest)
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
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Write a response head for a body of `len` bytes, for a request of `http10` (an HTTP/1.0
/// client keeps the connection only when the response says `Connection: keep-alive`).
pub fn write_head_for(out: &mut Vec<u8>, status: u16, len: usize, keep_alive: bool, http10: bool) {
    head_lines(out, status, len);
    out.extend_from_slice(match (keep_alive, http10) {
        (true, true) => b"Connection: keep-alive\r\n\r\n".as_slice(),
        (true, false) => b"\r\n",
        (false, _) => b"Connection: close\r\n\r\n",
    });
}

/// Write a response head for a body of `len` bytes.
pub fn write_head(out: &mut Vec<u8>, status: u16, len: usize, keep_alive: bool) {
    write_head_for(out, status, len, keep_alive, false)
}

/// The path and query of a request target, as (a `/` to put first, the rest). A server must
/// accept the absolute form (`http://host:port/p?q`, RFC 9112 §3.2.2), which proxies send: its
/// scheme and authority go, and an empty path is `/`. Other targets are kept as they are.
fn origin_form(target: &str) -> (bool, &str) {
    let rest = ["http://", "https://"].iter().find_map(|s| {
        target
            .get(..s.len())
            .filter(|p| p.eq_ignore_ascii_case(s))
            .map(|_| &target[s.len()..])
    });
    let Some(rest) = rest else {
        return (false, target);
    };
    match rest.find(['/', '?']) {
        Some(i) => (rest.as_bytes()[i] == b'?', &rest[i..]),
        None => (true, ""),
    }
}

/// The status line and `Content-Length`, without `fmt` (once per response on the hot path).
fn head_lines(out: &mut Vec<u8>, status: u16, len: usize) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(n.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(n.format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_byte_for_byte() {
        let head = |status, len, ka, h10| {
            let mut v = Vec::new();
            write_head_for(&mut v, status, len, ka, h10);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            head(200, 64, true, false),
            "HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n"
        );
        assert_eq!(
            head(404, 0, false, false),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            head(200, 18446744073709551615, true, true),
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            head(507, 5, false, true),
            "HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
        let mut v = Vec::new();
        write_head(&mut v, 200, 7, false);
        assert_eq!(v, head(200, 7, false, false).into_bytes());
    }

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
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Found by fuzzing (`http_framing`): whether a bad request line is a 505 or a 400 was
    /// decided by searching every byte received so far for `HTTP/`, so it depended on how the
    /// stream was cut (a later request or body in the same chunk could contain `HTTP/`).
    #[test]
    fn bad_version_status_does_not_depend_on_later_bytes() {
        let s: &[u8] =
            b"POST /k 1H1\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.1\r\nHost: x\r\n\r\n";
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

    /// The absolute form a proxy sends (RFC 9112 §3.2.2) is served like the origin form.
    #[test]
    fn absolute_form_targets_become_paths() {
        assert_eq!(origin_form("http://x/p?q=1"), (false, "/p?q=1"));
        assert_eq!(origin_form("HTTP://x:8080"), (true, ""));
        assert_eq!(origin_form("https://x?q"), (true, "?q"));
        assert_eq!(origin_form("/http://x/p"), (false, "/http://x/p"));
        assert_eq!(origin_form("*"), (false, "*"));
        let ev = feed_all(&[b"GET http://h:1/k?a HTTP/1.1\r\nHost: h\r\n\r\n"]);
        assert_eq!(req(&ev[0]).path, "/k?a");
        let ev = feed_all(&[b"GET https://h HTTP/1.1\r\nHost: h\r\n\r\n"]);
        assert_eq!(req(&ev[0]).path, "/");
    }

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let s = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
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
        let s: &[u8] = b"POST /k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldPOST /k2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
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
        assert_eq!(st(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"), 411);
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(st(b"GET / HTTP/2.0\r\n\r\n"), 505);
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
            &b"X: y\r\n".repeat(100),
            b"\r\n",
        ]
        .concat();
        assert_eq!(st(&many), 431);
        let long: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nHost: x\r\nX: "[..],
            &vec![b'a'; 20_000],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(st(&long), 431);
        // The request line alone past the limit: the URI is too long.
        let uri: Vec<u8> = [&b"GET /"[..], &vec![b'a'; 20_000], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(st(&uri), 414);
        assert_eq!(reason(414), "URI Too Long");
    }

    #[test]
    fn after_an_error_input_is_ignored() {
        let ev = feed_all(&[b"BAD\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
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
    fn connection_tokens_are_case_insensitive_lists() {
        let ev = feed_all(&[
            b"GET / HTTP/1.0\r\nConnection: Upgrade, Keep-Alive \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo,\tCLOSE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n",
        ]);
        assert!(req(&ev[0]).keep_alive);
        assert!(!req(&ev[1]).keep_alive);
        assert!(req(&ev[2]).keep_alive, "`closed` is not `close`");
    }

    #[test]
    fn a_recycled_request_lends_its_path_to_the_next_head() {
        let mut f = RequestFramer::new(Limits::default());
        let mut out = Vec::new();
        f.feed(b"GET /first/path HTTP/1.1\r\nHost: x\r\n\r\n", &mut out);
        let Some(Event::Request(first)) = out.pop() else {
            panic!("a request")
        };
        let memory = first.path.as_ptr();
        f.recycle(first);
        f.feed(b"GET /2nd HTTP/1.1\r\nHost: x\r\n\r\n", &mut out);
        let second = req(&out[0]);
        assert_eq!(second.path, "/2nd");
        assert_eq!(
            second.path.as_ptr(),
            memory,
            "the path reused the recycled string"
        );
    }

    /// RFC 9112 §3.2: a request with two Host header fields, or a Host value that is not
    /// `uri-host [":" port]`, is answered 400. An empty value is allowed, and a missing one
    /// too (a deliberate deviation, see `parse_head`).
    #[test]
    fn host_is_at_most_once_and_well_formed() {
        let ok = |s: &[u8]| matches!(feed_all(&[s]).as_slice(), [Event::Request(_)]);
        let bad = |s: &[u8]| feed_all(&[s]) == vec![Event::Error(FrameError::BadRequest)];
        assert!(ok(b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"));
        assert!(ok(b"GET / HTTP/1.1\r\nhOsT: [::1]:80\r\n\r\n"));
        assert!(ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"));
        assert!(ok(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ok(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"));
        assert!(bad(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"));
        let with_host = |h: &[u8]| [&b"GET / HTTP/1.1\r\nHost: "[..], h, b"\r\n\r\n"].concat();
        for good in [
            &b"[fe80::1%25eth0]:8080"[..],
            b"[v1.fe80::a+b]",
            b"example.com.",
            b"a%41b",
            b"h:",
            b"1.2.3.4:0",
        ] {
            assert!(ok(&with_host(good)), "{:?}", String::from_utf8_lossy(good));
        }
        for evil in [
            &b"a?b"[..],
            b"a#b",
            b"a\\b",
            b"a,b",
            b"a:b:c",
            b"[::1",
            b"a]b",
            b"a:80x",
            b"%",
            b"%zz",
            b"[]",
            b"[zz:zz]",
            b"[::1%25]",
            b"[vvvv]",
            b"[v.12]",
            "\u{e9}.com".as_bytes(),
        ] {
            assert!(bad(&with_host(evil)), "{:?}", String::from_utf8_lossy(evil));
        }
        // A malformed request is a 400 before an unmet expectation is a 417.
        assert!(bad(
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\nHost: b\r\n\r\n"
        ));
        assert_eq!(
            feed_all(&[b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n"]),
            vec![Event::Error(FrameError::Expectation)]
        );
    }

    #[test]
    fn needed_from_tracks_the_oldest_needed_byte() {
        let mut f = RequestFramer::new(Limits::default());
        let mut out = Vec::new();
        f.feed(
            b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab",
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(f.needed_from(), 48, "body start");
        f.feed(b"cdGET", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.needed_from(), 52, "start of the partial next head");
    }

    fn body(s: &[u8], r: &Request) -> Vec<u8> {
        r.data()
            .flat_map(|d| s[d.start as usize..d.end as usize].to_vec())
            .collect()
    }

    #[test]
    fn chunked_body_is_its_chunk_data_however_cut() {
        let s: &[u8] = b"POST /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let whole = feed_all(&[s]);
        assert_eq!(whole.len(), 2, "{whole:?}");
        let r = req(&whole[0]);
        assert!(r.chunked);
        assert_eq!(body(s, r), b"hello world");
        assert_eq!(r.body_len(), 11);
        assert_eq!(
            r.body.end as usize,
            s.len() - b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".len()
        );
        assert_eq!(req(&whole[1]).path, "/");
        for i in 0..s.len() {
            for j in i..s.len() {
                let cut = feed_all(&[&s[..i], &s[i..j], &s[j..]]);
                assert_eq!(cut.len(), 2, "split at {i},{j}");
                assert_eq!(body(s, req(&cut[0])), b"hello world", "split at {i},{j}");
            }
        }
    }

    #[test]
    fn bare_cr_and_folded_headers_are_refused() {
        let first = |s: &[u8]| feed_all(&[s]).into_iter().next();
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n\tc\r\n\r\n",
        ] {
            assert_eq!(
                first(bad),
                Some(Event::Error(FrameError::BadRequest)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ok = first(b"GET / HTTP/1.1\r\nHost: x\r\nA: b\tc d\r\n\r\n");
        assert!(matches!(ok, Some(Event::Request(_))), "{ok:?}");
    }

    #[test]
    fn chunked_limits_and_malformed_chunks() {
        let st = |s: &[u8]| match feed_all(&[s]).pop() {
            Some(Event::Error(e)) => e.status(),
            other => panic!("{other:?}"),
        };
        let te = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let big = format!("{te}100001\r\n");
        assert_eq!(st(big.as_bytes()), 413, "over max_body");
        assert_eq!(st(format!("{te}zz\r\n").as_bytes()), 400);
        assert_eq!(
            st(format!("{te}5\r\nhelloXX").as_bytes()),
            400,
            "no CRLF after data"
        );
        assert_eq!(st(format!("{te}5\nhello").as_bytes()), 400, "bare LF");
        assert_eq!(
            st(format!("{te}5 x\r\n").as_bytes()),
            400,
            "junk after size"
        );
        let long = format!("{te}5;{}", "e".repeat(2000));
        assert_eq!(st(long.as_bytes()), 400, "endless chunk extension");
        let trailers = format!("{te}0\r\n{}", "X: y\r\n".repeat(4000));
        assert_eq!(st(trailers.as_bytes()), 431, "endless trailers");
    }

    /// RFC 9112 §6.1–6.3: every way two parsers could disagree on where a body ends is 400.
    #[test]
    fn smuggling_attempts_are_refused() {
        let st = |s: &str| match feed_all(&[s.as_bytes()]).pop() {
            Some(Event::Error(e)) => e.status(),
            other => panic!("{s:?}: {other:?}"),
        };
        let cases = [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nX: a\rContent-Length: 1\r\n\r\n",
        ];
        for c in cases {
            assert_eq!(st(c), 400, "{c:?}");
        }
        // Values a lenient parser reads differently (found by review).
        let bytes_cases: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \xc2\x85chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\xc2\xa0\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
        ];
        for c in bytes_cases {
            match feed_all(&[c]).pop() {
                Some(Event::Error(e)) => {
                    assert_eq!(e.status(), 400, "{:?}", String::from_utf8_lossy(c))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(c)),
            }
        }
        // The same length twice is allowed (RFC 9112 §6.3 item 5).
        let ok = feed_all(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ]);
        assert_eq!(req(&ok[0]).body_len(), 1);
        assert_eq!(
            st("POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\n"),
            417
        );
    }

    #[test]
    fn expect_100_continue_is_announced_before_the_body() {
        let mut f = RequestFramer::new(Limits::default());
        let mut out = Vec::new();
        f.feed(
            b"POST /k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            &mut out,
        );
        assert_eq!(out, vec![Event::Continue]);
        f.feed(b"abc", &mut out);
        assert!(matches!(out[1], Event::Request(_)));
        // An oversized body gets its 413 instead of a 100.
        let ev = feed_all(&[
            b"POST /k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
        ]);
        assert_eq!(ev, vec![Event::Error(FrameError::TooLarge)]);
    }

    /// Found by review: a body of many one-byte chunks (its data length is a running total,
    /// not re-summed per chunk, which made this quadratic).
    #[test]
    fn many_tiny_chunks_frame_whole() {
        let mut body = Vec::new();
        for _ in 0..60_000 {
            body.extend_from_slice(b"1\r\nx\r\n");
        }
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let req = [&head[..], &body, b"0\r\n\r\n"].concat();
        let mut f = RequestFramer::new(Limits {
            max_body: 1 << 20,
            ..Limits::default()
        });
        let mut out = Vec::new();
        f.feed(&req, &mut out);
        assert_eq!(req_of(&out).body_len(), 60_000);
        assert_eq!(req_of(&out).chunks.len(), 60_000);
    }

    fn req_of(ev: &[Event]) -> &Request {
        match ev.last() {
            Some(Event::Request(r)) => r,
            other => panic!("{other:?}"),
        }
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
