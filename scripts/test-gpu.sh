#!/usr/bin/env bash
# First the kernels' compile test: NVRTC builds them for every listed architecture and as PTX
# (PIXELRTS_REQUIRE_NVRTC, default PIXELRTS_REQUIRE_GPU, makes a missing NVRTC a failure).
# Then the GPU identity tests: the GPU's scatter, gather and code colouring must equal the CPU's byte for
# byte (random sizes, both directions), then the whole pipeline: `pixelrts encode/decode --gpu on`
# must write exactly the files `--gpu off` writes (random sizes, standard and code mode).
# PIXELRTS_REQUIRE_GPU=1 (the default here) turns "skipped: no usable NVIDIA GPU" into a failure,
# so this script FAILS on a machine without a usable GPU; PIXELRTS_REQUIRE_GPU=0 runs it there
# anyway, and every GPU part then says it is skipped and why.
#
#   scripts/test-gpu.sh                  build with cargo (if present) and run
#   scripts/test-gpu.sh --build-only D   build here and copy the test executables into D
#                                        (carry D to a GPU machine without Rust; then run
#                                        PIXELRTS_GPU_BIN_DIR=D scripts/test-gpu.sh there)
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"

if [ "${1:-}" = "--build-only" ]; then
    build_only "${2:?usage: $0 --build-only DIR}"
    exit 0
fi

show_machine
find_test_executables

export PIXELRTS_REQUIRE_GPU="${PIXELRTS_REQUIRE_GPU:-1}"
# A usable GPU implies NVRTC; without one, NVRTC alone still compiles the kernels.
export PIXELRTS_REQUIRE_NVRTC="${PIXELRTS_REQUIRE_NVRTC:-$PIXELRTS_REQUIRE_GPU}"
export RUST_LOG="${RUST_LOG:-pixelrts=debug}"
echo "== the kernels compile with NVRTC for every listed architecture and PTX (tests/gpu.rs)"
"$GPU_TEST" --nocapture --test-threads=1 kernels_compile
echo "== GPU identity tests (tests/gpu.rs)"
"$GPU_TEST" --nocapture --test-threads=1 --skip kernels_compile
echo "== GPU, mapper and doctor unit tests"
"$LIB_TEST" --nocapture --test-threads=1 gpu:: doctor::

echo "== pipeline identity: pixelrts encode/decode --gpu on vs --gpu off"
find_cli
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'x' >"$work/probe.bin"
if ! reason="$("$PIXELRTS_BIN" encode "$work/probe.bin" "$work/probe.png" --gpu on --no-sidecar 2>&1)"; then
    if [ "$PIXELRTS_REQUIRE_GPU" = 1 ]; then
        echo "FAIL: PIXELRTS_REQUIRE_GPU=1 but --gpu on fails: $reason" >&2
        exit 1
    fi
    echo "skipped: --gpu on cannot run here: $reason"
    echo "== GPU tests done (GPU parts skipped)"
    exit 0
fi
# Sizes: empty, one byte, a partial pixel and tile, several stripes, several row groups per
# stripe (300 MiB needs a 16384 grid: 64-row groups in 256-row tiles).
sizes=(0 1 7 65537 3000001 $((64 << 20)) $((300 << 20)))
for size in "${sizes[@]}"; do
    head -c "$size" /dev/urandom >"$work/in.bin"
    # Half zeros and text, so that empty, deflated and stored tiles all occur.
    if [ "$size" -gt 4096 ]; then
        head -c $((size / 4)) /dev/zero | dd of="$work/in.bin" bs=1M conv=notrunc status=none
        # `yes` dies of SIGPIPE when head has enough, which pipefail would count as a failure.
        { yes 'some text' || true; } | head -c $((size / 4)) |
            dd of="$work/in.bin" bs=1M seek=$((size / 2)) oflag=seek_bytes conv=notrunc status=none
    fi
    for mode in standard code; do
        if [ "$mode" = code ]; then
            # Code mode draws only WebAssembly: give the input its magic number.
            [ "$size" -ge 8 ] || continue
            printf '\0asm\1\0\0\0' | dd of="$work/in.bin" conv=notrunc status=none
            [ "$size" -le $((64 << 20)) ] || continue # base64 in one text chunk: keep it small
        fi
        for gpu in off on; do
            "$PIXELRTS_BIN" encode "$work/in.bin" "$work/$gpu.png" --mode "$mode" --gpu "$gpu" \
                --no-sidecar --force 2>/dev/null
            "$PIXELRTS_BIN" decode "$work/off.png" "$work/$gpu.out" --gpu "$gpu" --verify --force 2>/dev/null
        done
        cmp "$work/off.png" "$work/on.png"
        cmp "$work/off.out" "$work/on.out"
        cmp "$work/in.bin" "$work/on.out"
        echo "  $size bytes, $mode mode: PNG and decoded bytes identical"
    done
done
echo "== all GPU tests passed"
