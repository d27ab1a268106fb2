#!/usr/bin/env bash
# Soak test of the mount: readers, a writer into encode/ and a replacer at once, every byte
# checked, the mount's RssAnon sampled. One line of figures; non-zero exit on any wrong byte,
# torn read, error or memory over cache_size + 64 MiB.
#
#   scripts/soak.sh [SECONDS] [READERS]          (default 600 s, 16 readers)
#   CACHE_MIB=64 THREADS=8 WRITERS=1 SIZE_MIB=48 WORKDIR=/var/tmp scripts/soak.sh 60
#
# Needs root or fusermount3, python3, and a release build (built here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
readers=${2:-16}
[ -x target/release/pixelrts ] || cargo build --release --quiet
exec python3 scripts/soak.py --pixelrts "$PWD/target/release/pixelrts" \
    --vectors tests/fixtures/reference --seconds "$seconds" --readers "$readers" \
    --cache-mib "${CACHE_MIB:-64}" --threads "${THREADS:-8}" --size-mib "${SIZE_MIB:-48}" \
    --writers "${WRITERS:-1}" ${WORKDIR:+--workdir "$WORKDIR"} ${JSON:+--json}
