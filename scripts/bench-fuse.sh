#!/usr/bin/env bash
# Benchmark of `pixelrts mount`, all measured in one run on the same data:
#  (a) sequential read of a random file (default 1 GiB): `cp` out of the pixelrts mount, versus
#      `pixelrts decode` of its .rts.png, versus `cp` out of a squashfuse mount of a
#      `mksquashfs -comp gzip` image of the same file; page cache dropped before each, every
#      copy's SHA-256 checked against the original's;
#  (b) random 4 KiB read latency through the mount, p50/p99 of READS reads (same offsets twice:
#      cold = fresh mount with the page cache dropped, warm = the second pass), each block
#      checked against the original (scripts/bench-fuse-latency.py; POSIX_FADV_RANDOM, so a
#      read is one 4 KiB request, not kernel readahead: READAHEAD=1 keeps readahead);
#  (c) VmHWM and VmRSS of the mount process after reading a random file (default 4 GiB) through
#      a mount with -o cache_size=CACHE_SIZE (default 256M): PASS when both stay within
#      cache_size + 64 MiB.
# Prints a table (scripts/bench-fuse-report.py) and appends one record per measurement to
# HISTORY_DIR/benchmark_history.jsonl, the history `pixelrts dashboard` shows. Exits non-zero
# when a check fails (a copy's hash, a block, RSS over the limit) after recording the run.
#
# Usage:  scripts/bench-fuse.sh [WORK_DIR]        (run as root to drop the page cache)
#   PIXELRTS=path     binary to measure [default: ${CARGO_TARGET_DIR:-target}/release/pixelrts,
#                     built with `cargo build --release` when missing]
#   QUICK=1           smoke run: 32 MiB file, 128 MiB RSS file, CACHE_SIZE=32M
#   SIZE=1G  RSS_SIZE=4G  CACHE_SIZE=256M  READS=1000      (K/M/G suffixes are powers of 1024)
#   HISTORY_DIR=benchmark_results   where benchmark_history.jsonl is appended (NO_HISTORY=1: don't)
#   KEEP=1            keep the generated files (WORK_DIR is always kept)
# WORK_DIR [default: a new directory under ${TMPDIR:-/var/tmp}] needs about
# 4 × SIZE + 2 × RSS_SIZE free bytes; everything mounted there is unmounted on exit.
set -euo pipefail
export LC_ALL=C          # "." as the decimal point in $EPOCHREALTIME and awk
cd "$(dirname "$0")/.."

die() { echo "bench-fuse: $*" >&2; exit 1; }
note() { echo "bench-fuse: $*" >&2; }

# "1G", "256M", "64KiB", "4096" -> bytes (powers of 1024, as the mount's cache_size= reads them).
to_bytes() {
    local v=$1 n unit
    [[ $v =~ ^([0-9]+)([KkMmGgTt]?)(i?[Bb])?$ ]] || die "not a size: '$v' (use e.g. 4096, 64K, 256M, 1G)"
    n=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[2]}
    case $unit in
        K | k) n=$((n << 10)) ;;
        M | m) n=$((n << 20)) ;;
        G | g) n=$((n << 30)) ;;
        T | t) n=$((n << 40)) ;;
    esac
    echo "$n"
}

if [ "${QUICK:-0}" = 1 ]; then
    size=$(to_bytes "${SIZE:-32M}")
    rss_size=$(to_bytes "${RSS_SIZE:-128M}")
    cache_size=${CACHE_SIZE:-32M}
else
    size=$(to_bytes "${SIZE:-1G}")
    rss_size=$(to_bytes "${RSS_SIZE:-4G}")
    cache_size=${CACHE_SIZE:-256M}
fi
cache_bytes=$(to_bytes "$cache_size")
reads=${READS:-1000}
[ "$size" -ge 4096 ] || die "SIZE must be at least 4 KiB (one random read)"

# --- tools ---
missing=()
for tool in mksquashfs squashfuse fusermount3 python3 sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    die "missing: ${missing[*]}; on Debian/Ubuntu: apt-get install squashfs-tools squashfuse fuse3 python3 coreutils"
fi
[ -c /dev/fuse ] || die "/dev/fuse is missing: FUSE is not available here"

if [ -n "${PIXELRTS:-}" ]; then
    bin=$PIXELRTS
    [ -x "$bin" ] || die "PIXELRTS=$bin is not an executable"
