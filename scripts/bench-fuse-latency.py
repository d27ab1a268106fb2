#!/usr/bin/env python3
"""Random-read latency of one file, for scripts/bench-fuse.sh.

Reads READS blocks of SIZE bytes at random SIZE-aligned offsets (a fixed seed, so runs are
comparable) with os.pread, timing each with time.perf_counter_ns, in two passes over the same
offsets: the first ("cold") is meant to run right after a fresh mount with the page cache
dropped, the second ("warm") then finds the data in the kernel's page cache or the mount's
tile cache. After both passes every block is compared with the same range of ORIGINAL (read
after the timing, so it cannot warm anything the timed reads use).

The file is opened with POSIX_FADV_RANDOM, as random-access programs (databases, VM images) do:
without it each 4 KiB miss makes the kernel read ahead up to the mount's readahead window, so
later "random" reads hit pages fetched for earlier ones and the cold numbers measure readahead
rather than a 4 KiB read. --readahead keeps the kernel's default behaviour.

Prints one JSON object: {"reads", "size", "cold_p50_us", "cold_p99_us", "warm_p50_us",
"warm_p99_us", "mismatches", "readahead"}, or with --kv one `lat_<key> <value>` line per key
(the results file format of scripts/bench-fuse.sh); exits 1 if any block differs from the
original.
"""
import argparse
import json
import math
import os
import random
import sys
import time


def percentile(sorted_ns, p):
    """Nearest-rank percentile of a sorted list, in microseconds."""
    k = max(0, min(len(sorted_ns) - 1, math.ceil(p / 100.0 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1000.0


def timed_pass(fd, offsets, size):
    times, blocks = [], []
    for off in offsets:
        t0 = time.perf_counter_ns()
        data = os.pread(fd, size, off)
        t1 = time.perf_counter_ns()
        times.append(t1 - t0)
        blocks.append(data)
    times.sort()
    return times, blocks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="file to read (inside the mount)")
    ap.add_argument("original", help="the same bytes outside the mount, to check the reads")
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--readahead", action="store_true",
                    help="keep kernel readahead (no POSIX_FADV_RANDOM)")
    ap.add_argument("--kv", action="store_true", help="print `lat_<key> <value>` lines")
    a = ap.parse_args()

    length = os.stat(a.file).st_size
    if length < a.size:
        sys.exit(f"{a.file}: {length} bytes, smaller than one {a.size}-byte read")
    rng = random.Random(a.seed)
    offsets = [rng.randrange(length // a.size) * a.size for _ in range(a.reads)]

    fd = os.open(a.file, os.O_RDONLY)
    if not a.readahead:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        cold, blocks = timed_pass(fd, offsets, a.size)
        warm, _ = timed_pass(fd, offsets, a.size)
    finally:
        os.close(fd)

    mismatches = 0
    ofd = os.open(a.original, os.O_RDONLY)
    try:
        for off, data in zip(offsets, blocks):
            if os.pread(ofd, a.size, off) != data:
                mismatches += 1
    finally:
        os.close(ofd)

    result = {
        "reads": a.reads,
        "size": a.size,
        "cold_p50_us": percentile(cold, 50),
        "cold_p99_us": percentile(cold, 99),
        "warm_p50_us": percentile(warm, 50),
        "warm_p99_us": percentile(warm, 99),
        "mismatches": mismatches,
        "readahead": int(a.readahead),
    }
    if a.kv:
        for k, v in result.items():
            print(f"lat_{k} {v}")
    else:
        print(json.dumps(result))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
