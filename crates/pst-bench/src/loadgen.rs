//! The built-in load generator: many connections, closed loop, optional pipelining depth. It is
//! itself a pst port client (io_uring, one enter per batch for all connections), so it spends
//! little CPU per request and is rarely the bottleneck.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use pst::{ConnId, Geometry, PersistMode, Pool, Port, PortConfig, SlotKind};

/// How responses are delimited.
#[derive(Debug, Clone, Copy)]
pub enum Framer {
    /// Each response is exactly this many bytes (echo).
    Fixed(usize),
    /// HTTP/1.1 responses with `Content-Length`.
    Http,
    /// RESP replies.
    Resp,
}

/// Per-connection response parsing state.
#[derive(Debug, Default)]
struct Parse {
    /// Bytes of the current response received so far (fixed framing), or unparsed bytes.
    got: usize,
    carry: Vec<u8>,
    /// Errors seen in responses (non-2xx, RESP errors).
    bad: u64,
}

impl Parse {
    /// Feed received bytes; return how many responses completed.
    fn feed(&mut self, framer: Framer, data: &[u8]) -> usize {
        match framer {
            Framer::Fixed(n) => {
                self.got += data.len();
                let done = self.got / n;
                self.got %= n;
                done
            }
            Framer::Http => {
                self.carry.extend_from_slice(data);
                let mut done = 0;
                let mut at = 0;
                loop {
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut r = httparse::Response::new(&mut headers);
                    let Ok(httparse::Status::Complete(head)) = r.parse(&self.carry[at..]) else {
                        break;
                    };
                    let len: usize = r
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0);
                    if self.carry.len() - at < head + len {
                        break;
                    }
                    if !r.code.is_some_and(|c| (200..300).contains(&c)) {
                        self.bad += 1;
                    }
                    at += head + len;
                    done += 1;
                }
                self.carry.drain(..at);
                done
            }
            Framer::Resp => {
                self.carry.extend_from_slice(data);
                let mut done = 0;
                let mut at = 0;
                while let Some(n) = resp_reply_len(&self.carry[at..]) {
                    if self.carry[at] == b'-' {
                        self.bad += 1;
                    }
                    at += n;
                    done += 1;
                }
                self.carry.drain(..at);
                done
            }
        }
    }
}

/// Length of the complete RESP reply at the start of `b`, if complete.
fn resp_reply_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")? + 2;
    match b.first()? {
        b'+' | b'-' | b':' => Some(line_end),
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..line_end - 2])
                .ok()?
                .parse()
                .ok()?;
            if n < 0 {
                return Some(line_end);
            }
            let total = line_end + n as usize + 2;
            (b.len() >= total).then_some(total)
        }
        b'*' => {
            let n: i64 = std::str::from_utf8(&b[1..line_end - 2])
                .ok()?
                .parse()
                .ok()?;
            let mut at = line_end;
            for _ in 0..n.max(0) {
                at += resp_reply_len(&b[at..])?;
            }
            Some(at)
        }
        _ => Some(line_end),
    }
}

/// Connections that send the same kind of request (a `kvmix` run has a GET group and a SET
/// group); each group gets its own latency histogram.
#[derive(Debug, Clone)]
pub struct ConnGroup {
    /// Connections in the group.
    pub conns: usize,
    /// Bytes of one request, per connection index within the group (`request(i, size)`): e.g.
    /// a per-connection key.
    pub request: fn(usize, usize) -> Vec<u8>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address.
    pub addr: SocketAddr,
    /// The connections, by group (one group for the single-request workloads).
    pub groups: Vec<ConnGroup>,
    /// Requests outstanding per connection.
    pub depth: usize,
    /// Request size parameter passed to each group's `request`.
    pub size: usize,
    /// Response framing.
    pub framer: Framer,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Measured window.
    pub secs: Duration,
    /// Print progress to stderr every second.
    pub progress: Option<String>,
}

impl LoadSpec {
    /// Connections over all groups.
    pub fn conns(&self) -> usize {
        self.groups.iter().map(|g| g.conns).sum()
    }
}

/// What one group measured inside the window.
#[derive(Debug)]
pub struct GroupResult {
    /// Completed requests.
    pub requests: u64,
    /// Latency histogram (µs).
    pub hist: Histogram<u64>,
}

/// What was measured inside the window.
#[derive(Debug)]
pub struct LoadResult {
    /// Completed requests.
    pub requests: u64,
    /// Window length.
    pub secs: f64,
    /// Latency histogram (µs), all groups.
    pub hist: Histogram<u64>,
    /// CPU time of the client thread in the window.
    pub cpu: Duration,
    /// Connections that failed, plus error responses.
    pub errors: u64,
    /// Per group, in the order of [`LoadSpec::groups`].
    pub groups: Vec<GroupResult>,
}

