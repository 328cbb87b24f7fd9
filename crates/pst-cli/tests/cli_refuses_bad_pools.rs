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
    let _ = std::fs::remove_dir_all(dir);
}