else
    bin=${CARGO_TARGET_DIR:-target}/release/pixelrts
    if [ ! -x "$bin" ]; then
        note "building $bin"
        cargo build --release --quiet
    fi
fi
bin=$(realpath "$bin")
version=$("$bin" --version | awk '{print $NF}')

# --- work directory, mounts, and the cleanup that always runs ---
if [ $# -ge 1 ]; then
    mkdir -p "$1"
    work=$(realpath "$1")
    own_work=0
else
    work=$(realpath "$(mktemp -d "${TMPDIR:-/var/tmp}/bench-fuse.XXXXXX")")
    own_work=1
fi
# /proc/self/mounts escapes whitespace, and is_mounted below compares paths as they are.
case $work in
    *[[:space:]]*) die "WORK_DIR must not contain whitespace: '$work'" ;;
esac
src=$work/source            # SOURCE of the pixelrts mount: only .rts.png files
mnt=$work/mnt               # pixelrts mount point
sqmnt=$work/sqmnt           # squashfuse mount point
orig=$work/orig             # the original files, outside any mount
out=$work/out               # copies, deleted after their hash is checked
mkdir -p "$src" "$mnt" "$sqmnt" "$orig" "$out"

need=$((4 * size + 2 * rss_size))
avail=$(df --output=avail -B1 "$work" | tail -n 1 | tr -d ' ')
[ "$avail" -ge "$need" ] || die "$work has $((avail >> 20)) MiB free, needs $((need >> 20)) MiB (pass another WORK_DIR)"

pids=()   # FUSE servers started here (foreground processes in the background)

is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; }

# Unmounts $1 and waits for the server $2 to exit (it must, once its mount is gone).
unmount() {
    local mp=$1 pid=${2:-} i
    if is_mounted "$mp"; then
        fusermount3 -u "$mp" 2>/dev/null || { sleep 1; fusermount3 -u "$mp" 2>/dev/null; } \
            || fusermount3 -u -z "$mp" || true   # lazy as a last resort: never leave it behind
    fi
    [ -n "$pid" ] || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "server $pid still running 10 s after its unmount; sending SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Reaped: forget it, so the cleanup never signals a pid the system has reused.
    local left=() p
    for p in "${pids[@]}"; do
        [ "$p" = "$pid" ] || left+=("$p")
    done
    pids=("${left[@]}")
}

# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for mp in "$mnt" "$sqmnt"; do
        is_mounted "$mp" && unmount "$mp"
    done
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if is_mounted "$mnt" || is_mounted "$sqmnt"; then
        note "still mounted under $work; not deleting it"
    elif [ "$own_work" = 1 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$work"
    else
        note "files kept in $work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a FUSE server in the foreground as a background job ("$@" is its command line) and
# waits until $1's mount point ($mp) shows up in /proc/self/mounts. Sets server_pid ($! is the
# server itself, so /proc/$server_pid/status is its memory).
start_server() {
    local mp=$1 log=$2 i
    shift 2
    "$@" >>"$log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    for ((i = 0; i < 600; i++)); do
        is_mounted "$mp" && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; die "'$*' exited before mounting"; }
        sleep 0.1
    done
    cat "$log" >&2
    die "'$*' did not mount $mp within 60 s"
}

mount_rts() {   # $1: the -o options
    start_server "$mnt" "$work/mount.log" "$bin" mount -f "$src" "$mnt" -o "$1"
    rts_pid=$server_pid
}

caches_dropped=0
if [ "$(id -u)" = 0 ] && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    caches_dropped=1
else
    note "cannot write /proc/sys/vm/drop_caches (not root, or a container): runs start with a warm page cache"
