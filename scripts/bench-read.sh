#!/usr/bin/env bash
# The read path on real content, side by side (issue 12): the same file served four ways —
# `pixelrts mount` of its .rts.png, squashfuse_ll over `mksquashfs -comp zstd` and `-comp gzip`
# images, and the kernel's own squashfs (`mount -t squashfs -o loop`, the line to aim at) —
# read the ways people use a mounted image:
#   cp           the whole file to /dev/null, cold (fresh mount, page cache dropped) and warm
#   fio          4 KiB random reads, psync, 4 jobs, BENCH_FIO_SECONDS (default 20) s, cold start:
#                IOPS and p50 / p99 completion latency
#   loop tar     (ext4 images only) the file loop-mounted read-only from the mount, `tar cf
#                /dev/null` of its tree, cold and warm, as the issue measured it. GNU tar does not
#                read file contents when the archive is /dev/null: this is the inodes and
#                directories, small reads all over the image, not the files' data.
#   loop tar data  the same with the archive piped to `cat` (cold): the files' contents too
# Our mount is measured three times: as it comes; with `-o disk_cache=DIR`, DIR emptied before
# each measurement (`pixelrts-disk`: the first use, which writes the segments it decodes
# there); and with DIR holding what one earlier run of the same measurement left
# (`pixelrts-disk-again`: every later mount).
# One run, one table per file; ratios matter, these machines are shared and noisy.
#
#   scripts/bench-read.sh FILE...      (as root: drop_caches, losetup, mount)
#
# BENCH_READ_CACHE=DIR keeps the squashfs images (and, with BENCH_READ_REUSE_OURS=1, the
# .rts.png) between runs, for iterating on the read path alone.
# scripts/bench-content.sh runs it on its os.img and random.bin. Needs fio, squashfs-tools,
# squashfuse, fuse3 (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${PIXELRTS_BIN:-$ROOT/target/release/pixelrts}
[ -x "$BIN" ] || cargo build --release --quiet
FIO_SECONDS=${BENCH_FIO_SECONDS:-20}
[ "$(id -u)" -eq 0 ] || { echo "bench-read.sh needs root (drop_caches, losetup, mount)" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: scripts/bench-read.sh FILE..." >&2; exit 2; }

need=()
command -v fio >/dev/null || need+=(fio)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v squashfuse_ll >/dev/null || need+=(squashfuse)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# shellcheck source=scripts/mount-bench-common.sh
source "$ROOT/scripts/mount-bench-common.sh"
bench_workdir pixelrts-read

# mount_way WAY: mounts the file as WAY at $MNT, sets $SERVED (the file's path in the mount).
mount_way() {
    case "$1" in
    pixelrts)
        "$BIN" mount "$WORK/src" "$MNT" -o ro
        SERVED="$MNT/$NAME" ;;
    pixelrts-disk | pixelrts-disk-again)
        "$BIN" mount "$WORK/src" "$MNT" -o "ro,disk_cache=$WORK/disk-cache"
        SERVED="$MNT/$NAME" ;;
    sqfs-zstd | sqfs-gzip)
        squashfuse_ll "$WORK/$1.sqfs" "$MNT"
        SERVED="$MNT/$NAME" ;;
    kernel-zstd)
        mount -t squashfs -o loop,ro "$WORK/sqfs-zstd.sqfs" "$MNT"
        SERVED="$MNT/$NAME" ;;
    esac
    for _ in $(seq 100); do [ -e "$SERVED" ] && return 0; sleep 0.05; done
    echo "$1: $SERVED did not appear" >&2
    return 1
}
unmount_way() {
    case "$1" in
    kernel-zstd) umount "$MNT" ;;
    *) fusermount3 -u "$MNT" ;;
    esac
    for _ in $(seq 100); do mountpoint -q "$MNT" || return 0; sleep 0.05; done
}

# fio_run: prints "IOPS P50_US P99_US" for 4 KiB psync random reads of $SERVED.
fio_run() {
    fio --name=rand --filename="$SERVED" --readonly --rw=randread --bs=4k --ioengine=psync \
        --numjobs=4 --time_based --runtime="$FIO_SECONDS" --group_reporting \
        --output-format=json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]["read"]
p = j["clat_ns"]["percentile"]
print("%.0f %.0f %.0f" % (j["iops"], p["50.000000"] / 1000, p["99.000000"] / 1000))'
}

