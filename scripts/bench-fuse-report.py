#!/usr/bin/env python3
"""Table and history records for scripts/bench-fuse.sh.

Reads the measurements the script collected (RESULTS: one `key value` pair per line), prints the
results table, and writes one benchmark record per measurement to RECORDS as JSON Lines: the
measured fields of `pixelrts::bench::BenchRecord` (src/bench/history.rs). The script appends them
with `pixelrts bench-append`, which fills in the environment (timestamp, git commit, version,
machine) as every other record gets it and refuses the whole file if one line is not a record.

Record names carry the sizes, so a QUICK run never compares against a full one:
  fuse_cp_random_<size>          cp out of the mount; reference_mb_sec = same-run pixelrts decode
  decode_cli_random_<size>       pixelrts decode of the same .rts.png
  squashfuse_cp_random_<size>    cp out of a squashfuse mount (gzip) of the same data
  fuse_random_read_<n>B_cold_<size> / _warm_<size>
                                 p50 latency as decode_time, <n> / p50 as throughput (as the
                                 records of `pixelrts bench-random`), p99 in metadata
  fuse_rss_random_<size>_cache<cache>
                                 peak_memory_mb = the mount's VmHWM; throughput of the read
Exits 1 when a check failed (a copy's SHA-256, a mismatching block, RSS over the limit), after
printing the table and writing the records (failures are recorded, with roundtrip_ok false).
"""
import argparse
import json
import sys

MB = 1e6  # BenchRecord's MB/s and peak_memory_mb use MB = 10^6 bytes
MiB = 1 << 20


