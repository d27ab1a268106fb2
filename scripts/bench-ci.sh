#!/usr/bin/env bash
# A short benchmark suite (under two minutes on 2 cores) and a regression check against the
# baseline committed in benches/baseline.jsonl.
#
# Runs are compared as ratios to a same-run reference (SHA-256 of the same input, measured by
# the bench command itself), not as absolute times, so a busier or faster machine does not
# read as a regression. The threshold (default 0.30) tolerates the noise of shared 2-core
# machines; tighten it on quiet hardware.
#
# Usage:  scripts/bench-ci.sh [RESULTS_DIR]
#   THRESHOLD=0.30            allowed slowdown of the normalised throughput
#   BASELINE=benches/baseline.jsonl
#   UPDATE_BASELINE=1         write this run's records as the new baseline instead of checking
#
# A CI job runs it as a separate, non-blocking step (performance noise must not fail the test
# job): `scripts/bench-ci.sh bench-results || echo "performance regression"`, then publishes
# bench-results/dashboard.html. `.ci/run` itself does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-target/bench-ci}
threshold=${THRESHOLD:-0.30}
baseline=${BASELINE:-benches/baseline.jsonl}
cargo build --release --quiet
bin=target/release/pixelrts
rm -rf "$results"
mkdir -p "$results"
for pattern in random zeros text; do
    "$bin" bench --sizes 8MiB 64MiB --iterations 3 --pattern "$pattern" --output "$results"
done
"$bin" dashboard --results-dir "$results" --output "$results/dashboard.html"
if [ "${UPDATE_BASELINE:-0}" = 1 ]; then
    cp "$results/benchmark_history.jsonl" "$baseline"
    echo "bench-ci: baseline updated: $baseline"
    exit 0
fi
"$bin" bench --check-regression --baseline "$baseline" --threshold "$threshold" --output "$results"
