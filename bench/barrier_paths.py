#!/usr/bin/env python3
"""CPU per group-commit barrier on this file system, four ways (issue 11's fsync path).

Each batch writes 48 blocks of 4 KiB (about 50 packed 1 KiB SETs) and makes them durable:
scattered `pwrite`s + `fdatasync`; one contiguous `pwrite` + `fdatasync` (what pst's
merged write-back issues); O_DIRECT + `fdatasync`; O_DIRECT with `RWF_DSYNC`. Prints the
process's CPU (user + system) and wall time per batch.

    python3 bench/barrier_paths.py [DIR]   # DIR on the file system to measure (default .)
"""
import mmap
import os
import resource
import sys
import time

N, K = 1500, 48
path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "barrier-paths.tmp")
size = 64 << 20
fd = os.open(path, os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, size)
for off in range(0, size, 1 << 20):
    os.pwrite(fd, b"\0" * (1 << 20), off)
os.fsync(fd)
block = b"x" * 4096


def run(name, f):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    for i in range(N):
        f((i * K * 4096) % (size - K * 4096))
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"{name:36s} cpu/batch {cpu / N * 1e6:7.1f} us   wall/batch {(t1 - t0) / N * 1e6:7.1f} us")


def scattered(base):
    for j in range(K):
        os.pwrite(fd, block, base + j * 4096)
    os.fdatasync(fd)


def contiguous(base):
    os.pwrite(fd, block * K, base)
    os.fdatasync(fd)


dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
aligned = mmap.mmap(-1, K * 4096)
aligned.write(block * K)


def direct(base):
    os.pwritev(dfd, [aligned], base)
    os.fdatasync(dfd)


def direct_dsync(base):
    os.pwritev(dfd, [aligned], base, os.RWF_DSYNC)


try:
    run("48 pwrite + fdatasync", scattered)
    run("one pwrite (192 KiB) + fdatasync", contiguous)
    run("O_DIRECT (192 KiB) + fdatasync", direct)
    run("O_DIRECT (192 KiB) RWF_DSYNC", direct_dsync)
finally:
    os.unlink(path)
