#!/usr/bin/env bash
# Run Redis's own Tcl test suite (redis 7.0.15: `runtest` + `tests/`) against `pst kv`,
# or against a real redis-server for a baseline, and summarise the results per test file.
#
#   bench/redis-suite/run.sh                          # pst kv, uring engine, default file list
#   bench/redis-suite/run.sh --engine epoll unit/type/incr unit/keyspace
#   bench/redis-suite/run.sh --target redis           # baseline: real redis-server
#   bench/redis-suite/run.sh --peel                   # diagnostic: look past SELECT / FUNCTION FLUSH
#
# Options (each also settable through the environment variable in brackets):
#   --target pst|redis     server under test                       [TARGET, default pst]
#   --engine uring|epoll   pst kv I/O engine                       [ENGINE, default uring]
#   --timeout SECS         wall-clock limit per test file          [FILE_TIMEOUT, default 300]
#   --pool-size SIZE       pst pool size                           [POOL_SIZE, default 256MiB]
#   --peel                 diagnostic mode, see below              [PEEL=1]
#   --out DIR              logs + summary.jsonl + failures.tsv     [OUT, default bench/redis-suite/results/<target>-<engine>[-peel]]
#   --no-build             don't run cargo build                   [NO_BUILD=1]
#   --list                 print the default file list and exit
# Extra pst kv flags: PST_ARGS="--max-value 8MiB"; extra redis-server flags: REDIS_ARGS="...".
# Extra runtest flags: RUNTEST_ARGS="--verbose" (e.g. --only, --skiptest).
#
# Where the suite comes from (first that works):
#   1. REDIS_SRC=/path/to/redis     a redis 7.0.15 checkout or unpacked release tarball (needs runtest + tests/)
#   2. a bare git mirror of redis/redis holding tag 7.0.15: REDIS_MIRROR (none = skip this step),
#      else /work/.mirror/redis+redis/repo
#   3. Debian's source package: `apt-get source --download-only redis` (bookworm ships 7.0.15; its
#      redis_7.0.15.orig.tar.gz is upstream's release tarball, tests/ identical to tag 7.0.15). Uses
#      private apt lists under the cache dir and does not touch /etc/apt. Cached in
#      ${XDG_CACHE_HOME:-~/.cache}/pst-redis-suite/.
# No Debian *binary* package ships redis's tests/ (redis-server / redis-tools only ship binaries + docs).
#
# How each file is run: a fresh server (fresh temp pool for pst) on a free loopback port, then
#   ./runtest --host 127.0.0.1 --port P --single unit/FILE --clients 1 --ignore-encoding --ignore-digest
#             --durable --tags -needs:repl --tags -needs:debug --tags -needs:config-maxmemory --tags -needs:save
# --durable turns a Tcl exception inside a test into an [err] and keeps going; an error in the harness's
# own per-block setup (SELECT 9, FLUSHALL, FUNCTION FLUSH, CONFIG GET/SET of overrides) is still fatal
# for the whole file: that is reported as status "aborted" with the first error line.
#
# --peel (diagnostic only, not a score): adds --singledb (the harness then never sends SELECT 9) and
# patches the extracted harness so a failing FUNCTION FLUSH in the external-server setup is ignored.
# This shows which tests would pass/fail once those two blockers are fixed.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REDIS_TAG=7.0.15
DEBIAN_ORIG_SHA256=4b1dc4ee6d622a09fff9c6777191209750fb5e5a725ef78ea012d6eef4c22982

DEFAULT_FILES=(
    unit/type/string      # GET/SET family, SETRANGE/GETRANGE, MSETNX, LCS, GETEX, GETDEL
    unit/type/incr        # INCR/DECR/INCRBY/INCRBYFLOAT
    unit/type/hash        # HSET/HGET/... (pst has no hashes; shows the gap)
    unit/keyspace         # DEL/EXISTS/KEYS/RENAME/MOVE/COPY/TYPE/RANDOMKEY/DBSIZE
    unit/expire           # EXPIRE/TTL/PERSIST/SET EX/PX
    unit/multi            # MULTI/EXEC/DISCARD/WATCH
    unit/info-command     # INFO sections
    unit/info             # INFO stats (mostly external:skip)
    unit/auth             # AUTH (all external:skip: needs requirepass in the server's config)
    unit/protocol         # RESP parsing, protocol errors, RESP3 (HELLO)
    unit/quit             # QUIT
    unit/other            # misc: FLUSHALL, SELECT, PIPELINING, APPEND, RESET
)

