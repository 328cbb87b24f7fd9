#!/usr/bin/env python3
"""Rank what blocks redis's own tests on a target, against a baseline run of real redis-server.

    bench/redis-suite/rank.py results/redis results/pst-uring-peel [--tests]

Both arguments are `run.sh --out` directories (logs/*.log). Every test that passes on the baseline
is charged to the FIRST thing that stopped it on the target:
  * the test's own error (unknown command, syntax error, wrong reply ...), or
  * the error outside any test that skipped the rest of its start_server block ("block"), or
  * the harness exception that aborted the whole file ("abort"), or
  * a tag that made the harness skip it in this mode (e.g. singledb:skip under --peel).
Causes are normalised (e.g. every "unknown command 'x'" is "missing command X") and ranked by the
number of baseline-passing tests they stop. Fixing a cause unblocks at most that many tests: a test
can hit a second missing piece right after the first.
"""
import os
import signal
import re
import sys
from collections import OrderedDict, defaultdict

EV = re.compile(r"^\[(ok|err|ignore|skip|exception)\]: (.*)$")


def parse(path):
    """Events of one runtest log, in order: (kind, name, message, command)."""
    lines = open(path, errors="replace").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = EV.match(lines[i])
        if not m:
            i += 1
            continue
        kind, rest = m.groups()
        i += 1
        if kind == "ok":
            out.append(("ok", re.sub(r" \(\d+ ms\)$", "", rest), "", ""))
            continue
        if kind in ("ignore", "skip"):
            name, _, why = rest.rpartition(": ")
            out.append((kind, name or rest, why, ""))
            continue
        body = []
        while i < len(lines) and not EV.match(lines[i]) and not re.match(r"^\[\d+/\d+ done\]", lines[i]):
            body.append(lines[i])
            i += 1
        if kind == "exception":
            msg = re.sub(r"^Executing test client: ", "", rest).rstrip(".")
            name = None
        elif re.search(r" in tests/.*\.tcl$", rest):
            name = re.sub(r" in tests/.*\.tcl$", "", rest)
            msg = body[0] if body else ""
            # non-assertion errors: the harness cuts 10 chars, the full message follows before the stack
            if len(body) > 2 and body[2] == "    while executing":
                msg = body[1]
            kind = "err"
        else:
            kind, name = "block", None
            msg = body[0] if body else rest
        cmd = ""
        for b in body:
            if b.startswith('"') and not b.startswith('"[srv ') and not b.startswith('"uplevel'):
                cmd = b.strip('"')
                break
        out.append((kind, name, msg.strip(), cmd))
    return out


def cause(msg, cmd, kind):
    m = re.search(r"unknown command '([^']+)'(, with args beginning with: '([^']*)')?", msg)
    if m:
        c = m.group(1).upper()
        if c in ("FUNCTION", "CONFIG", "CLIENT", "OBJECT", "DEBUG", "ACL", "COMMAND") and m.group(3):
            c += " " + m.group(3).upper()
        return "missing command " + c
    if "DB index is out of range" in msg:
        return "SELECT n>0 rejected (ERR DB index is out of range)"
    if "CONFIG subcommand not supported" in msg and "unknown subcommand" in msg:
        return "unknown CONFIG subcommand: wrong error text (want 'ERR unknown subcommand ...')"
    if "CONFIG subcommand not supported" in msg:
        sub = cmd.split()[2].upper() if len(cmd.split()) > 2 else "?"
        return "CONFIG %s not supported" % sub
    low = cmd.lower().split()
    if msg.startswith("ERR syntax error") and low[:2] == ["r", "set"]:
        return "SET options (EX/PX/EXAT/PXAT/NX/XX/GET/KEEPTTL) rejected: ERR syntax error"
    if msg.startswith("ERR syntax error"):
        return "syntax error on " + " ".join(low[1:3]).upper()
    if "wrong number of arguments" in msg:
        return "arity error on " + (low[1].upper() if len(low) > 1 else "?")
    if msg:
        short = re.sub(r"\(context: .*", "", msg).strip()
        return "wrong reply: " + short[:140]
    return "unknown"


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_tests = "--tests" in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    base_dir, run_dir = args
    ranked = defaultdict(lambda: {"n": 0, "via": defaultdict(int), "files": OrderedDict(), "tests": []})
    passed = total = 0
    for fn in sorted(os.listdir(os.path.join(base_dir, "logs"))):
        if not fn.endswith(".log") or fn.endswith(".server.log"):
            continue
        unit = fn[:-4].replace("_", "/")  # run.sh names logs unit/type/string -> unit_type_string.log
        base = [e[1] for e in parse(os.path.join(base_dir, "logs", fn)) if e[0] == "ok"]
        rp = os.path.join(run_dir, "logs", fn)
        if not os.path.exists(rp):
            continue
        run = parse(rp)
        seen = {}
        for idx, e in enumerate(run):
            if e[1] is not None and e[1] not in seen:
                seen[e[1]] = (idx, e)
        stoppers = [(idx, e) for idx, e in enumerate(run) if e[0] in ("block", "exception")]
        last_seen_idx = -1
        for t in base:
            total += 1
            if t in seen:
                idx, e = seen[t]
                last_seen_idx = idx
                if e[0] == "ok":
                    passed += 1
                    continue
                if e[0] in ("ignore", "skip"):
                    key = "skipped by the harness in this mode: " + e[2]
                    if "singledb" in e[2]:
                        key = "needs several databases (SELECT n; test tagged singledb:skip)"
                else:
                    key = cause(e[2], e[3], e[0])
            else:
                st = [e for idx, e in stoppers if idx > last_seen_idx]
                st = st or [e for _, e in stoppers]
                if st:
                    e = st[0]
                    key = cause(e[2], e[3], e[0])
                    ranked[key]["via"]["aborted file" if e[0] == "exception" else "skipped rest of block"] += 1
                else:
                    key = "test not defined on target (its definition depends on a server reply, e.g. INFO field)"
            r = ranked[key]
            r["n"] += 1
            r["files"][unit] = r["files"].get(unit, 0) + 1
            r["tests"].append("%s: %s" % (unit, t))
    print("%d of %d baseline-passing tests pass on %s" % (passed, total, run_dir))
    print("%5s  %s" % ("tests", "first blocker  (files: tests)"))
    for key, r in sorted(ranked.items(), key=lambda kv: (-kv[1]["n"], kv[0])):
        files = ", ".join("%s:%d" % (f.replace("unit/", ""), n) for f, n in r["files"].items())
        via = "".join("; %d via %s" % (n, how) for how, n in r["via"].items())
        print("%5d  %s  (%s%s)" % (r["n"], key, files, via))
        if show_tests:
            for t in r["tests"]:
                print("         - " + t)


if __name__ == "__main__":
    main()
