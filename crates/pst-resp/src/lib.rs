//! RESP2 (the Redis protocol) command framing over a byte stream that arrives in arbitrary
//! pieces, without copying bulk arguments; reply encoding. Pure code, no I/O.
//!
//! Like `pst-http`, arguments are reported as ranges of stream positions, so a `SET` value can
//! be stored straight from the pool buffers it arrived in. Both the multibulk form
//! (`*3\r\n$3\r\nSET\r\n...`) and inline commands (`PING\r\n`) are accepted; pipelining works.
#![forbid(unsafe_code)]

use std::ops::Range;

/// Limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest bulk argument (Redis: `proto-max-bulk-len`).
    pub max_bulk: u64,
    /// Most arguments per command.
    pub max_args: u64,
    /// Longest inline command or length line.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 1 << 20,
            max_args: 1 << 16,
            max_line: 64 << 10,
        }
    }
}

/// What framing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete command: its arguments as stream ranges (the first is the command name).
    Command(Vec<Range<u64>>),
    /// A complete inline command (`SET k "a b"\r\n`): its arguments decoded with Redis's
    /// quoting rules ([`split_args`]), so owned rather than ranges of the stream.
    Inline(Vec<Vec<u8>>),
    /// A protocol error (Redis replies `-ERR Protocol error: ...` and closes).
    Error(String),
}

#[derive(Debug)]
enum State {
    /// Between commands.
    Idle,
    /// Collecting a line (inline command, `*n` or `$n`) into `line`.
    Line(LineKind),
    /// Skipping bulk data up to this stream position, then CRLF.
    Bulk {
        end: u64,
    },
    /// Expecting the CRLF after a bulk argument; `got` bytes of it seen.
    BulkCrlf {
        got: u8,
    },
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Inline,
    ArrayLen,
    BulkLen,
}

/// Per-connection command framer.
#[derive(Debug)]
pub struct CommandFramer {
    limits: Limits,
    state: State,
    line: Vec<u8>,
    line_pos: u64,
    pos: u64,
    cmd_start: u64,
    args: Vec<Range<u64>>,
    want_args: u64,
}

