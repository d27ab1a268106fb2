#!/usr/bin/env bash
# The Python package against the CLI, side by side in one run (issue 15: within 5%): encode and
# decode (verified) of the same input through `pixelrts.encode`/`pixelrts.decode` and through
# `pixelrts encode`/`pixelrts decode --verify`, alternated, ROUNDS times; prints the median
# seconds of each and the ratio Python / CLI.
#
#   scripts/bench-python.sh [SIZE_MIB] [ROUNDS]      (defaults: 100, 5)
#
# Inputs: SIZE_MIB of real content (a tar of /usr/lib and /usr/share, cut to size) and of
# random bytes. Needs the CLI (cargo build --release) and the package importable by $PYTHON
# (default python3; e.g. PYTHON=~/.cache/pixelrts-ci/venv/bin/python after .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-100}
rounds=${2:-5}
PYTHON=${PYTHON:-python3}
BIN=${BIN:-target/release/pixelrts}
[ -x "$BIN" ] || cargo build --release --quiet
"$PYTHON" -c 'import pixelrts' 2>/dev/null || {
    echo "bench-python.sh: $PYTHON cannot import pixelrts (build the wheel: see README, Python)" >&2
    exit 2
}
work=$(mktemp -d "${TMPDIR:-/tmp}/pixelrts-py.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar cf - /usr/lib /usr/share 2>/dev/null | head -c "$((size << 20))" >"$work/content.bin" || true
head -c "$((size << 20))" /dev/urandom >"$work/random.bin"

"$PYTHON" - "$BIN" "$work" "$rounds" <<'PY'
import statistics, subprocess, sys, time
import pixelrts

bin_, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t

print("| input | step | CLI s | Python s | Python / CLI |")
print("|---|---|---|---|---|")
for name in ("content", "random"):
    src, png, out = f"{work}/{name}.bin", f"{work}/{name}.rts.png", f"{work}/{name}.out"
    runs = {k: [] for k in ("cli-enc", "py-enc", "cli-dec", "py-dec")}
    for _ in range(rounds):
        runs["cli-enc"].append(timed(lambda: subprocess.run(
            [bin_, "encode", src, png, "--force", "--no-sidecar"], check=True, capture_output=True)))
        runs["py-enc"].append(timed(lambda: pixelrts.encode(src, png)))
        runs["cli-dec"].append(timed(lambda: subprocess.run(
            [bin_, "decode", png, out, "--force", "--verify"], check=True, capture_output=True)))
        runs["py-dec"].append(timed(lambda: pixelrts.decode(png, out, verify=True)))
    for step in ("enc", "dec"):
        c, p = statistics.median(runs[f"cli-{step}"]), statistics.median(runs[f"py-{step}"])
        label = "encode" if step == "enc" else "decode --verify"
        print(f"| {name} | {label} | {c:.3f} | {p:.3f} | {p / c:.3f} |")
PY
