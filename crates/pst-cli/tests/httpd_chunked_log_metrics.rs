//! `pst httpd` with the clients people use, on both engines (issue 13): chunked uploads
//! (curl from stdin, Python `requests` streaming a generator), `ab`, `h2load --h1` and `wrk`;
//! every body read back byte for byte, also after a `kill -9` and restart. Request smuggling
//! attempts get 400 and a closed connection; `Expect: 100-continue`, HTTP/1.0 and `HEAD` work;
//! `GET /metrics` parses as Prometheus text (by the official Python client's parser and by
//! the format rules checked here).
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    out.stdout
}

/// Send raw bytes; everything the server sends until it closes (or 5 s pass).
fn raw(addr: SocketAddr, req: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const PY_UPLOAD: &str = r#"
import sys, requests
url, n = sys.argv[1], int(sys.argv[2])
def gen():
    x = 1
    sent = 0
    i = 0
    while sent < n:
        size = min(n - sent, 1 + (i * 7919) % 20000)
        yield bytes((sent + k) % 251 for k in range(size))
        sent += size
        i += 1
r = requests.post(url, data=gen())
assert r.status_code == 201, (r.status_code, r.text)
back = requests.get(url).content
assert back == bytes(k % 251 for k in range(n)), "body differs"
print("ok", r.headers.get("Pst-Seq"))
"#;

fn real_clients(engine: &str) {
    let dir = common::tmpdir(&format!("httpd-chunked-{engine}"));
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap();
    let addr = common::free_addr();
    let url = |path: &str| format!("http://{addr}{path}");
    let args = [
        "httpd",
        "--engine",
        engine,
        "--pool",
        p,
        "--pool-size",
        "256MiB",
        "--persist",
        "fsync",
        "--max-body",
        "16MiB",
    ];
    let mut s = common::ServerProc::start(&args, addr);

    // curl: a 10 MiB chunked upload from stdin (`-T -`), and one with an explicit header.
    let big = pseudo_random(10 << 20, 7);
    let file = dir.join("big");
    std::fs::write(&file, &big).unwrap();
    let out = run(Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
        ])
        .args(["-T", "-", &url("/stdin")])
        .stdin(std::fs::File::open(&file).unwrap()));
    assert_eq!(out, "201", "curl -T - upload");
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url("/te"),
    ]);
    assert_eq!(out, b"201");
    assert!(curl(&[&url("/stdin")]) == big, "curl -T - body read back");
    assert!(curl(&[&url("/te")]) == big, "chunked body read back");

    // Python requests streaming a generator (chunk sizes 1..20000 bytes).
    let py = run(Command::new("python3").args(["-c", PY_UPLOAD, &url("/py"), "3000000"]));
    assert!(py.starts_with("ok"), "{py}");

    // ab (keep-alive GETs, and POSTs of a file), h2load --h1, wrk.
    let small = dir.join("small");
    std::fs::write(&small, pseudo_random(3000, 3)).unwrap();
    let ab = run(Command::new("ab").args(["-q", "-k", "-n", "2000", "-c", "8", &url("/")]));
    assert!(ab.contains("Failed requests:        0"), "{ab}");
    assert!(!ab.contains("Non-2xx"), "{ab}");
    let ab = run(Command::new("ab").args([
        "-q",
        "-n",
        "500",
        "-c",
        "4",
        "-p",
        small.to_str().unwrap(),
        "-T",
        "application/octet-stream",
        &url("/ab"),
    ]));
    assert!(ab.contains("Failed requests:        0"), "{ab}");
    assert!(!ab.contains("Non-2xx"), "{ab}");
    let h2 = run(Command::new("h2load").args(["--h1", "-n", "2000", "-c", "8", &url("/")]));
    assert!(
        h2.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load GET:\n{h2}"
    );
    let h2 = run(Command::new("h2load").args([
        "--h1",
        "-n",
        "500",
        "-c",
        "4",
        "-d",
        small.to_str().unwrap(),
        &url("/h2"),
    ]));
    assert!(
        h2.contains("500 succeeded, 0 failed, 0 errored"),
        "h2load POST:\n{h2}"
    );
    let wrk = run(Command::new("wrk").args(["-t1", "-c8", "-d1s", &url("/")]));
    assert!(!wrk.contains("Non-2xx"), "{wrk}");
    assert!(wrk.contains("Requests/sec"), "{wrk}");

    // Everything survives a kill -9 and restart, byte for byte.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let _s = common::ServerProc::start(&args, addr);
    assert!(
        curl(&[&url("/stdin")]) == big,
        "curl -T - body after restart"
    );
    assert!(curl(&[&url("/te")]) == big, "chunked body after restart");
    let want: Vec<u8> = (0..3_000_000).map(|k| (k % 251) as u8).collect();
    assert!(curl(&[&url("/py")]) == want, "generator body after restart");
    let small_body = std::fs::read(&small).unwrap();
    assert!(curl(&[&url("/ab")]) == small_body, "ab body after restart");
    assert!(
        curl(&[&url("/h2")]) == small_body,
        "h2load body after restart"
    );
}

