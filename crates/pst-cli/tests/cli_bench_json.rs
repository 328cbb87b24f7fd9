//! `pst bench echo --json` prints the contract's JSON lines for every engine, side by side.
mod common;

#[test]
fn bench_echo_json_contract() {
    let out = common::pst()
        .args([
            "bench", "echo", "--json", "--conns", "1,8", "--secs", "0.5", "--warmup", "0.2",
            "--size", "100",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "2 engines x 2 connection counts");
    for key in [
        "workload",
        "engine",
        "persist",
        "conns",
        "size",
        "requests",
        "secs",
        "rps",
        "p50_us",
        "p99_us",
        "syscalls_per_req",
        "server_cpu_us_per_req",
        "client_cpu_pct",
    ] {
        assert!(rows.iter().all(|r| r.get(key).is_some()), "missing {key}");
    }
    let engines: Vec<&str> = rows.iter().map(|r| r["engine"].as_str().unwrap()).collect();
    assert_eq!(engines, ["uring", "uring", "epoll", "epoll"]);
    for r in &rows {
        assert_eq!(r["workload"], "echo");
        assert_eq!(r["size"], 100);
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(r["syscalls_per_req"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["server_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["errors"], 0);
    }
}
