#!/usr/bin/env bash
# How fast could a cold loop-mounted `tar` through the mount be at best? The disk-side lower
# bound of the format, beside what the mount and squashfuse_ll take (issue 12).
#
#   scripts/bench-loop-bound.sh IMAGE.ext4 [BINARY]     (as root; needs strace, squashfuse_ll)
#
# The PNG stores the payload along a Hilbert curve, so the stream bytes of one segment lie on
# about a hundred scanlines, a few hundred bytes of each, 64 KiB apart in a large image. The
# script records which bytes of the PNG the mount reads during the `tar` (strace of its
# `preadv2` calls, with the PNG in the page cache so that each read is one call), then replays
# exactly those reads from a dropped page cache, in the same order and in the same batches
# (each batch's reads started at once with POSIX_FADV_WILLNEED, as the mount does): no inflating,
# no FUSE, no ext4 — only the disk reads the format makes a cold `tar` wait for. The replay
# from the page cache gives the replay's own cost, which is subtracted. Printed beside it, in
# one run, medians of REPS (default 3) alternated rounds: the mount's cold `tar` and the same
# with its PNG already cached, squashfuse_ll over `mksquashfs -comp zstd` cold, and the bytes
# each read from the disk (/proc/PID/io). KEEP_TRACE=DIR keeps the recorded reads (strace's
# files, one per thread).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-loop-bound.sh needs root (drop_caches, losetup, mount)" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: scripts/bench-loop-bound.sh IMAGE.ext4 [BINARY]" >&2; exit 2; }
for tool in strace squashfuse_ll mksquashfs python3; do
    command -v "$tool" >/dev/null || { echo "bench-loop-bound.sh: $tool is not installed" >&2; exit 2; }
done
IMAGE=$(realpath "$1")
BIN=$(realpath "${2:-target/release/pixelrts}")
REPS=${REPS:-3}
# shellcheck source=scripts/mount-bench-common.sh
source "scripts/mount-bench-common.sh"
bench_workdir pixelrts-bound
NAME=$(basename "$IMAGE")
PNG="$IMAGE.$(basename "$BIN").rts.png"
SQFS="$IMAGE.zstd.sqfs"
[ -f "$PNG" ] || "$BIN" encode "$IMAGE" "$PNG" --no-sidecar >/dev/null
zstd_sqfs_of "$IMAGE"
mkdir "$WORK/src"
ln "$PNG" "$WORK/src/$NAME.rts.png"

# mount_way WAY: mounts the image at $MNT (pixelrts or sqfs) and sets PID to the server's.
mount_way() {
    if [ "$1" = sqfs ]; then
        squashfuse_ll "$SQFS" "$MNT"
        PID=$(pgrep -n -f "squashfuse_ll $SQFS")
    else
        "$BIN" mount "$WORK/src" "$MNT" -o ro
        PID=$(pgrep -n -f "mount $WORK/src")
    fi
    for _ in $(seq 100); do [ -e "$MNT/$NAME" ] && break; sleep 0.05; done
}
disk_mb() { awk '/^read_bytes/ {printf "%.0f", $2 / 1e6}' "/proc/$1/io"; }

# One timed `tar` per way: "seconds MB-read-from-disk".
run_way() {
    drop
    [ "$1" = warm ] && cat "$PNG" >/dev/null
    mount_way "$1"
    local t mb
    t=$(loop_tar "$MNT/$NAME" meta)
    mb=$(disk_mb "$PID")
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT"
    echo "$t $mb"
}

# The reads the mount makes, recorded with the PNG cached.
drop
cat "$PNG" >/dev/null
mount_way pixelrts
strace -ff -ttt -qq -s 0 -e trace=pread64,preadv2 -e signal=none -o "$WORK/reads" -p "$PID" &
STRACE=$!
sleep 1
loop_tar "$MNT/$NAME" meta >/dev/null
kill "$STRACE"; wait "$STRACE" 2>/dev/null || true
[ -n "${KEEP_TRACE:-}" ] && mkdir -p "$KEEP_TRACE" && cp "$WORK"/reads.* "$KEEP_TRACE"/
fusermount3 -u "$MNT"

