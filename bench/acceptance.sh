#!/usr/bin/env bash
# Issue 11's acceptance lines, one `pst bench` invocation per line (median of 3 runs each), and
# the ratios they are judged by: `bash bench/acceptance.sh` (about 10 minutes). The JSON lines
# land in bench/results/acceptance/; `python3 bench/acceptance.py DIR` re-prints the verdicts.
# The kv pools live on disk (./pst-data/bench, so `fsync` is a real device flush); wal, rpc and
# echo use /dev/shm as `pst bench` does by default. This machine's wall clock is noisy: compare
# ratios within one run, never figures across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/peers.sh

cargo build --release -q
pst=./target/release/pst
out=bench/results/acceptance
mkdir -p "$out" ./pst-data/bench
common=(--json --repeat 3 --secs 3 --warmup 1)
step() { echo "bench/acceptance.sh: $1" >&2; }
step "kv SET 1 KiB, 100 conns, none and fsync, with redis, valkey, kevy"
$pst bench kv "${common[@]}" --conns 100 --size 1024 --engine uring,epoll --persist none,fsync \
  --peers redis,valkey,kevy --pool ./pst-data/bench > "$out/kv.json"
step "kvmix: 50 GET clients + 8 durable SET clients (and GET-only, the GET line's figures)"
$pst bench kvmix "${common[@]}" --conns 50 --writers 8 --size 1024 --engine uring,epoll \
  --peers redis,valkey --pool ./pst-data/bench > "$out/kvmix.json"
step "wal 1 KiB pmem and rpc, 100 conns"
$pst bench wal "${common[@]}" --conns 100 --size 1024 --persist pmem > "$out/wal.json"
$pst bench rpc "${common[@]}" --conns 100 --engine uring,epoll --peers nginx,h2o > "$out/rpc.json"
step "echo 1 KiB x 64 conns with tokio and monoio; 64 KiB x 16 conns"
$pst bench echo "${common[@]}" --conns 64 --size 1024 --engine uring,epoll --peers tokio,monoio > "$out/echo-1k.json"
$pst bench echo "${common[@]}" --conns 16 --size 64KiB --engine uring,epoll > "$out/echo-64k.json"
# The same with 16 KiB pool buffers (`--buf-size`, the knob for large messages): a 64 KiB
# message then spans 4 buffers instead of 32. The epoll engine reads into its own buffer.
$pst bench echo "${common[@]}" --conns 16 --size 64KiB --engine uring,epoll --buf-size 16KiB > "$out/echo-64k-16k.json"
python3 bench/acceptance.py "$out"
