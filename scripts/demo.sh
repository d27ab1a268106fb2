#!/usr/bin/env bash
# Demo on a fresh machine: build, make a demo input, encode it into a PNG, show its info,
# decode it back with --verify and compare byte for byte.
#
# Usage: scripts/demo.sh [WORK_DIR]     (default: a temporary directory, removed at the end)
#   DEMO_SIZE_MIB=16   size of the demo input
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/pixelrts"

if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/pixelrts-demo.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
size_mib=${DEMO_SIZE_MIB:-16}

# A demo input: some text, some zeros, some pseudo-random bytes (deterministic).
input="$work/demo.bin"
{
    for i in $(seq 1 2000); do echo "line $i: PixelRTS packs any file into a PNG along a Hilbert curve."; done
    head -c $((size_mib * 1024 * 1024 / 4)) /dev/zero
    head -c $((size_mib * 1024 * 1024 / 2)) /dev/zero \
        | openssl enc -aes-128-ctr -nosalt -pass pass:pixelrts-demo -pbkdf2 2>/dev/null
} >"$input"

echo "== encode"
"$bin" encode "$input" "$work/demo.bin.rts.png" --force
echo "== info"
"$bin" info "$work/demo.bin.rts.png"
echo "== decode --verify"
"$bin" decode "$work/demo.bin.rts.png" "$work/demo.out" --verify --force
echo "== verify"
"$bin" verify "$work/demo.bin.rts.png"
cmp "$input" "$work/demo.out"
ls -l "$input" "$work/demo.bin.rts.png"
echo "demo OK: $(wc -c <"$input") bytes round-tripped through $(wc -c <"$work/demo.bin.rts.png") bytes of PNG"
