#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every table and plot from one invocation per workload.
# Needs nginx and redis-server for the peer rows (apt-get install -y nginx-light redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
pst=./target/release/pst
out=bench/results
mkdir -p "$out"
common=(--json --repeat 3 --secs 3 --warmup 1)
$pst bench echo "${common[@]}" --conns 1,64,256 --batch-wait-us 0,20,50,200 > "$out/echo.json"
# Large messages: bundle receives + one iovec per adjacent run, and SEND_ZC from 16 KiB on.
$pst bench echo "${common[@]}" --conns 1,16,64 --size 64KiB --send-zc-min 0,16KiB > "$out/echo-64k.json"
$pst bench rpc "${common[@]}" --conns 1,50,100,200 --peers nginx --plot "$out/rpc.svg" > "$out/rpc.json"
$pst bench wal "${common[@]}" --conns 1,50,100,200 --size 1024 --persist pmem --plot "$out/wal.svg" > "$out/wal.json"
mkdir -p ./pst-data/bench   # on disk (ext4): fsync is a real device flush, for pst and redis alike
$pst bench kv "${common[@]}" --conns 1,50,100,200 --size 1024 --persist fsync --pool ./pst-data/bench --peers redis --plot "$out/kv.svg" > "$out/kv.json"
cargo bench -q -p pst-store --bench store -- --json > "$out/store.json"
