#!/usr/bin/env bash
# Codec throughput and memory, measured against same-run baselines.
#
# For 1 GiB random, 1 GiB zeros and ~200 MiB English-like text: `pixelrts encode` and
# `pixelrts decode --verify` with --threads 1 and 2, next to `openssl dgst -sha256` and `cp` of
# the same (cached) file in the same run; output size relative to input; peak RSS of encode and
# decode --verify for 32 MiB, 1 GiB and 4 GiB random inputs. Prints markdown tables and the
# ratios to openssl (targets: encode <= 1.5x, decode --verify <= 1.3x of openssl's time).
#
# Usage: scripts/bench-codec.sh [WORK_DIR]          (default /tmp/pixelrts-bench, removed after)
#   QUICK=1               smoke test: 64 MiB random/zeros, 16 MiB text, RSS at 16 and 64 MiB
#   SIZE_MIB=1024         random/zeros size;   TEXT_MIB=200   text size
#   RSS_SIZES_MIB="32 1024 4096"               inputs for the peak-RSS table
#   REPEAT=3              runs per measurement (the fastest counts); QUICK defaults to 1
#   KEEP=1                keep WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

work=${1:-/tmp/pixelrts-bench}
if [ "${QUICK:-0}" = 1 ]; then
    size_mib=${SIZE_MIB:-64}; text_mib=${TEXT_MIB:-16}; rss_sizes=${RSS_SIZES_MIB:-"16 64"}; repeat=${REPEAT:-1}
else
    size_mib=${SIZE_MIB:-1024}; text_mib=${TEXT_MIB:-200}; rss_sizes=${RSS_SIZES_MIB:-"32 1024 4096"}; repeat=${REPEAT:-3}
fi

for tool in openssl python3; do
    command -v "$tool" >/dev/null || { echo "bench-codec: $tool is required" >&2; exit 2; }
done
if [ ! -x /usr/bin/time ]; then
    echo ">>> installing GNU time (peak RSS)" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends time >&2
fi

echo ">>> cargo build --release" >&2
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/release/pixelrts"
[ -x "$bin" ] || { echo "bench-codec: no binary at $bin" >&2; exit 2; }

mkdir -p "$work"
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi

# ----------------------------------------------------------------------------------------------
# Inputs (deterministic)

gen_random() { # SIZE_BYTES OUT — AES-CTR keystream of a fixed key
    head -c "$1" /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:pixelrts-bench -pbkdf2 2>/dev/null >"$2"
}
gen_zeros() { head -c "$1" /dev/zero >"$2"; }
gen_text() { # a 16 MiB deterministic block, repeated (period far beyond deflate's 32 KiB window)
    local base="$work/.text-base" n=$((16 << 20))
    [ "$1" -lt "$n" ] && n=$1
    python3 "$repo/scripts/gen-text.py" "$n" >"$base"
    : >"$2"
    while [ "$(stat -c %s "$2")" -lt "$1" ]; do cat "$base" >>"$2"; done
    truncate -s "$1" "$2"
    rm -f "$base"
}

# ----------------------------------------------------------------------------------------------
# Measurement helpers: wall time in ns via date, peak RSS via GNU time, fastest of $repeat.

LAST_NS=0
LAST_RSS=0
measure() { # CMD...
    local best=0 rss=0 i t0 t1 ns r
    for ((i = 0; i < repeat; i++)); do
        t0=$(date +%s%N)
        /usr/bin/time -f %M -o "$work/.rss" "$@" >/dev/null 2>"$work/.log" || { cat "$work/.log" >&2; exit 1; }
        t1=$(date +%s%N)
        ns=$((t1 - t0))
        r=$(tail -n 1 "$work/.rss")
        if [ "$best" -eq 0 ] || [ "$ns" -lt "$best" ]; then best=$ns; fi
        if [ "$r" -gt "$rss" ]; then rss=$r; fi
    done
    LAST_NS=$best
    LAST_RSS=$rss
}

mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.0f", b / 1e6 / (ns / 1e9) }'; }
secs() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r <= t ? "ok" : "OVER") }'; }

