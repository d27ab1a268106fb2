#!/usr/bin/env bash
# CPU against GPU at 64 MiB, 1 GiB and 4 GiB, stage by stage:
#  - the mapper operations alone (Hilbert scatter, gather, code colouring): host staging,
#    upload, kernel, download;
#  - whole `encode` and `decode --verify` jobs through files, for the CPU fast path, the mapper
#    path on the CPU and the GPU: transfer, kernel, deflate/inflate, write, hash, wall.
# Every GPU result is checked against the CPU's (the PNGs byte for byte). Use the figures to set
# gpu::AUTO_GPU_MIN_BYTES (src/gpu/mod.rs).
#
#   scripts/bench-gpu.sh                 default sizes
#   scripts/bench-gpu.sh --cpu-only      the CPU rows alone, on a machine without a GPU
#   PIXELRTS_BENCH_SIZES_MIB=64,256 scripts/bench-gpu.sh
#   PIXELRTS_BENCH_JSON=bench.json scripts/bench-gpu.sh   also write the figures as JSON
#   PIXELRTS_BENCH_DIR=/scratch scripts/bench-gpu.sh      scratch files (default: /dev/shm when
#                                        it has room for 3x the largest size, else $TMPDIR or /tmp)
#
# Needs about 4x the largest size in host memory. Exits 0 with a message when there is no GPU
# (and no --cpu-only).
set -euo pipefail
source "$(dirname "$0")/gpu-common.sh"

cpu_only=()
if [ "${1:-}" = "--cpu-only" ]; then
    cpu_only=(--cpu-only)
elif ! gpu_present; then
    echo "bench-gpu: no NVIDIA GPU on this machine (no /dev/nvidia*, no nvidia-smi, no libcuda.so):"
    echo "bench-gpu: nothing to compare; skipped (--cpu-only measures the CPU rows alone)."
    exit 0
fi

show_machine
find_cli
sizes="${PIXELRTS_BENCH_SIZES_MIB:-64,1024,4096}"
echo "== benchmark, sizes (MiB): $sizes"
json_args=()
[ -n "${PIXELRTS_BENCH_JSON:-}" ] && json_args=(--json "$PIXELRTS_BENCH_JSON")
largest_mib=$(tr ',' '\n' <<<"$sizes" | sort -n | tail -n 1)
dir="${PIXELRTS_BENCH_DIR:-}"
if [ -z "$dir" ]; then
    shm_free_mib=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ -n "$shm_free_mib" ] && [ "$shm_free_mib" -gt $((3 * largest_mib + 1024)) ]; then
        dir=/dev/shm
    else
        dir="${TMPDIR:-/tmp}"
    fi
fi
echo "== scratch files in $dir"
# shellcheck disable=SC2086 # the sizes are split on purpose
out="$("$PIXELRTS_BIN" bench-gpu --sizes-mib ${sizes//,/ } --dir "$dir" "${cpu_only[@]}" "${json_args[@]}" 2>&1)" || {
    echo "$out"
    echo "bench-gpu: the benchmark failed" >&2
    exit 1
}
echo "$out"
if grep -q "NO GPU:" <<<"$out"; then
    echo "bench-gpu: the driver is there but no GPU is usable (reason above); skipped."
fi
exit 0
