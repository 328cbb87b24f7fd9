#!/usr/bin/env python3
"""Fill a small pool's log with 100-byte values until the first -OOM, optionally kill -9 and
restart on the full pool, delete half the keys (in write order or shuffled, one per request or
pipelined), then try a new SET. Prints how many deletes were refused.

    python3 bench/full_log.py [--pst target/release/pst] [--engine uring|epoll]
                              [--order seq|rand] [--restart] [--batch N]

Needs redis-py (pip install redis). Uses a 16 MiB pool in a fresh temporary directory.
"""
import argparse, os, random, signal, subprocess, tempfile, time

import redis

ap = argparse.ArgumentParser()
ap.add_argument("--pst", default="target/release/pst")
ap.add_argument("--engine", default="uring")
ap.add_argument("--order", default="seq", choices=["seq", "rand"])
ap.add_argument("--restart", action="store_true")
ap.add_argument("--batch", type=int, default=1, help="deletes per pipeline")
a = ap.parse_args()

d = tempfile.mkdtemp(prefix="pst-full-log-")
port = 7400 + random.randint(0, 500)


def start():
    p = subprocess.Popen(
        [a.pst, "kv", "--engine", a.engine, "--pool", d + "/pool", "--pool-size", "16MiB",
         "--persist", "fsync", "--addr", f"127.0.0.1:{port}"],
        stderr=open(d + "/log", "a"))
    for _ in range(100):
        try:
            r = redis.Redis(port=port)
            r.ping()
            return p, r
        except Exception:
            time.sleep(0.1)
    raise SystemExit("server did not come up; see " + d + "/log")


p, r = start()
n = 0
while True:
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"k{n + i}", "x" * 100)
    ok = sum(1 for x in pipe.execute(raise_on_error=False) if x is True)
    n += ok
    if ok < 100:
        break
if a.restart:
    p.send_signal(signal.SIGKILL)
    p.wait()
    p, r = start()
keys = list(range(n))
if a.order == "rand":
    random.shuffle(keys)
refused = 0
t0 = time.time()
for j in range(0, n // 2, a.batch):
    pipe = r.pipeline(transaction=False)
    for k in keys[j:j + a.batch]:
        pipe.delete(f"k{k}")
    refused += sum(1 for x in pipe.execute(raise_on_error=False) if isinstance(x, Exception))
secs = time.time() - t0
try:
    after = r.set("fresh", "y" * 100)
except redis.ResponseError as e:
    after = f"refused ({e})"
print(f"{a.engine} order={a.order} restart={a.restart} batch={a.batch}: stored {n}, "
      f"deleted {n // 2} in {secs:.1f} s, refused {refused}; SET after: {after}")
p.terminate()
p.wait()