# cache_for WAY STEP: before a measurement, empties the disk cache of the disk_cache ways and,
# for pixelrts-disk-again, fills it by running STEP (a function of $SERVED) once first.
cache_for() {
    case "$1" in
    pixelrts-disk) rm -rf "$WORK/disk-cache" ;;
    pixelrts-disk-again)
        rm -rf "$WORK/disk-cache"
        drop; mount_way "$1"; "$2" >/dev/null; unmount_way "$1" ;;
    esac
}
step_cp() { cat "$SERVED" >/dev/null; }
step_fio() { fio_run; }
step_tar() { loop_tar "$SERVED"; }
step_tar_data() { loop_tar "$SERVED" data; }

CACHE=${BENCH_READ_CACHE:-}
for f in "$@"; do
    NAME=$(basename "$f")
    rm -rf "$WORK/src" "$WORK"/*.sqfs "$WORK/sq" "$WORK/disk-cache"
    mkdir -p "$WORK/src"
    echo ">>> $NAME: stored four ways" >&2
    ours="$WORK/src/$NAME.rts.png"
    if [ -n "$CACHE" ] && [ "${BENCH_READ_REUSE_OURS:-0}" = 1 ] && [ -f "$CACHE/$NAME.rts.png" ]; then
        ln "$CACHE/$NAME.rts.png" "$ours" 2>/dev/null || cp "$CACHE/$NAME.rts.png" "$ours"
    else
        "$BIN" encode "$f" "$ours" --no-sidecar >/dev/null
        if [ -n "$CACHE" ]; then mkdir -p "$CACHE"; cp "$ours" "$CACHE/$NAME.rts.png"; fi
    fi
    for comp in zstd gzip; do
        img="$WORK/sqfs-$comp.sqfs"
        if [ -n "$CACHE" ] && [ -f "$CACHE/$NAME.$comp.sqfs" ] && [ "$CACHE/$NAME.$comp.sqfs" -nt "$f" ]; then
            ln -s "$CACHE/$NAME.$comp.sqfs" "$img"
            continue
        fi
        rm -rf "$WORK/sq"; mkdir -p "$WORK/sq"
        ln "$f" "$WORK/sq/$NAME" 2>/dev/null || cp "$f" "$WORK/sq/$NAME"
        mksquashfs "$WORK/sq" "$img" -comp "$comp" -noappend -quiet -no-progress >/dev/null
        if [ -n "$CACHE" ]; then mkdir -p "$CACHE"; cp "$img" "$CACHE/$NAME.$comp.sqfs"; fi
    done
    rm -rf "$WORK/sq"
    is_ext4=no
    if command -v blkid >/dev/null && [ "$(blkid -o value -s TYPE "$f" 2>/dev/null)" = ext4 ]; then
        is_ext4=yes
    fi
    printf '\n%s (%s bytes)\n\n' "$NAME" "$(stat -c %s "$f")"
    printf '| way | cp cold s | cp warm s | fio 4 KiB IOPS | p50 µs | p99 µs | loop tar cold s | loop tar warm s | loop tar data cold s |\n'
    printf '|---|---|---|---|---|---|---|---|---|\n'
    for way in pixelrts pixelrts-disk pixelrts-disk-again sqfs-zstd sqfs-gzip kernel-zstd; do
        # cp: cold from a fresh mount and a dropped page cache, then warm.
        cache_for "$way" step_cp
        drop; mount_way "$way"
        t0=$(now); step_cp; t1=$(now); cp_cold=$(secs "$t0" "$t1")
        t0=$(now); step_cp; t1=$(now); cp_warm=$(secs "$t0" "$t1")
        unmount_way "$way"
        cache_for "$way" step_fio
        drop; mount_way "$way"
        read -r iops p50 p99 < <(step_fio)
        unmount_way "$way"
        tar_cold=- tar_warm=- tar_data=-
        if [ "$is_ext4" = yes ]; then
            cache_for "$way" step_tar
            drop; mount_way "$way"
            tar_cold=$(step_tar)
            tar_warm=$(step_tar)
            unmount_way "$way"
            cache_for "$way" step_tar_data
            drop; mount_way "$way"
            tar_data=$(step_tar_data)
            unmount_way "$way"
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$way" "$cp_cold" "$cp_warm" "$iops" "$p50" "$p99" "$tar_cold" "$tar_warm" "$tar_data"
    done
done
