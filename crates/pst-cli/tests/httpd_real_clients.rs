//! `pst httpd` driven by real clients — curl and a Rust HTTP client (ureq) — on both engines:
//! store/read/delete, pipelining on one connection, bad requests with the right status, and
//! data surviving a restart on the same pool.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send raw bytes, read until the server closes or `n` responses' worth of time passes.
fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn scenario(engine: &str) {
    let dir = common::tmpdir(&format!("httpd-{engine}"));
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
        "32MiB",
        "--persist",
        "fsync",
    ];
    let mut s = common::ServerProc::start(&args, addr);

    // RPC body.
    let body = curl(&[&url("/")]);
    assert_eq!(body.len(), 64, "{body:?}");
    // Store with curl, read with ureq; multi-buffer values (> 2 KiB buffers).
    let big: String = (0..50_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            &big,
            &url("/big")
        ]),
        "201"
    );
    let got = ureq::get(&url("/big"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big);
    ureq::post(&url("/small")).send("tiny").unwrap();
    assert_eq!(curl(&[&url("/small")]), "tiny");
    assert_eq!(
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/absent")]),
        "404"
    );
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &url("/small")
        ]),
        "200"
    );
    assert_eq!(
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/small")]),
        "404"
    );

    // Pipelining: three requests in one write, three responses in order.
    let r = raw(addr, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /p HTTP/1.1\r\nHost: x\r\n\r\nGET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.matches("HTTP/1.1 ").count(), 3, "{r}");
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    assert!(r.ends_with("abc"), "{r}");

    // Bad requests: the right status, and the server still answers afterwards.
    for (req, status) in [
        (&b"NONSENSE\r\n\r\n"[..], "400"),
        (b"POST /x HTTP/1.1\r\nHost: x\r\n\r\n", "411"),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\n",
            "413",
        ),
        (b"GET / HTTP/2.0\r\n\r\n", "505"),
        // RFC 9112 §3.2: one Host at most, well formed (a missing one is served).
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "400"),
        (
            b"POST /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc",
            "400",
        ),
    ] {
        let r = raw(addr, req);
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?} -> {r}"
        );
    }
    let long = [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX: "[..],
        &vec![b'a'; 20_000],
        b"\r\n\r\n",
    ]
    .concat();
    assert!(raw(addr, &long).starts_with("HTTP/1.1 431"));
    // Nothing of the refused POST was stored; a request without Host is served.
    assert!(raw(addr, b"GET /twohosts HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404"));
    let r = raw(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(curl(&[&url("/")]).len(), 64);

    assert!(s.term().success());
    // Restart on the same pool: the acknowledged value is there.
    let mut s = common::ServerProc::start(&args, addr);
    // A fresh agent: the default one would reuse a pooled connection to the old process.
    let agent = ureq::Agent::new_with_defaults();
    let got = agent
        .get(&url("/big"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(got == big, "value lost across restart");
    assert_eq!(curl(&[&url("/p")]), "abc");
    assert!(s.term().success());
    common::assert_inspect_ok(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn httpd_uring() {
    scenario("uring");
}

#[test]
fn httpd_epoll() {
    scenario("epoll");
}
