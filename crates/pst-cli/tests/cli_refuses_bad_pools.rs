//! The binary refuses a foreign or corrupt pool with a message naming the problem, and leaves
//! the file intact; `pst inspect` exits non-zero on it.
mod common;

#[test]
fn foreign_file_refused_by_server_and_inspect() {
    let dir = common::tmpdir("foreign");
    let pool = dir.join("pool");
    let content = b"not a pool at all\n".repeat(1000);
    std::fs::write(&pool, &content).unwrap();
    let out = common::pst()
        .args([
            "echo",
            "--addr",
            &common::free_addr().to_string(),
            "--pool",
            pool.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pst pool"), "{err}");
    let out = common::pst()
        .args(["inspect", pool.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&pool).unwrap(), content);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn geometry_mismatch_refused() {
    let dir = common::tmpdir("geo");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap();
    let mut s = common::ServerProc::start(
        &["echo", "--pool", p, "--pool-size", "8MiB"],
        common::free_addr(),
    );
    assert!(s.term().success());
    let out = common::pst().args(["inspect", p]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("x 2048 B"));
    let before = std::fs::read(&pool).unwrap();
    let out = common::pst()
        .args([
            "echo",
            "--addr",
            &common::free_addr().to_string(),
            "--pool",
            p,
            "--pool-size",
            "16MiB",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("geometry"));
    assert_eq!(std::fs::read(&pool).unwrap(), before);
    // Another buffer size, alone (it was ignored for an existing pool): refused, untouched.
    let out = common::pst()
        .args(["echo", "--addr", &common::free_addr().to_string()])
        .args(["--pool", p, "--buf-size", "16KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2048-byte buffers") && err.contains("16384"),
        "{err}"
    );
    assert_eq!(std::fs::read(&pool).unwrap(), before);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn damaged_acknowledged_value_is_reported_and_the_server_refuses_to_start() {
    use std::io::{Read, Write};
    let dir = common::tmpdir("damaged");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap();
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(
        &[
            "httpd",
            "--pool",
            p,
            "--pool-size",
            "8MiB",
            "--persist",
            "fsync",
        ],
        addr,
    );
    let marker = b"UNIQUE-MARKER-0123456789-UNIQUE-MARKER";
    for (i, body) in [&marker[..], b"second value", b"third value"]
        .iter()
        .enumerate()
    {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "POST /k{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        c.write_all(body).unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    }
    assert!(s.term().success());
    let out = common::pst().args(["inspect", p]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Flip one byte of the first (acknowledged, followed by later records) value: of every
    // copy of it in the file (a small value is packed: the stored copy is not necessarily
    // the buffer it was received in, which stays in the file too).
    let mut bytes = std::fs::read(&pool).unwrap();
    let copies: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    assert!(!copies.is_empty(), "value stored in the pool");
    for at in copies {
        bytes[at + 3] ^= 0xff;
    }
    std::fs::write(&pool, &bytes).unwrap();
    let out = common::pst().args(["inspect", p]).output().unwrap();
    assert!(
        !out.status.success(),
        "inspect must fail on a damaged acknowledged record"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CORRUPT"));
    let out = common::pst()
        .args([
            "httpd",
            "--addr",
            &common::free_addr().to_string(),
            "--pool",
            p,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corruption"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&pool).unwrap(), bytes, "left untouched");
    let _ = std::fs::remove_dir_all(dir);
}

/// A pool too small for a server (fewer than 256 buffers) is refused before anything is
/// created, with a message saying so; an 86,016-byte pool used to start, refuse every write
/// and, on the io_uring engine, stop answering `PING`.
#[test]
fn pool_too_small_for_a_server_is_refused() {
    let dir = common::tmpdir("too-small");
    let pool = dir.join("pool");
    for engine in ["uring", "epoll"] {
        let out = common::pst()
            .args(["kv", "--engine", engine, "--addr"])
            .arg(common::free_addr().to_string())
            .args(["--pool", pool.to_str().unwrap(), "--pool-size", "86016"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{engine}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("too small") && err.contains("256"), "{err}");
        assert!(!pool.exists(), "{engine}: a refused pool was created");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A clean stop seals the log, so damage to the *last* acknowledged record (which no later
/// record vouches for) is refused as corruption too, rather than passing for a torn tail and
/// dropping the key silently; `--salvage-damaged-log` still starts, keeping the keys before it.
#[test]
fn damage_to_the_last_record_after_a_clean_stop_is_refused() {
    for engine in ["uring", "epoll"] {
        let dir = common::tmpdir(&format!("sealed-{engine}"));
        let pool = dir.join("pool");
        let p = pool.to_str().unwrap();
        let addr = common::free_addr();
        let args = ["kv", "--engine", engine, "--pool", p, "--pool-size", "8MiB"];
        let mut s = common::ServerProc::start(&[&args[..], &["--persist", "fsync"]].concat(), addr);
        let last = "the-last-key-acknowledged-0x5eal";
        for k in ["first", "second", last] {
            assert_eq!(common::redis_cli(addr.port(), &["SET", k, "v"]), "OK");
        }
        assert!(s.term().success());
        common::assert_inspect_ok(p);
        // Flip a byte of the last key in its log record (record magic, then the key at 48).
        let mut bytes = std::fs::read(&pool).unwrap();
        let magic = pst_store::format::REC_MAGIC.to_le_bytes();
        let at = (0..bytes.len() - 48 - last.len())
            .step_by(8)
            .find(|&i| bytes[i..i + 4] == magic && bytes[i + 48..].starts_with(last.as_bytes()))
            .expect("the last key's record is in the pool");
        bytes[at + 48] ^= 0x20;
        std::fs::write(&pool, &bytes).unwrap();
        let out = common::pst().args(["inspect", p]).output().unwrap();
        assert!(
            !out.status.success(),
            "{engine}: inspect passed a damaged last record"
        );
        let addr = common::free_addr();
        let out = common::pst()
            .args(args)
            .args(["--addr", &addr.to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("corruption"),
            "{engine}: {err}"
        );
        assert_eq!(
            std::fs::read(&pool).unwrap(),
            bytes,
            "{engine}: left untouched"
        );
        let _s = common::ServerProc::start(&[&args[..], &["--salvage-damaged-log"]].concat(), addr);
        assert_eq!(common::redis_cli(addr.port(), &["GET", "second"]), "v");
        assert_eq!(common::redis_cli(addr.port(), &["EXISTS", last]), "0");
        drop(_s);
        let _ = std::fs::remove_dir_all(dir);
    }
}