/// Split an inline command line into arguments the way Redis does (`sdssplitargs`):
/// whitespace separates arguments; `"..."` takes the escapes `\n \r \t \b \a \\ \"` and
/// `\xHH`; `'...'` takes `\'`; a closing quote must be followed by whitespace or the end of
/// the line, and every quote must be closed, else "unbalanced quotes in request".
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    const UNBALANCED: &str = "unbalanced quotes in request";
    let space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b'\x0b' | b'\x0c' | 0);
    let hex = |b: u8| (b as char).to_digit(16);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut cur = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            let Some(&c) = line.get(i) else {
                if dq || sq {
                    return Err(UNBALANCED.into());
                }
                break;
            };
            if dq {
                match c {
                    b'\\'
                        if i + 3 < line.len()
                            && line[i + 1] == b'x'
                            && hex(line[i + 2]).is_some()
                            && hex(line[i + 3]).is_some() =>
                    {
                        let v = hex(line[i + 2]).unwrap_or(0) * 16 + hex(line[i + 3]).unwrap_or(0);
                        cur.push(v as u8);
                        i += 3;
                    }
                    b'\\' if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            o => o,
                        });
                    }
                    b'"' => {
                        // The closing quote must be followed by a space or nothing.
                        if line.get(i + 1).is_some_and(|&n| !space(n)) {
                            return Err(UNBALANCED.into());
                        }
                        i += 1;
                        break;
                    }
                    o => cur.push(o),
                }
            } else if sq {
                match c {
                    b'\\' if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    b'\'' => {
                        if line.get(i + 1).is_some_and(|&n| !space(n)) {
                            return Err(UNBALANCED.into());
                        }
                        i += 1;
                        break;
                    }
                    o => cur.push(o),
                }
            } else {
                match c {
                    c if space(c) => break,
                    b'"' => dq = true,
                    b'\'' => sq = true,
                    o => cur.push(o),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

impl CommandFramer {
    /// A framer for a new connection.
    pub fn new(limits: Limits) -> CommandFramer {
        CommandFramer {
            limits,
            state: State::Idle,
            line: Vec::new(),
            line_pos: 0,
            pos: 0,
            cmd_start: 0,
            args: Vec::new(),
            want_args: 0,
        }
    }

    /// Give back the argument list of a handled [`Event::Command`]: the next command's
    /// arguments go in it, so a connection's steady stream of commands allocates none.
    pub fn recycle(&mut self, mut args: Vec<Range<u64>>) {
        if self.args.capacity() == 0 {
            args.clear();
            self.args = args;
        }
    }

    /// Every byte before this stream position is no longer needed.
    pub fn needed_from(&self) -> u64 {
        match self.state {
            State::Idle | State::Dead => self.pos,
            _ => self.cmd_start,
        }
    }

    /// Feed the next chunk; complete commands (or one error, after which input is ignored) are
    /// appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        let base = self.pos;
        self.pos += chunk.len() as u64;
        let mut at = 0usize;
        while at < chunk.len() {
            let here = base + at as u64;
            match self.state {
                State::Dead => return,
                State::Idle => {
                    self.cmd_start = here;
                    self.args.clear();
                    self.line.clear();
                    self.line_pos = here;
                    if chunk[at] == b'*' {
                        at += 1;
                        self.state = State::Line(LineKind::ArrayLen);
                    } else {
                        self.state = State::Line(LineKind::Inline);
                    }
                }
                State::Line(kind) => {
                    if self.line.is_empty() && kind != LineKind::Inline {
                        self.line_pos = here;
                    }
                    let rest = &chunk[at..];
                    let (take, done) = match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    if self.line.len() + take > self.limits.max_line {
                        return self.fail("too big inline request", out);
                    }
                    self.line.extend_from_slice(&rest[..take]);
                    at += take;
                    if done {
                        if let Err(e) = self.line_done(kind, base + at as u64, out) {
                            return self.fail(e, out);
                        }
                    }
                }
                State::Bulk { end } => {
                    let need = end - here;
                    let have = (chunk.len() - at) as u64;
                    if have < need {
                        return;
                    }
                    at += need as usize;
                    self.state = State::BulkCrlf { got: 0 };
                }
                State::BulkCrlf { got } => {
                    let expect = if got == 0 { b'\r' } else { b'\n' };
                    if chunk[at] != expect {
                        return self.fail("expected CRLF after bulk argument", out);
                    }
                    at += 1;
                    if got == 0 {
                        self.state = State::BulkCrlf { got: 1 };
                    } else {
                        self.next_arg(out);
                    }
                }
            }
        }
    }

    fn fail(&mut self, why: impl Into<String>, out: &mut Vec<Event>) {
        self.state = State::Dead;
        self.line = Vec::new();
        out.push(Event::Error(why.into()));
    }

    /// A length line's number (`i64`, as `str::parse` reads it: an optional sign, then one or
    /// more ASCII digits), read from the bytes directly: it is on every request's path.
    fn parse_len(line: &[u8]) -> Option<i64> {
        let s = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))?;
        let (neg, digits) = match s.split_first()? {
            (b'-', rest) => (true, rest),
            (b'+', rest) => (false, rest),
            _ => (false, s),
        };
        if digits.is_empty() {
            return None;
        }
        let mut n: i64 = 0;
        for &d in digits {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            n = n.checked_mul(10)?;
            n = if neg {
                n.checked_sub(d as i64)?
            } else {
                n.checked_add(d as i64)?
            };
        }
        Some(n)
    }

    /// A line ended; `after` is the stream position right after its '\n'.
    fn line_done(
        &mut self,
        kind: LineKind,
        after: u64,
        out: &mut Vec<Event>,
    ) -> Result<(), String> {
        match kind {
            LineKind::Inline => {
                let l = &self.line;
                let end = l.len() - if l.ends_with(b"\r\n") { 2 } else { 1 };
                let args = split_args(&l[..end])?;
                self.state = State::Idle;
                if !args.is_empty() {
                    out.push(Event::Inline(args));
                }
                Ok(())
            }
            LineKind::ArrayLen => {
                let n = Self::parse_len(&self.line).ok_or("invalid multibulk length")?;
                if n > self.limits.max_args as i64 {
                    return Err("invalid multibulk length".into());
                }
                self.line.clear();
                if n <= 0 {
                    self.state = State::Idle;
                    return Ok(());
                }
                self.want_args = n as u64;
                self.state = State::Line(LineKind::BulkLen);
                Ok(())
            }
            LineKind::BulkLen => {
                if self.line.first() != Some(&b'$') {
                    let got = self.line.first().map_or(' ', |&b| b as char);
                    return Err(format!("expected '$', got '{}'", got.escape_default()));
                }
                let n = Self::parse_len(&self.line[1..])
                    .ok_or_else(|| "invalid bulk length".to_owned())?;
                if n < 0 || n as u64 > self.limits.max_bulk {
                    return Err("invalid bulk length".into());
                }
                self.line.clear();
                // The data starts right after the length line.
                let data_start = after;
                self.args.push(data_start..data_start + n as u64);
                self.state = State::Bulk {
                    end: data_start + n as u64,
                };
                Ok(())
            }
        }
    }

    fn next_arg(&mut self, out: &mut Vec<Event>) {
        if (self.args.len() as u64) < self.want_args {
            self.line.clear();
            self.state = State::Line(LineKind::BulkLen);
        } else {
            self.state = State::Idle;
            out.push(Event::Command(std::mem::take(&mut self.args)));
        }
    }
}