#[test]
fn real_clients_uring() {
    real_clients("uring");
}

#[test]
fn real_clients_epoll() {
    real_clients("epoll");
}

fn conformance(engine: &str) {
    let dir = common::tmpdir(&format!("httpd-conf-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let _s = common::ServerProc::start(
        &[
            "httpd",
            "--engine",
            engine,
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "32MiB",
        ],
        addr,
    );
    // RFC 9112 §6.1–6.3 and §2.2: 400, then the connection closes.
    let smuggling: &[&[u8]] = &[
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  b\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: x\rContent-Length: 3\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
    ];
    for req in smuggling {
        let (out, closed) = raw(addr, req);
        assert!(
            out.starts_with("HTTP/1.1 400 "),
            "{}: {out:?}",
            String::from_utf8_lossy(req)
        );
        assert!(closed, "connection closes after a 400");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "one response: {out:?}");
    }
    let (out, _) = raw(addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 404"), "nothing was stored: {out}");

    // A chunked body with extensions and trailers, pipelined with a GET of it.
    let (out, _) = raw(
        addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n3\r\nefg\r\n0\r\nTrailer: t\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert!(out.ends_with("\r\n\r\nabcdefg"), "{out}");

    // Expect: 100-continue: the interim response comes before the body is sent.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    r.read_line(&mut line).unwrap();
    c.write_all(b"hello").unwrap();
    assert_eq!(common::read_http(&mut r, false).unwrap().status, 201);
    c.write_all(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    assert_eq!(common::read_http(&mut r, false).unwrap().status, 417);

    // HTTP/1.0 closes after the response unless asked to keep alive; HEAD has no body.
    let (out, closed) = raw(addr, b"GET /e HTTP/1.0\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("hello") && closed,
        "{out}"
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    c.write_all(b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD /e HTTP/1.1\r\nHost: x\r\n\r\nGET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(common::read_http(&mut r, false).unwrap().body, b"hello");
    let head = common::read_http(&mut r, true).unwrap();
    assert_eq!(
        head.header("content-length"),
        Some("5"),
        "HEAD says the length"
    );
    let last = common::read_http(&mut r, false).unwrap();
    assert_eq!(
        last.body, b"hello",
        "HEAD sent no body: the next response follows at once"
    );
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after Connection: close");
}

#[test]
fn conformance_uring() {
    conformance("uring");
}

#[test]
fn conformance_epoll() {
    conformance("epoll");
}

/// The Prometheus text format's rules that matter to a scraper: every sample belongs to a
/// family declared by `# TYPE` before it, names and labels are well formed, values parse,
/// counters are not negative, histogram buckets are cumulative and end in `+Inf` = `_count`.
fn check_prometheus(text: &str) {
    let mut types: Vec<(String, String)> = Vec::new();
    let mut buckets: Vec<(String, f64)> = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with('\n'), "ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("HELP"), Some(n), Some(_)) => assert!(valid_name(n), "{line}"),
                (Some("TYPE"), Some(n), Some(t)) => {
                    assert!(valid_name(n), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.iter().all(|(x, _)| x != n),
                        "family declared twice: {n}"
                    );
                    types.push((n.to_owned(), t.to_owned()));
                }
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: name value");
        // Rust's float syntax covers the format's `+Inf`, `-Inf` and `NaN`.
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("labels close")),
            None => (series, ""),
        };
        assert!(valid_name(name), "{line}");
        for l in labels.split(',').filter(|l| !l.is_empty()) {
            let (k, v) = l.split_once('=').expect("label k=v");
            assert!(valid_name(k), "{line}");
            assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
        }
        let family = types
            .iter()
            .rev()
            .find(|(n, t)| {
                name == n
                    || (t == "histogram"
                        && [
                            format!("{n}_bucket"),
                            format!("{n}_sum"),
                            format!("{n}_count"),
                        ]
                        .iter()
                        .any(|x| x == name))
            })
            .unwrap_or_else(|| panic!("sample before its # TYPE: {line}"));
        if family.1 == "counter" || family.1 == "histogram" {
            assert!(v >= 0.0, "{line}");
        }
        if name.ends_with("_bucket") {
            if let Some((_, prev)) = buckets.iter().rev().find(|(n, _)| n == name) {
                assert!(v >= *prev, "buckets are cumulative: {line}");
            }
            buckets.push((name.to_owned(), v));
        }
        if let Some(h) = name.strip_suffix("_count") {
            let inf = buckets
                .iter()
                .rev()
                .find(|(n, _)| *n == format!("{h}_bucket"))
                .expect("buckets before _count");
            assert_eq!(inf.1, v, "+Inf bucket equals _count");
        }
    }
}

const PY_PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = [f.name for f in text_string_to_metric_families(sys.stdin.read())]
print(" ".join(names))
"#;

fn metrics(engine: &str) {
    let dir = common::tmpdir(&format!("httpd-metrics-{engine}"));
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let _s = common::ServerProc::start(
        &[
            "httpd",
            "--engine",
            engine,
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "32MiB",
            "--persist",
            "fsync",
        ],
        addr,
    );
    let url = |path: &str| format!("http://{addr}{path}");
    for i in 0..20 {
        curl(&["-d", &format!("value {i}"), &url(&format!("/k{i}"))]);
        curl(&[&url(&format!("/k{i}"))]);
    }
    curl(&[&url("/missing")]);
    let text = String::from_utf8(curl(&[&url("/metrics")])).unwrap();
    check_prometheus(&text);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(sample("pst_http_requests_total{method=\"POST\",code=\"201\"}") >= 20.0);
    assert!(sample("pst_http_requests_total{method=\"GET\",code=\"404\"}") >= 1.0);
    assert!(
        sample("pst_commit_duration_seconds_count") >= 20.0,
        "fsync commits are timed"
    );
    assert!(sample("pst_received_bytes_total") > 0.0);
    assert!(sample("pst_sent_bytes_total") > 0.0);
    assert!(
        sample("pst_connections") >= 1.0,
        "the scrape's own connection"
    );
    assert!(sample("pst_pool_capacity_buffers") > 0.0);
    assert!(sample("pst_pool_live_buffers") >= 1.0);
    assert!(sample("pst_syscalls_per_request") > 0.0);
    // The official client library's parser reads it too.
    let mut py = Command::new("python3")
        .args(["-c", PY_PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects /metrics (.ci/run installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.contains("pst_commit_duration_seconds"), "{names}");
    assert!(names.contains("pst_http_requests"), "{names}");
}

#[test]
fn metrics_uring() {
    metrics("uring");
}

#[test]
fn metrics_epoll() {
    metrics("epoll");
}
