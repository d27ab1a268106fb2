#!/usr/bin/env bash
# Batch encode against what users would do instead, in one run (issue 16): many small files
# and a hundred big ones, each encoded by
#   - one `pixelrts encode -r DIR --output-dir OUT` (the batch),
#   - a shell loop of single `pixelrts encode FILE OUT/FILE.rts.png` calls,
#   - `mksquashfs DIR` (-comp zstd, and gzip, its default),
# and decoded back by one `pixelrts decode -r OUT --output-dir BACK --verify` against the
# shell loop of single decodes; prints seconds and the ratios (loop / batch: > 1 is faster).
#
#   scripts/bench-batch.sh [SMALL_COUNT] [BIG_COUNT] [BIG_MIB]     (defaults: 10000 100 10)
#
# Real content: the small files are the first 4 KiB of SMALL_COUNT distinct files under /usr
# (ELF headers, text, compressed data, images); the big ones are BIG_MIB-sized pieces of a tar
# of /usr/lib and /usr/share. Files are in the page cache (just written), as in a build tree.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-10000}
big=${2:-100}
big_mib=${3:-10}
BIN=$(realpath "${BIN:-target/release/pixelrts}")
[ -x "$BIN" ] || { cargo build --release --quiet && BIN=$(realpath target/release/pixelrts); }
command -v mksquashfs >/dev/null || { echo "bench-batch.sh: mksquashfs missing (apt install squashfs-tools)" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/var/tmp}/pixelrts-batch.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/small" "$work/big"
i=0
while IFS= read -r -d '' f; do
    head -c 4096 "$f" >"$work/small/$(printf %05d "$i").bin" 2>/dev/null || continue
    i=$((i + 1))
    [ "$i" -ge "$small" ] && break
done < <(find /usr -xdev -type f -size +4k -print0 2>/dev/null)
[ "$i" -ge "$small" ] || { echo "bench-batch.sh: only $i files of 4 KiB found under /usr" >&2; exit 2; }
tar cf - /usr/lib /usr/share 2>/dev/null | head -c "$((big * big_mib << 20))" \
    | split -b "$((big_mib << 20))" -d -a 3 --additional-suffix=.bin - "$work/big/" || true
echo "corpus: $small files of 4 KiB, $(ls "$work/big" | wc -l) files of $big_mib MiB; $(nproc) cores"

secs() { # seconds taken by "$@"
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l | xargs printf '%.2f'
}
loop_encode() { # DIR OUT
    mkdir -p "$2"
    for f in "$1"/*; do "$BIN" encode "$f" "$2/${f##*/}.rts.png"; done
}
loop_decode() { # DIR OUT
    mkdir -p "$2"
    for f in "$1"/*.rts.png; do g=${f##*/}; "$BIN" decode "$f" "$2/${g%.rts.png}" --verify; done
}

echo
echo "| files | batch encode s | shell loop s | loop / batch | mksquashfs zstd s | mksquashfs gzip s | batch decode --verify s | decode loop s | loop / batch |"
echo "|---|---|---|---|---|---|---|---|---|"
for set in small big; do
    rm -rf "$work/out" "$work/loop" "$work/back" "$work/loopback" "$work"/*.sqfs
    be=$(secs "$BIN" encode -r "$work/$set" --output-dir "$work/out")
    le=$(secs loop_encode "$work/$set" "$work/loop")
    sz=$(secs mksquashfs "$work/$set" "$work/z.sqfs" -comp zstd -noappend -quiet -no-progress)
    sg=$(secs mksquashfs "$work/$set" "$work/g.sqfs" -noappend -quiet -no-progress)
    bd=$(secs "$BIN" decode -r "$work/out" --output-dir "$work/back" --verify)
    ld=$(secs loop_decode "$work/loop" "$work/loopback")
    # Both ways must give the same files back.
    diff -rq -x batch_summary.json "$work/$set" "$work/back" >/dev/null || { echo "bench-batch.sh: batch round trip differs" >&2; exit 1; }
    n=$(ls "$work/$set" | wc -l)
    label=$([ "$set" = small ] && echo "$n x 4 KiB" || echo "$n x $big_mib MiB")
    printf '| %s | %s | %s | %.1f | %s | %s | %s | %s | %.1f |\n' "$label" "$be" "$le" \
        "$(echo "$le / $be" | bc -l)" "$sz" "$sg" "$bd" "$ld" "$(echo "$ld / $bd" | bc -l)"
done
