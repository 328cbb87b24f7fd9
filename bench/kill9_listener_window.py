#!/usr/bin/env python3
"""How long a SIGKILLed server's listening socket keeps accepting connections.

    python3 bench/kill9_listener_window.py [ROUNDS] [-- extra pst args]

Starts `target/release/pst kv` on a fresh pool, drives it with 8 client connections sending
PING/SET in a loop, and a prober that connects over and over; kills the server with SIGKILL at a
random moment and reports, per round, how long after the kill the last connection was still
accepted by the kernel (0 = none was). Such connections are reset a moment later, when the
listener finally goes away.
"""
import os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PST = os.path.join(ROOT, "target", "release", "pst")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ready(port):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        c.sendall(b"PING\r\n")
        ok = c.recv(16).startswith(b"+PONG")
        c.close()
        return ok
    except OSError:
        return False


def one_round(extra, pool_dir):
    port = free_port()
    srv = subprocess.Popen([PST, "kv", "--addr", f"127.0.0.1:{port}", "--pool",
                            os.path.join(pool_dir, "pool"), "--pool-size", "32MiB"] + extra,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not ready(port):
        if time.time() > deadline:
            srv.kill()
            raise SystemExit("server did not come up")
        time.sleep(0.02)
    stop = threading.Event()

    def load():
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=1)
            i = 0
            while not stop.is_set():
                c.sendall(b"SET k%d %s\r\n" % (i % 100, b"v" * 100))
                if not c.recv(64):
                    return
                i += 1
        except OSError:
            return

    accepted = []

    def probe():
        refused = 0
        while refused < 50:
            s = socket.socket()
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
                accepted.append(time.monotonic())
                refused = 0
            except OSError:
                if stop.is_set():
                    refused += 1
            finally:
                s.close()

    loaders = [threading.Thread(target=load) for _ in range(8)]
    for t in loaders:
        t.start()
    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(random.uniform(0.1, 0.4))
    t_kill = time.monotonic()
    srv.send_signal(signal.SIGKILL)
    stop.set()
    srv.wait()
    prober.join()
    for t in loaders:
        t.join()
    after = [t - t_kill for t in accepted if t > t_kill]
    return max(after, default=0.0) * 1000, len(after)


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    rounds = int(args[0]) if args else 8
    windows = []
    for r in range(rounds):
        d = tempfile.mkdtemp(prefix="pst-kill9-window-")
        try:
            w, n = one_round(extra, d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        windows.append(w)
        print(f"round {r}: last connection accepted {w:.1f} ms after SIGKILL ({n} accepted after it)")
    print(f"window over {rounds} kills: min {min(windows):.1f} ms, max {max(windows):.1f} ms")


if __name__ == "__main__":
    main()
