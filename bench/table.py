#!/usr/bin/env python3
"""Render `pst bench --json` lines as a Markdown table: python3 bench/table.py bench/results/rpc.json
(kvmix rows get their own table: GET and SET apart, and GET p99 with writers over GET-only)."""
import json, sys


def name_of(r):
    name = r["engine"]
    if r.get("batch_wait_us") not in (None, 0):
        name += f" (batch-wait {r['batch_wait_us']} µs)"
    elif r.get("batch_wait_us") == 0:
        name += " (batch-wait 0)"
    if r.get("send_zc_min"):
        name += f", SEND_ZC ≥ {r['send_zc_min'] // 1024} KiB"
    return name


def kvmix(rows):
    print("| system | persist | GET clients | SET clients | size | GET/s | GET p50 / p99 / p999 µs | SET/s | SET p50 / p99 / p999 µs | server CPU µs/req | GET p99 ÷ GET-only p99 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    alone = {(name_of(r), r["persist"], r["readers"], r["size"]): r["get_p99_us"] for r in rows if r["writers"] == 0}
    for r in rows:
        key = (name_of(r), r["persist"], r["readers"], r["size"])
        ratio = "–" if r["writers"] == 0 or key not in alone else f"{r['get_p99_us'] / max(alone[key], 1):.2f}"
        if r["writers"]:
            set_ = f"{r['set_rps']:.0f} | {r['set_p50_us']} / {r['set_p99_us']} / {r['set_p999_us']}"
        else:
            set_ = "– | –"
        print(f"| {key[0]} | {r['persist']} | {r['readers']} | {r['writers']} | {r['size']} | {r['get_rps']:.0f} | "
              f"{r['get_p50_us']} / {r['get_p99_us']} / {r['get_p999_us']} | {set_} | {r['server_cpu_us_per_req']:.2f} | {ratio} |")
    print()


for path in sys.argv[1:]:
    rows = [json.loads(l) for l in open(path) if l.strip()]
    if rows and all(r["workload"] == "kvmix" for r in rows):
        kvmix(rows)
        continue
    print("| system | persist | conns | size | req/s (median of runs; min–max) | p50 µs | p99 µs | syscalls/req | server CPU µs/req | client CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sc = "–" if r["syscalls_per_req"] is None else f"{r['syscalls_per_req']:.3f}"
        spread = f"{r['rps_min']:.0f}–{r['rps_max']:.0f}" if r.get("runs", 1) > 1 else "1 run"
        print(f"| {name_of(r)} | {r['persist']} | {r['conns']} | {r['size']} | {r['rps']:.0f} ({spread}) | {r['p50_us']} | {r['p99_us']} | {sc} | {r['server_cpu_us_per_req']:.2f} | {r['client_cpu_pct']:.0f}% |")
    print()