TARGET=${TARGET:-pst}
ENGINE=${ENGINE:-uring}
FILE_TIMEOUT=${FILE_TIMEOUT:-300}
POOL_SIZE=${POOL_SIZE:-256MiB}
PEEL=${PEEL:-0}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
FILES=()

die() { echo "run.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --target) TARGET=$2; shift 2 ;;
        --engine) ENGINE=$2; shift 2 ;;
        --timeout) FILE_TIMEOUT=$2; shift 2 ;;
        --pool-size) POOL_SIZE=$2; shift 2 ;;
        --peel) PEEL=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        --list) printf '%s\n' "${DEFAULT_FILES[@]}"; exit 0 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        unit/*|integration/*) FILES+=("${1%.tcl}"); shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ ${#FILES[@]} -gt 0 ] || FILES=("${DEFAULT_FILES[@]}")
case "$TARGET" in pst|redis) ;; *) die "--target must be pst or redis" ;; esac
case "$ENGINE" in uring|epoll) ;; *) die "--engine must be uring or epoll" ;; esac
label=$TARGET
[ "$TARGET" = pst ] && label="$label-$ENGINE"
[ "$PEEL" = 1 ] && label="$label-peel"
OUT=${OUT:-$HERE/results/$label}
mkdir -p "$OUT/logs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- prerequisites
if ! command -v tclsh8.6 >/dev/null && ! command -v tclsh8.5 >/dev/null && ! command -v tclsh8.7 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing tcl (runtest needs tclsh 8.5+)"
        apt-get install -y -qq tcl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq tcl; } \
            || die "could not install tcl"
    else
        die "runtest needs tclsh 8.5/8.6 (apt-get install tcl)"
    fi
fi
command -v timeout >/dev/null || die "needs coreutils timeout"

if [ "$TARGET" = pst ]; then
    PST=${PST:-$ROOT/target/release/pst}
    if [ "$NO_BUILD" != 1 ]; then
        echo "== cargo build --release -p pst-cli"
        (cd "$ROOT" && cargo build --release -q -p pst-cli) || die "cargo build failed"
    fi
    [ -x "$PST" ] || die "no pst binary at $PST"
else
    REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || true)}
    [ -n "$REDIS_SERVER" ] || die "no redis-server (apt-get install redis-server)"
    echo "== baseline server: $("$REDIS_SERVER" --version)"
fi

# ---------------------------------------------------------------- the suite
WORK=$(mktemp -d /tmp/pst-redis-suite.XXXXXX)
SERVER_PID=
cleanup() {
    stop_server
    rm -rf "$WORK"
}
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SUITE=$WORK/redis
mkdir -p "$SUITE"
suite_from=
if [ -n "${REDIS_SRC:-}" ]; then
    [ -f "$REDIS_SRC/runtest" ] && [ -f "$REDIS_SRC/tests/test_helper.tcl" ] \
        || die "REDIS_SRC=$REDIS_SRC has no runtest + tests/test_helper.tcl"
    cp -r "$REDIS_SRC/runtest" "$REDIS_SRC/tests" "$SUITE/" || die "copy from REDIS_SRC failed"
    if [ -f "$REDIS_SRC/src/version.h" ] && ! grep -q "\"$REDIS_TAG\"" "$REDIS_SRC/src/version.h"; then
        echo "warning: REDIS_SRC is not redis $REDIS_TAG ($(cat "$REDIS_SRC/src/version.h")); results may differ" >&2
    fi
    suite_from="REDIS_SRC=$REDIS_SRC"
fi
if [ -z "$suite_from" ]; then
    for m in ${REDIS_MIRROR:-/work/.mirror/redis+redis/repo}; do   # REDIS_MIRROR=none skips this step
        [ -n "$m" ] && [ -d "$m" ] || continue
        if git --git-dir="$m" rev-parse -q --verify "refs/tags/$REDIS_TAG" >/dev/null; then
            git --git-dir="$m" archive "$REDIS_TAG" runtest tests | tar -x -C "$SUITE" \
                || die "git archive from $m failed"
            suite_from="git mirror $m (tag $REDIS_TAG)"
            break
        fi
    done
fi
if [ -z "$suite_from" ] && command -v apt-get >/dev/null; then
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/pst-redis-suite
    orig=$cache/redis_$REDIS_TAG.orig.tar.gz
    if [ ! -f "$orig" ]; then
        echo "== fetching Debian source package 'redis' (for redis_$REDIS_TAG.orig.tar.gz)"
        apt=$cache/apt
        mkdir -p "$apt/lists/partial" "$apt/etc" "$apt/dl"
        cat > "$apt/etc/src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        aopts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/etc"
               -o "Dir::State::Lists=$apt/lists" -o APT::Sandbox::User=root -q)
        if apt-get "${aopts[@]}" update >"$apt/update.log" 2>&1 \
            && (cd "$apt/dl" && apt-get "${aopts[@]}" source --download-only redis >"$apt/source.log" 2>&1) \
            && [ -f "$apt/dl/redis_$REDIS_TAG.orig.tar.gz" ]; then
            mv "$apt/dl/redis_$REDIS_TAG.orig.tar.gz" "$orig"
        else
            echo "warning: Debian source package did not give redis_$REDIS_TAG.orig.tar.gz (see $apt/*.log)" >&2
        fi
        rm -rf "$apt/dl"
    fi
    if [ -f "$orig" ]; then
        if [ "$(sha256sum "$orig" | cut -d' ' -f1)" != "$DEBIAN_ORIG_SHA256" ]; then
            rm -f "$orig"; die "checksum mismatch on Debian's redis_$REDIS_TAG.orig.tar.gz (removed; rerun)"
        fi
        tar -xzf "$orig" -C "$SUITE" --strip-components=1 "redis-$REDIS_TAG/runtest" "redis-$REDIS_TAG/tests" \
            || die "cannot unpack $orig"
        suite_from="Debian source package ($orig)"
    fi
fi
if [ -z "$suite_from" ]; then
    cat >&2 <<EOF
run.sh: redis's test suite ($REDIS_TAG) is not available. Provide it one of these ways:
  * REDIS_SRC=/path/to/redis-$REDIS_TAG  (a checkout of github.com/redis/redis at tag $REDIS_TAG,
    or the unpacked release tarball redis-$REDIS_TAG.tar.gz; only runtest and tests/ are used)
  * a bare git mirror holding tag $REDIS_TAG at REDIS_MIRROR=/path/to/redis.git
  * Debian's source package: run on a Debian bookworm machine with apt-get (done automatically above)
EOF
    exit 2
fi
mkdir -p "$SUITE/tests/tmp"
echo "== suite: redis $REDIS_TAG tests from $suite_from"

if [ "$PEEL" = 1 ]; then
    f=$SUITE/tests/support/server.tcl
    grep -q '^    r function flush$' "$f" || die "--peel: harness changed, cannot patch FUNCTION FLUSH in $f"
    sed -i 's/^    r function flush$/    catch {r function flush}/' "$f"
    echo "== PEEL mode: --singledb, FUNCTION FLUSH failure ignored (diagnostic only)"
fi

# ---------------------------------------------------------------- server control
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 30000))
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
        done
    fi
}
ping_server() {   # PING over bash's /dev/tcp; true once any reply comes back
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 && [ -n "$reply" ]
    )
}
start_server() {  # $1 = log file; sets PORT and SERVER_PID
    local log=$1 dir
    dir=$(mktemp -d "$WORK/server.XXXXXX")
    PORT=$(free_port)
    if [ "$TARGET" = pst ]; then
        # shellcheck disable=SC2086
        "$PST" kv --addr "127.0.0.1:$PORT" --engine "$ENGINE" --pool "$dir/pool" --pool-size "$POOL_SIZE" \
            ${PST_ARGS:-} >"$log" 2>&1 &
    else
        # shellcheck disable=SC2086
        "$REDIS_SERVER" --port "$PORT" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
            --enable-debug-command yes --daemonize no --logfile '' ${REDIS_ARGS:-} >"$log" 2>&1 &
    fi
    SERVER_PID=$!
    for _ in $(seq 100); do
        ping_server "$PORT" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not come up on port $PORT; log:" >&2
    tail -5 "$log" >&2
    stop_server
    return 1
}

json_str() {  # JSON string literal of $1
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}; s=${s//$'\n'/\\n}
    s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
    printf '"%s"' "$s"
}

# ---------------------------------------------------------------- run
SUMMARY=$OUT/summary.jsonl
FAILS=$OUT/failures.tsv
: >"$SUMMARY"
printf 'file\tkind\ttest\tmessage\tcommand\n' >"$FAILS"
tags=(--tags -needs:repl --tags -needs:debug --tags -needs:config-maxmemory --tags -needs:save)
echo "== target=$TARGET$([ "$TARGET" = pst ] && echo " engine=$ENGINE") files=${#FILES[@]} timeout=${FILE_TIMEOUT}s out=$OUT"

rows=()
tot_ok=0 tot_err=0 tot_exc=0 tot_ign=0 tot_aborted=0
for f in "${FILES[@]}"; do
    [ -f "$SUITE/tests/$f.tcl" ] || { echo "warning: no tests/$f.tcl, skipped" >&2; continue; }
    safe=${f//\//_}
    log=$OUT/logs/$safe.log
    slog=$OUT/logs/$safe.server.log
    t0=$(date +%s)
    status= rc=0 alive=true
    if ! start_server "$slog"; then
        status=server-failed
        : >"$log"
    else
        extra=()
        [ "$PEEL" = 1 ] && extra+=(--singledb)
        # shellcheck disable=SC2086
        (cd "$SUITE" && TERM=dumb timeout -k 10 "$FILE_TIMEOUT" ./runtest --host 127.0.0.1 --port "$PORT" \
            --single "$f" --clients 1 --ignore-encoding --ignore-digest --durable "${tags[@]}" \
            --timeout "$FILE_TIMEOUT" "${extra[@]}" ${RUNTEST_ARGS:-}) </dev/null >"$log" 2>&1
        rc=$?
        kill -0 "$SERVER_PID" 2>/dev/null || alive=false
        stop_server
    fi
    secs=$(( $(date +%s) - t0 ))
    n_ok=$(grep -c '^\[ok\]: ' "$log")
    n_err=$(grep -c '^\[err\]: ' "$log")
    n_exc=$(grep -c '^\[exception\]: ' "$log")
    n_ign=$(grep -c '^\[ignore\]: ' "$log")
    n_skip=$(grep -c '^\[skip\]: ' "$log")
    # per-test failures -> failures.tsv: file, kind, test, message, failing command (from the Tcl stack).
    # runtest prints "[err]: <test> in tests/<file>.tcl", then the message (its first 10 characters cut
    # off by the harness unless it was an assertion), then for non-assertions the full errorInfo.
    # kind: err = one test failed; block = an error outside any test (the rest of that start_server
    # block did not run); aborted = harness exception, the rest of the file did not run.
    awk -v file="$f" '
        function flush() {
            if (kind == "") return
            if (full != "") msg = full
            gsub(/\t/, " ", msg); gsub(/\t/, " ", name); gsub(/\t/, " ", cmd)
            print file "\t" kind "\t" name "\t" msg "\t" cmd
            kind = ""; name = ""; msg = ""; full = ""; cmd = ""; state = 0
        }
        /^\[(ok|err|ignore|skip|exception)\]: / || /^\[[0-9]+\/[0-9]+ done\]/ { flush() }
        /^\[err\]: .* in tests\/.*\.tcl$/ { kind = "err"; name = $0; sub(/^\[err\]: /, "", name)
                        sub(/ in tests\/.*\.tcl$/, "", name); state = 1; next }
        /^\[err\]: / { kind = "block"; name = "-"; state = 1; next }   # error outside any test: rest of the start_server block skipped
        /^\[exception\]: / { kind = "aborted"; name = "-"; msg = $0
                        sub(/^\[exception\]: (Executing test client: )?/, "", msg); sub(/\.$/, "", msg); state = 3; next }
        state == 1 { msg = $0; state = 2; next }
        state == 2 && /^    while executing$/ { state = 3; next }
        state == 2 { prev = $0; state = 5; next }
        state == 5 { if ($0 ~ /^    while executing$/) { full = prev; state = 3 } else { state = 4 }; next }
        state == 3 && /^"/ && !/^"\[srv / && !/^"uplevel/ && !/^"\$client / && cmd == "" { cmd = $0; gsub(/^"|"$/, "", cmd); sub(/\n.*/, "", cmd) }
        state == 3 && kind == "aborted" && /^"\$client / && cmd == "" { cmd = $0; gsub(/^"|"$/, "", cmd) }
        END { flush() }' "$log" >>"$FAILS"

    first=
    if [ -z "$status" ]; then
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            status=timeout; first="no result within ${FILE_TIMEOUT}s"
        elif [ "$n_exc" -gt 0 ]; then
            status=aborted
            first=$(grep -m1 '^\[exception\]: ' "$log" | sed 's/^\[exception\]: //; s/^Executing test client: //; s/\.$//')
            cmd=$(grep -m1 -A30 '^\[exception\]: ' "$log" | grep '^"' | grep -v '^"\[srv' | head -1 | head -c 120)
            [ -n "$cmd" ] && first="$first (at $cmd)"
        elif grep -q '^\[1/1 done\]' "$log" || grep -q 'All tests passed' "$log"; then
            if [ "$n_err" -gt 0 ]; then status=failed
            elif [ "$n_ok" -gt 0 ]; then status=passed
            else status=none-run; fi   # every test tag-filtered (e.g. external:skip)
        elif grep -q '^\[TIMEOUT\]' "$log"; then   # runtest's own --timeout watchdog
            status=timeout; first="runtest watchdog: no progress for ${FILE_TIMEOUT}s"
        else
            status=aborted; first=$(grep -v '^\s*$' "$log" | grep -v '^\[ok\]\|^\[ignore\]\|^\[skip\]\|^Cleanup\|^Starting test server\|^\[ready\]' | head -1)
        fi
    elif [ "$status" = server-failed ]; then
        first="server did not start: $(tail -1 "$slog")"
    fi
    if [ -z "$first" ] && [ "$n_err" -gt 0 ]; then
        first=$(awk -F'\t' -v f="$f" 'NR > 1 && $1 == f && ($2 == "err" || $2 == "block") { print $3 " -> " $4 (($5 != "") ? " (at " $5 ")" : ""); exit }' "$FAILS")
    fi
    [ "$alive" = false ] && [ "$status" != server-failed ] && first="SERVER EXITED DURING RUN; $first"
    first=${first:0:300}
    [ "$status" = aborted ] || [ "$status" = timeout ] || [ "$status" = server-failed ] && tot_aborted=$((tot_aborted + 1))
    tot_ok=$((tot_ok + n_ok)); tot_err=$((tot_err + n_err)); tot_exc=$((tot_exc + n_exc)); tot_ign=$((tot_ign + n_ign))
    printf '{"target":"%s","engine":%s,"peel":%s,"file":"%s","status":"%s","ok":%d,"err":%d,"exception":%d,"ignored":%d,"skipped":%d,"seconds":%d,"runtest_rc":%d,"server_alive":%s,"first_error":%s}\n' \
        "$TARGET" "$([ "$TARGET" = pst ] && echo "\"$ENGINE\"" || echo null)" \
        "$([ "$PEEL" = 1 ] && echo true || echo false)" "$f" "$status" "$n_ok" "$n_err" "$n_exc" "$n_ign" \
        "$n_skip" "$secs" "$rc" "$alive" "$(json_str "$first")" >>"$SUMMARY"
    rows+=("$(printf '%-20s %-9s %5d %5d %4d %5d %5ds  %s' "$f" "$status" "$n_ok" "$n_err" "$n_exc" "$n_ign" "$secs" "${first:0:110}")")
    echo "   $f: $status ok=$n_ok err=$n_err exception=$n_exc ignored=$n_ign (${secs}s)"
done

echo
echo "== redis $REDIS_TAG test suite vs $label"
printf '%-20s %-9s %5s %5s %4s %5s %6s  %s\n' file status ok err exc ign time "first error"
printf '%s\n' "${rows[@]}"
printf '%-20s %-9s %5d %5d %4d %5d\n' TOTAL "" "$tot_ok" "$tot_err" "$tot_exc" "$tot_ign"
echo "files aborted/timed out: $tot_aborted of ${#rows[@]}"
echo
echo "== machine-readable (also in $SUMMARY; per-test failures in $FAILS; logs in $OUT/logs)"
cat "$SUMMARY"
