#!/usr/bin/env python3
"""Restart time of `pst kv` after `kill -9`, with a pool full of data.

    python3 bench/restart_time.py [--size 1GiB] [--keys 400000] [--value 1024]
                                  [--persist fsync] [--rounds 3] [--cold] [--dir pst-data]

Creates a pool of --size under --dir (on disk, so the page cache and the disk are real), writes
--keys `SET key:<n> <--value bytes>` with redis-benchmark (pipelined, random keys, so some are
overwritten), kills the server with SIGKILL, then --rounds times: starts it again, times how long
until `PING` answers and reads the server's own `store recovered ... ms=` figure, checks `DBSIZE`
is unchanged, kills it again. With --cold (root only) the page cache is dropped before each
start, as after a reboot. Prints one JSON object per round. Needs redis-cli and
redis-benchmark; PST_BIN overrides the binary (default target/release/pst)."""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time

BIN = os.environ.get("PST_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "pst"))
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--size", default="1GiB")
ap.add_argument("--keys", type=int, default=400_000)
ap.add_argument("--value", type=int, default=1024)
ap.add_argument("--persist", default="fsync")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--cold", action="store_true", help="drop the page cache before each start (root)")
ap.add_argument("--dir", default="pst-data")
ap.add_argument("--port", type=int, default=6495)
a = ap.parse_args()
for tool in ("redis-cli", "redis-benchmark"):
    if not shutil.which(tool):
        sys.exit(f"restart_time: {tool} not found (apt-get install redis-tools)")
os.makedirs(a.dir, exist_ok=True)
d = tempfile.mkdtemp(prefix="restart-", dir=a.dir)
pool, log = f"{d}/pool", f"{d}/log"


def start():
    t0 = time.monotonic()
    p = subprocess.Popen([BIN, "kv", "--addr", f"127.0.0.1:{a.port}", "--pool", pool, "--pool-size", a.size,
                          "--persist", a.persist], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    while True:
        if p.poll() is not None:
            sys.exit("restart_time: the server exited:\n" + open(log).read()[-2000:])
        r = subprocess.run(["redis-cli", "-p", str(a.port), "ping"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return p, time.monotonic() - t0
        if time.monotonic() - t0 > 300:
            p.kill()
            sys.exit("restart_time: no answer within 300 s")
        time.sleep(0.02)


def dbsize():
    return int(subprocess.run(["redis-cli", "-p", str(a.port), "dbsize"], capture_output=True, text=True).stdout)


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait()


try:
    p, _ = start()
    subprocess.run(["redis-benchmark", "-p", str(a.port), "-t", "set", "-r", str(a.keys), "-n", str(a.keys),
                    "-d", str(a.value), "-c", "50", "-P", "16", "-q"], check=True, capture_output=True)
    keys = dbsize()
    kill(p)
    for rnd in range(a.rounds):
        if a.cold:
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        p, secs = start()
        m = re.search(r"store recovered.*?ms=(\d+)", open(log).read())
        n = dbsize()
        kill(p)
        print(json.dumps({"round": rnd + 1, "pool": a.size, "persist": a.persist, "cold": a.cold,
                          "keys": n, "restart_s": round(secs, 3),
                          "recovery_ms": int(m[1]) if m else None}), flush=True)
        if n != keys:
            sys.exit(f"restart_time: {keys} keys before the kill, {n} after")
finally:
    shutil.rmtree(d, ignore_errors=True)
