#!/usr/bin/env bash
# Random-access benchmark of the Reader (`pixelrts bench-random`, a hidden subcommand backed by
# `pixelrts::reader::bench::run`), on three files:
#   random.rts.png  1 GiB of random bytes, encoded by us (seekable; stored pieces)
#   zeros.rts.png   1 GiB of zeros, encoded by us (seekable; deflated pieces)
#   text.rts.png    256 MiB of English-like text (scripts/gen-text.py), encoded by us
#   pillow.png      a reference-style plain PNG written by Python Pillow: a 4096x4096 random
#                   RGBA image with PixelRTS metadata (read through a checkpoint index)
# For each: cold and warm latency (p50/p99) of 1000 random 4 KiB and 128 KiB reads, bytes
# inflated per byte served, sequential throughput through the reader (rayon pool of 1 and 2
# threads) vs `decode` of the whole file, and the file's size vs a plain PNG of the same
# pixels (png crate, default compression).
#
# "Cold" means: before each timed read the tile cache is emptied and the file's pages are
# dropped (posix_fadvise DONTNEED); as root the script also drops the page cache once per
# file (echo 1 > /proc/sys/vm/drop_caches). "Warm": the same read repeated (a cache hit).
# The first read of the Pillow file builds its checkpoint index (reported as first_read_ms).
#
# Usage:  scripts/bench-random.sh [WORK_DIR]
#   HISTORY_DIR=benchmark_results   where the results are appended (benchmark_history.jsonl)
#   QUICK=1      16 MiB inputs and a 1024x1024 Pillow image (a smoke run, about a minute)
#   READS=1000   random reads per size
#   JSON=1       print JSON reports instead of text
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bin=$target/release/pixelrts
reads=${READS:-1000}
if [ "${QUICK:-0}" = 1 ]; then
    size=$((16 << 20))
    side=1024
else
    size=$((1 << 30))
    side=4096
fi
text_size=$((size / 4))
if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

echo "bench-random: inputs of $size bytes, Pillow image ${side}x${side}, in $work" >&2
head -c "$size" /dev/urandom >"$work/random.bin"
truncate -s 0 "$work/zeros.bin"
truncate -s "$size" "$work/zeros.bin"
python3 scripts/gen-text.py "$text_size" >"$work/text.bin"
for name in random zeros text; do
    "$bin" encode "$work/$name.bin" "$work/$name.rts.png" --no-sidecar --force 2>/dev/null
    rm -f "$work/$name.bin"
done
python3 - "$work/pillow.png" "$side" <<'PY'
import json, os, sys
from PIL import Image, PngImagePlugin
path, side = sys.argv[1], int(sys.argv[2])
img = Image.frombytes("RGBA", (side, side), os.urandom(4 * side * side))
meta = {
    "format": "PixelRTS-2.0", "format_version": 2, "grid_size": side,
    "encoding": {"type": "RGBA-dense", "bytes_per_pixel": 4,
                 "mapping": "Hilbert space-filling curve"},
    "offsets": {}, "hashes": {}, "encoding_mode": "RGBA-dense",
    "data_size": 4 * side * side,
}
info = PngImagePlugin.PngInfo()
info.add_text("PixelRTS", "PixelRTS" + json.dumps(meta, separators=(",", ":")))
img.save(path, pnginfo=info)
PY

json_flag=()
[ "${JSON:-0}" = 1 ] && json_flag=(--json)
for f in random.rts.png zeros.rts.png text.rts.png pillow.png; do
    sync
    if [ "$(id -u)" = 0 ]; then
        echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
    "$bin" bench-random "$work/$f" --reads "$reads" --checkpoint-dir "$work/ckpt" --history "${HISTORY_DIR:-benchmark_results}" "${json_flag[@]}"
done