struct ConnState {
    id: ConnId,
    group: usize,
    sent: VecDeque<Instant>,
    parse: Parse,
    alive: bool,
    request: Vec<u8>,
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Run the load; `mark(true)` is called at the start of the window and `mark(false)` at its end
/// (the caller snapshots the server's counters there).
pub fn run(spec: &LoadSpec, mut mark: impl FnMut(bool)) -> anyhow::Result<LoadResult> {
    let n_conns = spec.conns();
    let per_req = spec
        .groups
        .iter()
        .map(|g| (g.request)(0, spec.size).len().div_ceil(2048) + 1)
        .max()
        .unwrap_or(1);
    let bufs = (n_conns * spec.depth * per_req * 4 + n_conns * 8).max(4096) as u32;
    let pool = Arc::new(Pool::anonymous(
        Geometry {
            buf_size: 2048,
            buf_count: bufs,
            log_len: 0,
        },
        PersistMode::None,
    )?);
    let mut port = Port::whole(pool, PortConfig::default())?;
    let mut conns: Vec<ConnState> = Vec::with_capacity(n_conns);
    let mut by_index: Vec<usize> = Vec::new();
    for (g, group) in spec.groups.iter().enumerate() {
        for i in 0..group.conns {
            let s = TcpStream::connect(spec.addr)
                .with_context(|| format!("connecting to {}", spec.addr))?;
            let id = port.register(s)?;
            let ix = id.index() as usize;
            if by_index.len() <= ix {
                by_index.resize(ix + 1, usize::MAX);
            }
            by_index[ix] = conns.len();
            conns.push(ConnState {
                id,
                group: g,
                sent: VecDeque::new(),
                parse: Parse::default(),
                alive: true,
                request: (group.request)(i, spec.size),
            });
        }
    }
    let start = Instant::now();
    for c in conns.iter_mut() {
        for _ in 0..spec.depth {
            port.send_copy(c.id, &c.request)
                .map_err(anyhow::Error::msg)?;
            c.sent.push_back(start);
        }
    }
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let mut hist = new_hist()?;
    let mut groups = spec
        .groups
        .iter()
        .map(|_| {
            Ok(GroupResult {
                requests: 0,
                hist: new_hist()?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let window_start = start + spec.warmup;
    let window_end = window_start + spec.secs;
    let mut measuring = false;
    let mut requests = 0u64;
    let mut errors = 0u64;
    let mut cpu0 = Duration::ZERO;
    let mut measured_from = start;
    let measured;
    let mut next_progress = window_start + Duration::from_secs(1);
    let mut last_count = 0u64;
    loop {
        port.sync(Some(Duration::from_millis(1)))?;
        let now = Instant::now();
        if !measuring && now >= window_start {
            measuring = true;
            mark(true);
            cpu0 = thread_cpu();
            measured_from = now;
        }
        if measuring && now >= window_end {
            mark(false);
            measured = now - measured_from;
            break;
        }
        while let Some(s) = port.next_rx() {
            let Some(&ci) = by_index.get(s.conn.index() as usize) else {
                continue;
            };
            let c = &mut conns[ci];
            match s.kind {
                SlotKind::Data => {
                    let done = c.parse.feed(spec.framer, port.payload(&s));
                    for _ in 0..done {
                        let t0 = c.sent.pop_front().unwrap_or(now);
                        if measuring {
                            let us = (now - t0).as_micros().max(1) as u64;
                            requests += 1;
                            let _ = hist.record(us);
                            let g = &mut groups[c.group];
                            g.requests += 1;
                            let _ = g.hist.record(us);
                        }
                        if port.send_copy(c.id, &c.request).is_ok() {
                            c.sent.push_back(now);
                        }
                    }
                }
                SlotKind::End | SlotKind::Error(_) => {
                    if c.alive {
                        errors += 1;
                        c.alive = false;
                    }
                }
                SlotKind::Accepted => {}
            }
        }
        if let Some(label) = &spec.progress {
            if measuring && now >= next_progress {
                let done = now.duration_since(window_start).as_secs_f64();
                eprintln!(
                    "  {label}: {done:.0}/{:.0} s, {:.0} req/s",
                    spec.secs.as_secs_f64(),
                    (requests - last_count) as f64
                );
                last_count = requests;
                next_progress += Duration::from_secs(1);
            }
        }
        if errors as usize == n_conns {
            anyhow::bail!("every connection failed");
        }
    }
    let cpu = thread_cpu() - cpu0;
    errors += conns.iter().map(|c| c.parse.bad).sum::<u64>();
    port.close_all();
    for _ in 0..3 {
        port.sync(Some(Duration::from_millis(1)))?;
    }
    Ok(LoadResult {
        requests,
        secs: measured.as_secs_f64(),
        hist,
        cpu,
        errors,
        groups,
    })
}

/// Send `requests` to `addr` on one connection, pipelined a chunk at a time, and wait for every
/// reply (`pst bench kvmix` stores the keys its readers will GET this way). An error reply is an
/// error: the run would measure misses otherwise.
pub fn preload(addr: SocketAddr, framer: Framer, requests: &[Vec<u8>]) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut parse = Parse::default();
    let mut buf = vec![0u8; 64 << 10];
    for chunk in requests.chunks(64) {
        for r in chunk {
            s.write_all(r)?;
        }
        let mut done = 0;
        while done < chunk.len() {
            let n = s.read(&mut buf).context("reading preload replies")?;
            anyhow::ensure!(n > 0, "the server closed the connection during preload");
            done += parse.feed(framer, &buf[..n]);
        }
    }
    anyhow::ensure!(
        parse.bad == 0,
        "{} preload requests were refused by the server",
        parse.bad
    );
    Ok(())
}
