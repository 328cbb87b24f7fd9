#!/usr/bin/env python3
"""Issue 11's acceptance ratios from the JSON lines bench/acceptance.sh writes:
python3 bench/acceptance.py bench/results/acceptance

Each line: the target, the figures it divides, the ratio, and whether it holds. A peer that was
skipped (not installed) leaves its line at "n/a". GET figures come from kvmix's GET-only runs
(50 clients, no writers), as `pst bench kv` drives SETs only."""
import json, os, sys


def rows(d, name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")]


def find(rs, engine, **kw):
    for r in rs:
        if r["engine"] == engine and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def main(d):
    kv, mix = rows(d, "kv.json"), rows(d, "kvmix.json")
    wal, rpc = rows(d, "wal.json"), rows(d, "rpc.json")
    e1, e64 = rows(d, "echo-1k.json"), rows(d, "echo-64k.json")
    e64b = rows(d, "echo-64k-16k.json")
    cpu = lambda r: r and r["server_cpu_us_per_req"]
    lines = []

    def line(what, target, num, den, op, limit, nums=""):
        if not num or not den:
            lines.append((what, target, "n/a", "–"))
            return
        ratio = num / den
        ok = ratio <= limit if op == "<=" else ratio >= limit
        lines.append((what, target, f"{ratio:.2f} ({nums or f'{num:.2f} ÷ {den:.2f}'})", "yes" if ok else "no"))

    fs, none = find(kv, "uring", persist="fsync"), find(kv, "uring", persist="none")
    ra, rn = find(kv, "redis-always"), find(kv, "redis-none")
    line("kv fsync CPU/req ÷ redis-always", "≤ 0.75", cpu(fs), cpu(ra), "<=", 0.75)
    peers = [r for r in (find(kv, "valkey"), find(kv, "kevy")) if r]
    best = min(peers, key=cpu) if peers else None
    line(f"kv fsync CPU/req ÷ best of valkey, kevy ({best['engine'] if best else '–'})", "≤ 1",
         cpu(fs), cpu(best), "<=", 1.0)
    line("kv fsync req/s ÷ redis-always", "≥ 1.3", fs and fs["rps"], ra and ra["rps"], ">=", 1.3,
         fs and ra and f"{fs['rps']:.0f} ÷ {ra['rps']:.0f}")
    line("kv fsync CPU/req ÷ pst's own none", "≤ 1.3", cpu(fs), cpu(none), "<=", 1.3)
    sb = fs and fs.get("storage_bytes_per_req")
    line("kv fsync storage bytes per value byte", "≤ 1.5", sb, fs and fs["size"], "<=", 1.5,
         sb and f"{sb:.0f} B ÷ {fs['size']} B")
    line("kv SET none CPU/req ÷ redis-none", "≤ 0.9", cpu(none), cpu(rn), "<=", 0.9)
    g, rg = find(mix, "uring", writers=0), find(mix, "redis-always", writers=0)
    line("kv GET CPU/req ÷ redis (kvmix GET-only, 50 clients)", "≤ 0.9", cpu(g), cpu(rg), "<=", 0.9)
    gw = find(mix, "uring", writers=8)
    line("kvmix GET p99 with 8 writers ÷ GET-only", "≤ 2", gw and gw["get_p99_us"], g and g["get_p99_us"],
         "<=", 2.0, gw and g and f"{gw['get_p99_us']} ÷ {g['get_p99_us']} µs")
    line("wal pmem CPU/req ÷ rpc (uring, 100 clients)", "≤ 1.1", cpu(find(wal, "uring")), cpu(find(rpc, "uring")),
         "<=", 1.1)
    u1 = find(e1, "uring")
    for peer in ("epoll", "tokio", "monoio"):
        line(f"echo 1 KiB x 64 CPU/req ÷ {peer}", "≤ 1", cpu(u1), cpu(find(e1, peer)), "<=", 1.0)
    line("echo 64 KiB x 16 CPU/req ÷ epoll", "≤ 1", cpu(find(e64, "uring")), cpu(find(e64, "epoll")), "<=", 1.0)
    line("echo 64 KiB x 16 CPU/req ÷ epoll, --buf-size 16KiB", "≤ 1", cpu(find(e64b, "uring")),
         cpu(find(e64b, "epoll")), "<=", 1.0)

    print("| acceptance line | target | this run | holds |")
    print("|---|---|---|---|")
    for l in lines:
        print("| " + " | ".join(l) + " |")
    for peer in ("epoll", "redis-always", "valkey"):
        w, a = find(mix, peer, writers=8), find(mix, peer, writers=0)
        if w and a:
            print(f"\n{peer} kvmix GET p99 with writers ÷ GET-only: {w['get_p99_us']} ÷ {a['get_p99_us']} µs"
                  f" = {w['get_p99_us'] / max(a['get_p99_us'], 1):.2f}", end="")
    print("\n\nAllocations per request and crashes with commits in flight are tests: "
          "crates/pst-serve/tests/allocations_per_request.rs, crates/pst-cli/tests/kv_kill9_commits_in_flight.rs.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/acceptance")
