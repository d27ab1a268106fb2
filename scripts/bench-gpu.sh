#!/usr/bin/env bash
# CPU against GPU for Hilbert scatter, gather and code colouring at 64 MiB, 1 GiB and 4 GiB,
# stage by stage (host staging, upload, kernel, download), every GPU result checked against the
# CPU's. Use its figures to set gpu::AUTO_GPU_MIN_BYTES (src/gpu/mod.rs).
#
#   scripts/bench-gpu.sh                 default sizes
#   PIXELRTS_BENCH_SIZES_MIB=64,256 scripts/bench-gpu.sh
#   PIXELRTS_BENCH_JSON=bench.json scripts/bench-gpu.sh   also write the figures as JSON
#
# Needs about 4x the largest size in host memory. Exits 0 with a message when there is no GPU.
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"

if ! gpu_present; then
    echo "bench-gpu: no NVIDIA GPU on this machine (no /dev/nvidia*, no nvidia-smi, no libcuda.so):"
    echo "bench-gpu: nothing to compare; skipped."
    exit 0
fi

show_machine
find_cli
sizes="${PIXELRTS_BENCH_SIZES_MIB:-64,1024,4096}"
echo "== benchmark, sizes (MiB): $sizes"
json_args=()
[ -n "${PIXELRTS_BENCH_JSON:-}" ] && json_args=(--json "$PIXELRTS_BENCH_JSON")
# shellcheck disable=SC2086 # the sizes are split on purpose
out="$("$PIXELRTS_BIN" bench-gpu --sizes-mib ${sizes//,/ } "${json_args[@]}" 2>&1)" || {
    echo "$out"
    echo "bench-gpu: the benchmark failed" >&2
    exit 1
}
echo "$out"
if grep -q "NO GPU:" <<<"$out"; then
    echo "bench-gpu: the driver is there but no GPU is usable (reason above); skipped."
fi
exit 0
