//! Access control: `pst kv --requirepass` (Redis AUTH, -NOAUTH before it) and `pst httpd
//! --token` (bearer token required for writes; reads stay open).

mod common;

use std::process::Command;

#[test]
fn kv_requirepass() {
    let dir = common::tmpdir("auth-kv");
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let port = addr.port().to_string();
    let mut s = common::ServerProc::start(
        &[
            "kv",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "16MiB",
            "--requirepass",
            "s3cret",
        ],
        addr,
    );
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    };
    assert_eq!(cli(&["SET", "k", "v"]), "NOAUTH Authentication required.");
    assert_eq!(cli(&["PING"]), "PONG");
    let wrong = cli(&["-a", "wrong", "--no-auth-warning", "GET", "k"]);
    assert!(
        wrong.contains("WRONGPASS") || wrong.contains("NOAUTH"),
        "{wrong}"
    );
    assert_eq!(
        cli(&["-a", "s3cret", "--no-auth-warning", "SET", "k", "v"]),
        "OK"
    );
    assert_eq!(cli(&["-a", "s3cret", "--no-auth-warning", "GET", "k"]), "v");
    let client = redis::Client::open(format!("redis://:s3cret@{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn httpd_token_guards_writes() {
    let dir = common::tmpdir("auth-http");
    let pool = dir.join("pool");
    let addr = common::free_addr();
    let mut s = common::ServerProc::start(
        &[
            "httpd",
            "--pool",
            pool.to_str().unwrap(),
            "--pool-size",
            "16MiB",
            "--token",
            "t0k",
        ],
        addr,
    );
    let code = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("http://{addr}/k");
    assert_eq!(code(&["-X", "POST", "--data-binary", "x", &url]), "401");
    assert_eq!(
        code(&[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer nope",
            "--data-binary",
            "x",
            &url
        ]),
        "401"
    );
    assert_eq!(
        code(&[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer t0k",
            "--data-binary",
            "x",
            &url
        ]),
        "201"
    );
    assert_eq!(code(&[&url]), "200", "reads need no token");
    assert_eq!(code(&["-X", "DELETE", &url]), "401");
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}
