//! Soak: a fixed key set overwritten continuously until the pool's data region has been
//! written more than ten times over. Space is reclaimed (compaction) so the server never runs
//! out, and every key holds its last value at the end, also after a restart.

mod common;

use rand::{Rng, SeedableRng};

#[test]
fn overwrites_reuse_the_pool_ten_times_without_running_out() {
    let dir = common::tmpdir("soak");
    let pool = dir.join("pool");
    let p = pool.to_str().unwrap().to_owned();
    let addr = common::free_addr();
    let args = [
        "kv",
        "--pool",
        &p,
        "--pool-size",
        "16MiB",
        "--persist",
        "pmem",
    ];
    let mut s = common::ServerProc::start(&args, addr);
    let data_region = 16u64 << 20; // upper bound of the buffer region
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut last: Vec<Vec<u8>> = vec![Vec::new(); 100];
    let mut written = 0u64;
    let mut sets = 0u64;
    while written < 10 * data_region {
        let mut pipe = redis::pipe();
        for _ in 0..64 {
            let k = rng.gen_range(0..100);
            let len = rng.gen_range(1000..9000);
            let v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            written += len as u64;
            pipe.cmd("SET").arg(format!("soak{k}")).arg(&v).ignore();
            last[k] = v;
            sets += 1;
        }
        let r: redis::RedisResult<()> = pipe.query(&mut con);
        r.unwrap_or_else(|e| panic!("after {sets} SETs ({written} bytes): {e}"));
    }
    let check = |con: &mut redis::Connection, last: &[Vec<u8>]| {
        for (k, v) in last.iter().enumerate() {
            let got: Vec<u8> = redis::cmd("GET")
                .arg(format!("soak{k}"))
                .query(con)
                .unwrap();
            assert!(got == *v, "soak{k} has the wrong value");
        }
        let n: i64 = redis::cmd("DBSIZE").query(con).unwrap();
        assert_eq!(n, 100);
    };
    check(&mut con, &last);
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {info}"))
    };
    assert!(
        field("pst_compactions:") > 10,
        "space must have been reclaimed by compaction: {info}"
    );
    assert!(
        field("pst_buffers_held:") < 8000,
        "held buffers stay bounded: {info}"
    );
    assert!(s.term().success());
    let mut s = common::ServerProc::start(&args, addr);
    let mut con = client.get_connection().unwrap();
    check(&mut con, &last);
    assert!(s.term().success());
    let _ = std::fs::remove_dir_all(dir);
}