def label(n):
    """1073741824 -> '1GiB', 33554432 -> '32MiB', 1000 -> '1000B'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def new_record(test_name, data_size, extra):
    """The measured part of a record; `pixelrts bench-append` completes it."""
    return {
        "test_name": test_name,
        "data_size": data_size,
        "metadata": {"iterations": 1, "pattern": "random", "mode": "", **extra},
    }


def timed(rec, seconds, data_size):
    """Fills the time and throughput fields of a one-iteration read of data_size bytes."""
    for k in ("decode_time", "total_time", "decode_time_min", "decode_time_median",
              "decode_time_max"):
        rec[k] = seconds
    rec["throughput_mb_sec"] = rec["decode_mb_sec"] = data_size / MB / seconds if seconds > 0 else 0.0
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("records")
    a = ap.parse_args()

    r = {}
    for line in open(a.results):
        if line.strip():
            k, _, v = line.strip().partition(" ")
            r[k] = v.strip()
    num = lambda k: float(r[k])  # noqa: E731
    has = lambda k: k in r  # noqa: E731
    ok = lambda k: r.get(k) == "1"  # noqa: E731

    size, rss_size, cache = int(r["size"]), int(r["rss_size"]), int(r["cache_bytes"])
    sl, common = label(size), {"cold_cache": ok("caches_dropped")}
    records, failed = [], []
    rows = []  # (what, seconds, MB/s, check)

    def copy_row(key, what):
        t = num(key + "_s")
        rows.append((what, f"{t:.2f}", f"{size / MB / t:.0f}", "ok" if ok(key + "_ok") else "MISMATCH"))
        if not ok(key + "_ok"):
            failed.append(f"{what}: SHA-256 differs from the original")

    decode_mb_s = size / MB / num("decode_s")
    rec = timed(new_record(f"fuse_cp_random_{sl}", size,
                           {**common, "mode": "fuse-cp", "cache_size": cache}), num("fuse_cp_s"), size)
    rec["reference_mb_sec"] = decode_mb_s
    rec["roundtrip_ok"] = ok("fuse_cp_ok")
    records.append(rec)
    copy_row("fuse_cp", "cp out of the pixelrts mount")

    rec = timed(new_record(f"decode_cli_random_{sl}", size,
                           {**common, "mode": "decode-cli"}), num("decode_s"), size)
    rec["roundtrip_ok"] = ok("decode_ok")
    rec["size_ratio"] = int(r["png_bytes"]) / size
    records.append(rec)
    copy_row("decode", "pixelrts decode of the .rts.png")

    if has("squashfuse_cp_s"):
        rec = timed(new_record(f"squashfuse_cp_random_{sl}", size,
                               {**common, "mode": "squashfuse-gzip"}), num("squashfuse_cp_s"), size)
        rec["roundtrip_ok"] = ok("squashfuse_cp_ok")
        rec["size_ratio"] = int(r["sqfs_bytes"]) / size
        records.append(rec)
        copy_row("squashfuse_cp", "cp out of squashfuse (gzip)")

    n = int(r["lat_size"])
    for phase in ("cold", "warm"):
        p50, p99 = num(f"lat_{phase}_p50_us"), num(f"lat_{phase}_p99_us")
        rec = new_record(f"fuse_random_read_{n}B_{phase}_{sl}", n,
                         {**common, "mode": f"fuse-{phase}", "reads": int(r["lat_reads"]),
                          "kernel_readahead": r.get("lat_readahead") == "1",
                          f"{phase}_p99_us": p99, "file_size": size})
        rec["metadata"]["iterations"] = int(r["lat_reads"])
        timed(rec, p50 / 1e6, n)
        rec["roundtrip_ok"] = int(r["lat_mismatches"]) == 0
        records.append(rec)
    if int(r["lat_mismatches"]):
        failed.append(f"random reads: {r['lat_mismatches']} blocks differ from the original")

    hwm, rss = int(r["vmhwm_kb"]) * 1024, int(r["vmrss_kb"]) * 1024
    limit = cache + 64 * MiB
    within = hwm <= limit and rss <= limit
    rec = timed(new_record(f"fuse_rss_random_{label(rss_size)}_cache{label(cache)}", rss_size,
                           {**common, "mode": "fuse-rss", "cache_size": cache,
                            "vmhwm_bytes": hwm, "vmrss_bytes": rss,
                            "vmrss_after_mount_bytes": int(r["vmrss_start_kb"]) * 1024,
                            "limit_bytes": limit, "rss_within_limit": within}),
                num("rss_read_s"), rss_size)
    rec["peak_memory_mb"] = hwm / MB
    rec["roundtrip_ok"] = ok("rss_read_ok")
    records.append(rec)
    if not ok("rss_read_ok"):
        failed.append(f"RSS read: SHA-256 of the {label(rss_size)} file read through the mount differs")
    if not within:
        failed.append(f"RSS: VmHWM {hwm / MiB:.0f} MiB / VmRSS {rss / MiB:.0f} MiB over {limit / MiB:.0f} MiB")

    with open(a.records, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    # --- the table ---
    print()
    print(f"Sequential read of a {label(size)} random file"
          + ("" if ok("caches_dropped") else " (page cache NOT dropped: not root?)") + ":")
    w = max(len(x[0]) for x in rows)
    print(f"  {'':{w}}  {'seconds':>8}  {'MB/s':>6}  sha256")
    for what, t, mbs, check in rows:
        print(f"  {what:{w}}  {t:>8}  {mbs:>6}  {check}")
    print(f"  sizes on disk: .rts.png {int(r['png_bytes']) / MiB:.1f} MiB"
          + (f", squashfs (gzip) {int(r['sqfs_bytes']) / MiB:.1f} MiB" if has("sqfs_bytes") else ""))
    print()
    print(f"Random {n} B reads through the mount ({r['lat_reads']} reads, {label(size)} file, "
          + ("kernel readahead on" if r.get("lat_readahead") == "1" else "POSIX_FADV_RANDOM") + "):")
    for phase, what in (("cold", "cold (fresh mount)"), ("warm", "warm (second pass)")):
        print(f"  {what:20}  p50 {num(f'lat_{phase}_p50_us'):9.1f} us   "
              f"p99 {num(f'lat_{phase}_p99_us'):9.1f} us")
    print(f"  blocks differing from the original: {r['lat_mismatches']}")
    print()
    print(f"Mount process memory after reading a {label(rss_size)} file "
          f"({rss_size / MB / num('rss_read_s'):.0f} MB/s, sha256 "
          f"{'ok' if ok('rss_read_ok') else 'MISMATCH'}) with cache_size={label(cache)}:")
    print(f"  VmRSS after mount {int(r['vmrss_start_kb']) / 1024:.1f} MiB, VmHWM {hwm / MiB:.1f} MiB, "
          f"VmRSS {rss / MiB:.1f} MiB, limit cache_size + 64 MiB = {limit / MiB:.0f} MiB: "
          + ("PASS" if within else "FAIL"))
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
