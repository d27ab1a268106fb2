# shellcheck shell=bash
# Shared by test-gpu.sh and bench-gpu.sh (sourced, not run).
#
# Test executables come from cargo when it is available, or from a directory of prebuilt ones
# ($PIXELRTS_GPU_BIN_DIR, default ./gpu-bin) made on another machine with
#   scripts/test-gpu.sh --build-only gpu-bin
# (useful when the GPU machine has no Rust toolchain or no network for crates.io).

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
BIN_DIR="${PIXELRTS_GPU_BIN_DIR:-gpu-bin}"

# Prints "<kind> <path>" for the lib test executable ("lib") and tests/gpu.rs ("gpu").
cargo_test_executables() {
    cargo test --release --lib --test gpu --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kinds = m["target"]["kind"]
        print(("lib" if "lib" in kinds else m["target"]["name"]), m["executable"])
'
}

# Sets LIB_TEST and GPU_TEST to runnable test executables, building them when cargo exists.
find_test_executables() {
    if command -v cargo >/dev/null 2>&1 && [ "${PIXELRTS_USE_BIN_DIR:-0}" != 1 ]; then
        echo "== building the tests (cargo test --release --no-run)"
        cargo test --release --lib --test gpu --no-run
        while read -r kind path; do
            case "$kind" in
                lib) LIB_TEST="$path" ;;
                gpu) GPU_TEST="$path" ;;
            esac
        done < <(cargo_test_executables)
    elif [ -x "$BIN_DIR/pixelrts-lib-tests" ] && [ -x "$BIN_DIR/pixelrts-gpu-tests" ]; then
        echo "== using the prebuilt test executables in $BIN_DIR"
        LIB_TEST="$BIN_DIR/pixelrts-lib-tests"
        GPU_TEST="$BIN_DIR/pixelrts-gpu-tests"
    else
        echo "error: neither cargo nor prebuilt test executables in $BIN_DIR" >&2
        echo "       (make them elsewhere with: scripts/test-gpu.sh --build-only $BIN_DIR)" >&2
        exit 2
    fi
    if [ -z "${LIB_TEST:-}" ] || [ -z "${GPU_TEST:-}" ]; then
        echo "error: could not find the test executables" >&2
        exit 2
    fi
}

build_only() {
    local dir="$1"
    mkdir -p "$dir"
    cargo test --release --lib --test gpu --no-run
    while read -r kind path; do
        case "$kind" in
            lib) cp "$path" "$dir/pixelrts-lib-tests" ;;
            gpu) cp "$path" "$dir/pixelrts-gpu-tests" ;;
        esac
    done < <(cargo_test_executables)
    # The CLI too, for the pipeline identity (encode/decode --gpu on vs --gpu off).
    cargo build --release --bin pixelrts
    cp "$(cargo_target_dir)/release/pixelrts" "$dir/pixelrts"
    ls -l "$dir"
}

cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# Sets PIXELRTS_BIN to a runnable release `pixelrts`, built with cargo when it exists.
find_cli() {
    if command -v cargo >/dev/null 2>&1 && [ "${PIXELRTS_USE_BIN_DIR:-0}" != 1 ]; then
        cargo build --release --bin pixelrts
        PIXELRTS_BIN="$(cargo_target_dir)/release/pixelrts"
    elif [ -x "$BIN_DIR/pixelrts" ]; then
        PIXELRTS_BIN="$BIN_DIR/pixelrts"
    else
        echo "error: neither cargo nor a prebuilt pixelrts in $BIN_DIR" >&2
        exit 2
    fi
}

# True when this machine looks like it has an NVIDIA GPU and driver at all.
gpu_present() {
    [ -e /dev/nvidia0 ] || [ -e /dev/nvidiactl ] || command -v nvidia-smi >/dev/null 2>&1 ||
        ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'
}

show_machine() {
    echo "== machine"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
            --format=csv 2>&1 || nvidia-smi 2>&1 | head -15
    else
        echo "nvidia-smi: not found"
    fi
    echo "CUDA libraries known to ldconfig:"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc' | sed 's/^/  /' || echo "  (none)"
    nproc | sed 's/^/CPU threads: /'
}
