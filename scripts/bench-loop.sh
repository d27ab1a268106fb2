#!/usr/bin/env bash
# Alternated A/B of the loop-mounted case alone (issue 12): an ext4 image served by one or more
# pixelrts binaries (or mount options) and by squashfuse_ll over its zstd squashfs, loop-mounted
# read-only from the mount, `tar cf /dev/null` of its tree from a dropped page cache; REPS rounds,
# the ways alternated inside each round, then the median of each. For deciding a change on a
# noisy machine, where one run of scripts/bench-read.sh is not enough.
#
#   scripts/bench-loop.sh IMAGE.ext4 [WAY...]     (as root)
#
# A WAY is `BINARY` or `BINARY:MOUNT_OPTIONS` (default: target/release/pixelrts); `sqfs` adds
# squashfuse_ll over `mksquashfs -comp zstd` of the image (made once, kept beside it as
# IMAGE.zstd.sqfs). The image is encoded once per binary into IMAGE.<binary name>.rts.png
# (kept). Env: REPS (default 5), MODE=meta|data|cp (default meta: `tar cf /dev/null`; data:
# `tar cf - | cat`; cp: the image itself to /dev/null), ENCODE_ARGS (e.g. "--segment-size 64K").
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-loop.sh needs root (drop_caches, losetup, mount)" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: scripts/bench-loop.sh IMAGE.ext4 [WAY...]" >&2; exit 2; }
IMAGE=$(realpath "$1"); shift
WAYS=("$@")
[ ${#WAYS[@]} -gt 0 ] || WAYS=("$PWD/target/release/pixelrts" sqfs)
REPS=${REPS:-5}
MODE=${MODE:-meta}
# shellcheck source=scripts/mount-bench-common.sh
source "scripts/mount-bench-common.sh"
bench_workdir pixelrts-loop
NAME=$(basename "$IMAGE")

run_way() {
    local way=$1 bin=${1%%:*} opts=
    [[ $way == *:* ]] && opts=${way#*:}
    drop
    if [ "$way" = sqfs ]; then
        squashfuse_ll "$IMAGE.zstd.sqfs" "$MNT"
    else
        rm -rf "$WORK/src"; mkdir "$WORK/src"
        ln "$IMAGE.$(basename "$bin").rts.png" "$WORK/src/$NAME.rts.png"
        "$bin" mount "$WORK/src" "$MNT" -o "ro${opts:+,$opts}"
    fi
    for _ in $(seq 100); do [ -e "$MNT/$NAME" ] && break; sleep 0.05; done
    local t0 t1 took
    if [ "$MODE" = cp ]; then
        t0=$(now); cat "$MNT/$NAME" >/dev/null; t1=$(now)
        took=$(secs "$t0" "$t1")
    else
        took=$(loop_tar "$MNT/$NAME" "$MODE")
    fi
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT"
    echo "$took"
}

for way in "${WAYS[@]}"; do
    if [ "$way" = sqfs ]; then
        zstd_sqfs_of "$IMAGE"
    else
        bin=${way%%:*}
        out="$IMAGE.$(basename "$bin").rts.png"
        # shellcheck disable=SC2086
        [ -f "$out" ] || "$bin" encode "$IMAGE" "$out" --no-sidecar ${ENCODE_ARGS:-} >/dev/null
    fi
done
declare -A times
for r in $(seq "$REPS"); do
    for way in "${WAYS[@]}"; do
        t=$(run_way "$way")
        times[$way]+="$t "
        echo "round $r: $way $t" >&2
    done
done
printf '| way | median s (%s, %s rounds) | all |\n|---|---|---|\n' "$MODE" "$REPS"
for way in "${WAYS[@]}"; do
    python3 - "$way" ${times[$way]} <<'PY'
import statistics, sys
way, xs = sys.argv[1], sorted(float(x) for x in sys.argv[2:])
print(f"| {way} | {statistics.median(xs):.2f} | {' '.join(f'{x:.2f}' for x in xs)} |")
PY
done