fi
drop_caches() {
    sync
    if [ "$caches_dropped" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }
hash_of() { sha256sum "$1" | awk '{print $1}'; }

results=$work/results.txt
: >"$results"
put() { echo "$1 $2" >>"$results"; }
put size "$size"
put rss_size "$rss_size"
put cache_bytes "$cache_bytes"
put caches_dropped "$caches_dropped"

# --- inputs ---
note "$bin ($version); ${size} B file, ${rss_size} B RSS file, cache_size=$cache_size, in $work"
head -c "$size" /dev/urandom >"$orig/random.bin"
want=$(hash_of "$orig/random.bin")
"$bin" encode "$orig/random.bin" "$src/random.bin.rts.png" --no-sidecar --force >/dev/null
put png_bytes "$(stat -c %s "$src/random.bin.rts.png")"
# -comp gzip: the compressor Debian's squashfuse reads everywhere; default block size (128 KiB).
mksquashfs "$orig/random.bin" "$work/random.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null
put sqfs_bytes "$(stat -c %s "$work/random.sqfs")"
# The RSS file's original is only needed for its hash; drop it to save disk.
head -c "$rss_size" /dev/urandom >"$orig/big.bin"
want_big=$(hash_of "$orig/big.bin")
"$bin" encode "$orig/big.bin" "$src/big.bin.rts.png" --no-sidecar --force >/dev/null
rm -f "$orig/big.bin"

# Times `"$@"` (which writes $out/copy) from a cold page cache, checks the copy's hash, stores
# KEY_s and KEY_ok.
timed_copy() {
    local key=$1 t0 t
    shift
    drop_caches
    t0=$(now)
    "$@"
    t=$(since "$t0")
    put "${key}_s" "$t"
    if [ "$(hash_of "$out/copy")" = "$want" ]; then put "${key}_ok" 1; else put "${key}_ok" 0; fi
    rm -f "$out/copy"
    note "$key: $t s"
}

# (a) Sequential: each reader from a cold page cache and, for the mounts, a fresh process.
# `ro`: the benchmark only reads, and must not create a spool in SOURCE.
mount_rts "ro,cache_size=$cache_size"
timed_copy fuse_cp cp "$mnt/random.bin" "$out/copy"
unmount "$mnt" "$rts_pid"

timed_copy decode "$bin" decode "$src/random.bin.rts.png" "$out/copy" --force

start_server "$sqmnt" "$work/squashfuse.log" squashfuse -f "$work/random.sqfs" "$sqmnt"
sq_pid=$server_pid
timed_copy squashfuse_cp cp "$sqmnt/random.bin" "$out/copy"
unmount "$sqmnt" "$sq_pid"

# (b) Random 4 KiB reads: a fresh mount on a cold page cache, two passes over the same offsets.
drop_caches
mount_rts "ro,cache_size=$cache_size"
ra_flag=()
[ "${READAHEAD:-0}" = 1 ] && ra_flag=(--readahead)
# Exit status 1 means blocks differed: recorded (lat_mismatches) and failed by the report.
lat_rc=0
python3 scripts/bench-fuse-latency.py "$mnt/random.bin" "$orig/random.bin" --reads "$reads" \
    --size 4096 --kv "${ra_flag[@]}" >"$work/latency.txt" || lat_rc=$?
unmount "$mnt" "$rts_pid"
if [ "$lat_rc" -gt 1 ] || ! grep -q '^lat_mismatches ' "$work/latency.txt"; then
    die "the latency helper failed (exit $lat_rc)"
fi
cat "$work/latency.txt" >>"$results"

# (c) Memory: read the big file once through a mount limited to cache_size; the process's
# high-water mark must stay within cache_size + 64 MiB.
drop_caches
mount_rts "ro,cache_size=$cache_size"
put vmrss_start_kb "$(awk '/^VmRSS:/ {print $2}' "/proc/$rts_pid/status")"
t0=$(now)
got_big=$(hash_of "$mnt/big.bin")
put rss_read_s "$(since "$t0")"
if [ "$got_big" = "$want_big" ]; then put rss_read_ok 1; else put rss_read_ok 0; fi
put vmhwm_kb "$(awk '/^VmHWM:/ {print $2}' "/proc/$rts_pid/status")"
put vmrss_kb "$(awk '/^VmRSS:/ {print $2}' "/proc/$rts_pid/status")"
unmount "$mnt" "$rts_pid"

# --- report and history ---
records=$work/records/benchmark_history.jsonl
mkdir -p "$work/records"
status=0
python3 scripts/bench-fuse-report.py "$results" "$records" || status=$?
if [ "${NO_HISTORY:-0}" != 1 ]; then
    # pixelrts completes the records (timestamp, commit, version, machine) and appends them
    # all, or none when a line is not a valid record.
    "$bin" bench-append --history "${HISTORY_DIR:-benchmark_results}" "$records" ||
        die "pixelrts could not append the records; history not changed"
fi
exit "$status"
