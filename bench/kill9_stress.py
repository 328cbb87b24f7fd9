#!/usr/bin/env python3
"""kill -9 stress for `pst kv`: random pipelined SET/DEL of 24-2,000-byte values over 1,501 keys
on an 8 MiB pool, the server killed at a random moment (0.3-1.5 s) each round, restarted, and
every acknowledged value checked (a write in flight at the kill may be either old or new).

    python3 bench/kill9_stress.py uring 12 fsync     # engine, rounds, persist
Needs redis-py (`pip install redis`) and a release build (PST_BIN overrides the binary).
Prints MISMATCH lines and, last, "bad 0" when nothing acknowledged was lost."""
import redis, random, subprocess, time, os, signal, sys, threading, tempfile
BIN=os.environ.get("PST_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "pst"))
eng=sys.argv[1]; rounds=int(sys.argv[2]); persist=sys.argv[3] if len(sys.argv)>3 else "fsync"
base=os.environ.get("PST_K9_DIR", "pst-data"); os.makedirs(base, exist_ok=True)  # on disk: fsync is real
d=tempfile.mkdtemp(prefix=f"k9-{eng}-", dir=base)
port=int(os.environ.get("PST_K9_PORT", "6490"))
def start():
    p=subprocess.Popen([BIN,"kv","--engine",eng,"--addr",f"127.0.0.1:{port}","--pool",f"{d}/pool","--pool-size","8MiB","--persist",persist],stdout=open(f"{d}/log","a"),stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            r=redis.Redis(port=port,socket_timeout=5); r.ping(); return p,r
        except Exception: time.sleep(0.02)
    raise SystemExit("no start: "+open(f"{d}/log").read()[-2000:])
model={}  # key -> value (acknowledged) or None (acknowledged delete)
uncertain={}  # key -> set of possible values (in flight at kill)
bad=0
for rnd in range(rounds):
    p,r=start()
    # verify
    for k,v in model.items():
        got=r.get(k)
        ok = got==v or (k in uncertain and got in uncertain[k])
        if not ok:
            bad+=1; print("MISMATCH",rnd,k,None if got is None else len(got),None if v is None else len(v))
    # adopt actual state for uncertain keys
    for k in uncertain:
        model[k]=r.get(k)
    uncertain={}
    killer=threading.Timer(random.uniform(0.3,1.5),lambda: os.kill(p.pid,signal.SIGKILL)); killer.start()
    try:
        while True:
            pipe=r.pipeline(transaction=False); ops=[]
            for _ in range(random.randint(1,30)):
                k=f"k{random.randint(0,1500)}"
                if random.random()<0.8:
                    v=os.urandom(8)*random.randint(3,250); pipe.set(k,v); ops.append((k,v))
                else: pipe.delete(k); ops.append((k,None))
            for k,v in ops: uncertain.setdefault(k,{model.get(k)}).add(v)
            res=pipe.execute()
            for (k,v),x in zip(ops,res):
                if v is not None and x is not True: 
                    if isinstance(x,Exception) and "OOM" in str(x): 
                        uncertain[k].discard(v); continue
                    print("unexpected",x); 
                model[k]=v
            uncertain={}
    except Exception as e:
        pass
    killer.join(); p.wait()
p,r=start(); 
for k,v in model.items():
    got=r.get(k)
    if not (got==v or (k in uncertain and got in uncertain[k])): bad+=1; print("MISMATCH final",k)
p.send_signal(signal.SIGTERM); p.wait()
print(eng,persist,"rounds",rounds,"keys",len(model),"bad",bad)
import shutil; shutil.rmtree(d, ignore_errors=True)
sys.exit(1 if bad else 0)