/// Reply encoders (RESP2).
pub mod reply {
    use std::io::Write;

    /// `+OK`-style simple string.
    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `-ERR ...` error (the message must carry its prefix, e.g. `ERR` or `WRONGTYPE`).
    pub fn error(out: &mut Vec<u8>, msg: &str) {
        out.push(b'-');
        out.extend_from_slice(msg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `:n` integer.
    pub fn int(out: &mut Vec<u8>, n: i64) {
        let _ = write!(out, ":{n}\r\n");
    }

    /// Bulk string header `$len\r\n` (the caller appends the bytes and then [`crlf`]).
    pub fn bulk_head(out: &mut Vec<u8>, len: usize) {
        let _ = write!(out, "${len}\r\n");
    }

    /// A whole bulk string.
    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        bulk_head(out, b.len());
        out.extend_from_slice(b);
        crlf(out);
    }

    /// `$-1` null bulk.
    pub fn null(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    /// `*-1` null array (an aborted `EXEC`).
    pub fn null_array(out: &mut Vec<u8>) {
        out.extend_from_slice(b"*-1\r\n");
    }

    /// `*n` array header.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        let _ = write!(out, "*{n}\r\n");
    }

    /// CRLF.
    pub fn crlf(out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    /// The length parser reads exactly what `str::parse::<i64>` does.
    #[test]
    fn parse_len_agrees_with_str_parse() {
        let cases = [
            "0",
            "1",
            "42",
            "-1",
            "+7",
            "-",
            "+",
            "",
            "007",
            "1a",
            " 1",
            "1 ",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "--1",
            "+-1",
        ];
        for c in cases {
            let want: Option<i64> = c.parse().ok();
            for end in ["\r\n", "\n"] {
                let line = format!("{c}{end}");
                assert_eq!(CommandFramer::parse_len(line.as_bytes()), want, "{c:?}");
            }
        }
        assert_eq!(CommandFramer::parse_len(b"12"), None, "no line end");
    }

    use super::*;

    fn frame(chunks: &[&[u8]]) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
        let mut f = CommandFramer::new(Limits::default());
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        let stream: Vec<u8> = chunks.concat();
        let mut cmds = Vec::new();
        let mut err = None;
        for e in out {
            match e {
                Event::Command(args) => cmds.push(
                    args.iter()
                        .map(|r| stream[r.start as usize..r.end as usize].to_vec())
                        .collect(),
                ),
                Event::Inline(args) => cmds.push(args),
                Event::Error(e) => err = Some(e),
            }
        }
        (cmds, err)
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let split = |s: &[u8]| split_args(s);
        assert_eq!(
            split(b"set \"a b\" 'c d'").unwrap(),
            vec![b"set".to_vec(), b"a b".to_vec(), b"c d".to_vec()]
        );
        assert_eq!(
            split(b"x \"\\x41\\n\\\"\\q\" 'it\\'s' \"\"").unwrap(),
            vec![
                b"x".to_vec(),
                b"A\n\"q".to_vec(),
                b"it's".to_vec(),
                Vec::new()
            ]
        );
        assert_eq!(split(b"  ").unwrap(), Vec::<Vec<u8>>::new());
        for bad in [
            &b"set \"\"\"k\"\"\" v"[..],
            b"a \"open",
            b"a 'open",
            b"a \"x\"y",
            b"a 'x'y",
        ] {
            assert_eq!(
                split(bad).unwrap_err(),
                "unbalanced quotes in request",
                "{bad:?}"
            );
        }
        // Through the framer: the error ends the connection's input.
        let (cmds, err) = frame(&[b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n"]);
        assert!(cmds.is_empty());
        assert_eq!(err.as_deref(), Some("unbalanced quotes in request"));
    }

    #[test]
    fn multibulk_and_inline_pipelined() {
        let s = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n  ECHO   hi  \r\n";
        let (cmds, err) = frame(&[s]);
        assert_eq!(err, None);
        assert_eq!(
            cmds,
            vec![
                vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()],
                vec![b"PING".to_vec()],
                vec![b"GET".to_vec(), b"k".to_vec()],
                vec![b"ECHO".to_vec(), b"hi".to_vec()],
            ]
        );
    }

    #[test]
    fn every_split_gives_the_same_commands() {
        let s: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\nPING\n*1\r\n$0\r\n\r\n";
        let whole = frame(&[s]);
        assert_eq!(whole.0.len(), 3);
        for i in 0..s.len() {
            for j in i..s.len() {
                assert_eq!(frame(&[&s[..i], &s[i..j], &s[j..]]), whole, "split {i},{j}");
            }
        }
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(
            frame(&[b"*x\r\n"]).1.as_deref(),
            Some("invalid multibulk length")
        );
        assert_eq!(
            frame(&[b"*1\r\n+x\r\n"]).1.as_deref(),
            Some("expected '$', got '+'")
        );
        assert_eq!(
            frame(&[b"*1\r\n$99999999999\r\n"]).1.as_deref(),
            Some("invalid bulk length")
        );
        assert_eq!(
            frame(&[b"*1\r\n$1\r\nabc"]).1.as_deref(),
            Some("expected CRLF after bulk argument")
        );
        let long = vec![b'a'; 70_000];
        assert_eq!(frame(&[&long]).1.as_deref(), Some("too big inline request"));
    }

    #[test]
    fn needed_from_covers_partial_command() {
        let mut f = CommandFramer::new(Limits::default());
        let mut out = Vec::new();
        f.feed(b"PING\r\n*2\r\n$3\r\nGET", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.needed_from(), 6);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..100), 0..8)) {
            let mut f = CommandFramer::new(Limits { max_bulk: 64, max_args: 8, max_line: 128 });
            let mut out = Vec::new();
            let mut total = 0u64;
            for c in &chunks {
                f.feed(c, &mut out);
                total += c.len() as u64;
            }
            for e in &out {
                if let Event::Command(args) = e {
                    for a in args {
                        proptest::prop_assert!(a.start <= a.end && a.end <= total);
                    }
                }
            }
        }
    }
}
