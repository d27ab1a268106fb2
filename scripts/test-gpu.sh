#!/usr/bin/env bash
# GPU identity tests: the GPU's scatter, gather and code colouring must equal the CPU's byte for
# byte (random sizes, both directions). PIXELRTS_REQUIRE_GPU=1 turns "skipped: no usable NVIDIA
# GPU" into a failure, so this script FAILS on a machine without a usable GPU.
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

export PIXELRTS_REQUIRE_GPU=1
export RUST_LOG="${RUST_LOG:-pixelrts=debug}"
echo "== GPU identity tests (tests/gpu.rs)"
"$GPU_TEST" --nocapture --test-threads=1
echo "== GPU, mapper and doctor unit tests"
"$LIB_TEST" --nocapture --test-threads=1 gpu:: doctor::
echo "== all GPU tests passed"