throughput_rows=()
ratio_rows=()

bench_throughput() { # NAME GENERATOR SIZE_BYTES
    local name=$1 gen=$2 size=$3
    local f="$work/$name.bin" png="$work/$name.bin.rts.png" out="$work/$name.out"
    echo ">>> $name: generating $((size >> 20)) MiB" >&2
    "$gen" "$size" "$f"
    cat "$f" >/dev/null # warm the page cache once

    measure openssl dgst -sha256 "$f"
    local ssl=$LAST_NS
    measure cp "$f" "$work/$name.copy"
    local cpns=$LAST_NS
    rm -f "$work/$name.copy"

    local t enc dec pngsize
    for t in 1 2; do
        echo ">>> $name: encode/decode --threads $t" >&2
        measure "$bin" encode "$f" "$png" --threads "$t" --force --no-sidecar
        enc=$LAST_NS
        pngsize=$(stat -c %s "$png")
        measure "$bin" decode "$png" "$out" --verify --threads "$t" --force
        dec=$LAST_NS
        cmp -s "$f" "$out" || { echo "bench-codec: $name: decoded output differs!" >&2; exit 1; }
        rm -f "$out"
        throughput_rows+=("| $name | $((size >> 20)) MiB | $t | $(mbps "$size" "$enc") | $(mbps "$size" "$dec") | $(mbps "$size" "$ssl") | $(mbps "$size" "$cpns") | $(ratio "$pngsize" "$size") |")
        local re rd
        re=$(ratio "$enc" "$ssl")
        rd=$(ratio "$dec" "$ssl")
        ratio_rows+=("| $name | $t | $(secs "$enc") | $(secs "$dec") | $(secs "$ssl") | ${re}x ($(verdict "$re" 1.5)) | ${rd}x ($(verdict "$rd" 1.3)) |")
    done
    rm -f "$f" "$png"
}

rss_rows=()
bench_rss() { # SIZE_MIB
    local mib=$1 f="$work/rss.bin" png="$work/rss.bin.rts.png" out="$work/rss.out"
    echo ">>> peak RSS: $mib MiB random" >&2
    gen_random $((mib << 20)) "$f"
    local saved=$repeat
    repeat=1
    measure "$bin" encode "$f" "$png" --force --no-sidecar
    local enc_rss=$LAST_RSS enc_ns=$LAST_NS
    rm -f "$f" # decode must not depend on the input being cached
    measure "$bin" decode "$png" "$out" --verify --force
    local dec_rss=$LAST_RSS dec_ns=$LAST_NS
    repeat=$saved
    rss_rows+=("| $mib MiB | $((enc_rss / 1024)) MiB | $((dec_rss / 1024)) MiB | $(secs "$enc_ns") | $(secs "$dec_ns") |")
    rm -f "$png" "$out"
}

bench_throughput random gen_random $((size_mib << 20))
bench_throughput zeros gen_zeros $((size_mib << 20))
bench_throughput text gen_text $((text_mib << 20))
for s in $rss_sizes; do bench_rss "$s"; done

# ----------------------------------------------------------------------------------------------
# Report

echo
echo "## pixelrts codec benchmark"
echo
echo "$(uname -srm), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(date -u +%Y-%m-%dT%H:%MZ), fastest of $repeat"
echo "binary: $bin ($("$bin" --version 2>/dev/null || echo '?'))"
echo
echo "### Throughput (MB/s, 10^6 bytes per second of input; cached input)"
echo
echo "| data | size | threads | encode | decode --verify | openssl sha256 | cp | output / input |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${throughput_rows[@]}"
echo
echo "### Time relative to \`openssl dgst -sha256\` of the same file (targets: encode <= 1.5x, decode --verify <= 1.3x)"
echo
echo "| data | threads | encode s | decode --verify s | openssl s | encode / openssl | decode / openssl |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ratio_rows[@]}"
echo
echo "### Peak RSS (random input, default threads)"
echo
echo "| input | encode | decode --verify | encode s | decode s |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rss_rows[@]}"