declare -A T
for _ in $(seq "$REPS"); do
    for way in pixelrts warm sqfs; do T[$way]+="$(run_way $way),"; done
done

python3 - "$WORK" "$PNG" "${T[pixelrts]}" "${T[warm]}" "${T[sqfs]}" <<'EOF'
import glob, os, re, statistics, subprocess, sys, time
work, png = sys.argv[1], sys.argv[2]
# Every thread's reads (strace -ff: a file per thread), in the order they were made. Reads of
# one byte are the warming thread's (it waits for its read-ahead that way), not the tar's.
preadv2 = re.compile(r'^([\d.]+) preadv2\(\d+, .*, 1, (\d+), RWF_NOWAIT\) += (\d+)$')
pread = re.compile(r'^([\d.]+) pread64\(\d+, .*, \d+, (\d+)\) += (\d+)$')
reads = []
for path in glob.glob(f"{work}/reads.*"):
    tid = path.rsplit(".", 1)[1]
    for line in open(path):
        m = preadv2.match(line) or pread.match(line)
        if m and int(m.group(3)) > 1:
            reads.append((float(m.group(1)), tid, int(m.group(2)), int(m.group(3))))
reads.sort()
# Batches: a thread's consecutive reads at rising offsets (one segment's or one tile run's
# scanlines), started together as the mount starts them.
batches, open_batch = [], {}
for _, tid, offset, length in reads:
    b = open_batch.get(tid)
    if b is None or offset < b[-1][0]:
        b = []
        batches.append(b)
        open_batch[tid] = b
    b.append((offset, length))
spans = [s for b in batches for s in b]
pages = {p for off, n in spans for p in range(off // 4096, (off + n - 1) // 4096 + 1)}

def replay(cold):
    subprocess.run(["sh", "-c", "sync; echo 3 >/proc/sys/vm/drop_caches"], check=True)
    if not cold:
        subprocess.run(["sh", "-c", f"cat '{png}' >/dev/null"], check=True)
    fd = os.open(png, os.O_RDONLY)
    t0 = time.monotonic()
    for b in batches:
        for off, n in b:
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
        for off, n in b:
            os.pread(fd, n, off)
    took = time.monotonic() - t0
    os.close(fd)
    return took

cold = statistics.median(replay(True) for _ in range(3))
cached = statistics.median(replay(False) for _ in range(3))

def med(field):
    rows = [r.split() for r in field.strip(",").split(",")]
    return statistics.median(float(r[0]) for r in rows), statistics.median(float(r[1]) for r in rows)

(ours, ours_mb), (warm, _), (sq, sq_mb) = med(sys.argv[3]), med(sys.argv[4]), med(sys.argv[5])
size = os.path.getsize(png) / 1e6
print(f"PNG {size:.0f} MB; the tar's reads: {len(spans):,} spans in {len(batches):,} batches, "
      f"{len(pages):,} distinct 4 KiB pages ({len(pages) * 4096 / 1e6:.0f} MB)")
print(f"replay of those reads, cold: {cold:.2f} s; from the page cache: {cached:.2f} s; "
      f"disk wait alone: {cold - cached:.2f} s")
print(f"pixelrts tar cold: {ours:.2f} s ({ours_mb:.0f} MB from disk); with its PNG cached: {warm:.2f} s")
print(f"squashfuse_ll zstd tar cold: {sq:.2f} s ({sq_mb:.0f} MB from disk)")
print(f"the format's disk wait alone is {(cold - cached) / sq:.2f}x squashfuse's whole tar; "
      f"fetched on demand, disk wait + tar with the PNG cached: {cold - cached + warm:.2f} s; "
      f"pixelrts measured {ours / sq:.2f}x squashfuse")
EOF
