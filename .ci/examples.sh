#!/usr/bin/env bash
# Run the pst examples as a user would and check what they promise: `echo` echoes; `durable_kv`
# acknowledges a SET only after its commit and still has it after a kill -9 and a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pst --examples
ex=target/release/examples
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Send $2 to 127.0.0.1:$1, half-close, print everything the server sends back before it
# closes or 2 s pass.
talk() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
c.sendall(sys.argv[2].encode().decode("unicode_escape").encode())
out = b""
try:
    while not out.endswith(b"\n") or out.count(b"\n") < sys.argv[2].count("\\n"):
        b = c.recv(65536)
        if not b:
            break
        out += b
except socket.timeout:
    pass
sys.stdout.write(out.decode())
PY
}

wait_up() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), timeout=0.2)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not come up" >&2; return 1
}

port=$(free_port)
"$ex/echo" "127.0.0.1:$port" 2>"$tmp/echo.log" & pids+=($!)
wait_up "$port"
got=$(talk "$port" 'hello pst\n')
[ "$got" = "hello pst" ] || { echo "echo example: got '$got'" >&2; exit 1; }
echo "examples: echo ok"

port=$(free_port)
"$ex/durable_kv" "$tmp/kv/pool" "127.0.0.1:$port" 2>"$tmp/kv.log" & kv=$!; pids+=($kv)
wait_up "$port"
got=$(talk "$port" 'SET greeting hello\nSET other world\nGET greeting\n')
case "$got" in
  "OK "*$'\n'"OK "*$'\n'hello) ;;
  *) echo "durable_kv example: got '$got'" >&2; exit 1 ;;
esac
kill -9 "$kv"; wait "$kv" 2>/dev/null || true
"$ex/durable_kv" "$tmp/kv/pool" "127.0.0.1:$port" 2>>"$tmp/kv.log" & pids+=($!)
wait_up "$port"
got=$(talk "$port" 'GET greeting\nGET other\nGET missing\n')
[ "$got" = $'hello\nworld\nNIL' ] || { echo "durable_kv after kill -9: got '$got'" >&2; cat "$tmp/kv.log" >&2; exit 1; }
echo "examples: durable_kv ok (acknowledged writes survive kill -9)"
