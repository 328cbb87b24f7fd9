#!/usr/bin/env python3
"""Render `pst bench --json` lines as a Markdown table: python3 bench/table.py bench/results/rpc.json"""
import json, sys

for path in sys.argv[1:]:
    rows = [json.loads(l) for l in open(path) if l.strip()]
    print("| system | persist | conns | size | req/s (median of runs; min–max) | p50 µs | p99 µs | syscalls/req | server CPU µs/req | client CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = r["engine"]
        if r.get("batch_wait_us") not in (None, 0):
            name += f" (batch-wait {r['batch_wait_us']} µs)"
        elif r.get("batch_wait_us") == 0:
            name += " (batch-wait 0)"
        if r.get("send_zc_min"):
            name += f", SEND_ZC ≥ {r['send_zc_min'] // 1024} KiB"
        sc = "–" if r["syscalls_per_req"] is None else f"{r['syscalls_per_req']:.3f}"
        spread = f"{r['rps_min']:.0f}–{r['rps_max']:.0f}" if r.get("runs", 1) > 1 else "1 run"
        print(f"| {name} | {r['persist']} | {r['conns']} | {r['size']} | {r['rps']:.0f} ({spread}) | {r['p50_us']} | {r['p99_us']} | {sc} | {r['server_cpu_us_per_req']:.2f} | {r['client_cpu_pct']:.0f}% |")
    print()
