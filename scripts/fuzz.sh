#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each (default 60), one
# after another, with seed corpora from the reference vectors and small files of our own.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 3600 reader_vs_decode
#   JOBS=2 scripts/fuzz.sh 600                 (parallel libFuzzer workers per target)
#
# Needs a nightly toolchain and cargo-fuzz (installed here when missing: `cargo install
# cargo-fuzz`). Corpora grow in fuzz/corpus/<target>/ (not in git); a crash stops with the
# input in fuzz/artifacts/<target>/ — reproduce it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`, fix it, and add a regression
# test named after it. Exit status: non-zero on any finding.
#
# A CI job can run it as is (a few minutes per target on a build machine); .ci/run runs a short
# smoke of every target (FUZZ_SMOKE_SECONDS, default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(container_open reader_vs_decode checkpoint_loader code_mode_ranges segment_index)
fi
command -v cargo-fuzz >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ] ||
    cargo install --quiet --locked cargo-fuzz
rustup toolchain list | grep -q '^nightly' || { echo "fuzz.sh: needs a nightly toolchain" >&2; exit 2; }

(cd fuzz && cargo +nightly fuzz build -O)

# Seeds: PNGs for the file targets (reference vectors up to 1 MiB and our own encodings of
# small inputs in every layout and payload kind), a saved checkpoint index, index bytes.
seed() {
    local target=$1
    local dir=fuzz/corpus/$target
    [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && return 0
    mkdir -p "$dir"
    local bin=target/release/pixelrts
    [ -x "$bin" ] || cargo build --release --quiet
    local tmp
    tmp=$(mktemp -d)
    case $target in
    container_open | reader_vs_decode)
        find tests/fixtures/reference -name '*.rts.png' -size -1024k -exec cp {} "$dir/" \;
        python3 - "$tmp" <<'PY'
import os, random, sys
d = sys.argv[1]
r = random.Random(5)
open(os.path.join(d, "text"), "wb").write(b"".join(b"line %d of some text\n" % i for i in range(9000)))
open(os.path.join(d, "random"), "wb").write(r.randbytes(70000))
open(os.path.join(d, "zeros"), "wb").write(bytes(100000))
open(os.path.join(d, "mixed"), "wb").write(bytes(30000) + r.randbytes(30000) + b"abc" * 20000)
PY
        for f in text random zeros mixed; do
            "$bin" encode "$tmp/$f" "$dir/$f.seekable.rts.png" --layout seekable --compress none --no-sidecar >/dev/null 2>&1
            "$bin" encode "$tmp/$f" "$dir/$f.zlib.rts.png" --compress zlib --segment-size 16K --layout seekable --no-sidecar >/dev/null 2>&1
            "$bin" encode "$tmp/$f" "$dir/$f.plain.rts.png" --layout plain --no-sidecar >/dev/null 2>&1
        done
        ;;
    checkpoint_loader)
        (cd "$tmp" && PIXELRTS_FUZZ_WRITE_SEED=1 "$OLDPWD/fuzz/target/x86_64-unknown-linux-gnu/release/checkpoint_loader" -runs=1 >/dev/null 2>&1 || true)
        [ -f "$tmp/checkpoint_loader.seed" ] && cp "$tmp/checkpoint_loader.seed" "$dir/valid"
        ;;
    code_mode_ranges)
        printf 'A' >"$dir/one"
        head -c 3000 /dev/urandom >"$dir/random"
        tail -c +9 tests/fixtures/reference/f_add.wasm >"$dir/add" 2>/dev/null || true
        ;;
    segment_index)
        # original size, encoded size (LE u64), then an rtZX body from one of our files.
        python3 - "$dir" <<'PY'
import struct, sys, zlib
d = sys.argv[1]
seg, orig = 16384, 50000
count = -(-orig // seg)
offs = [2]
for s in range(count):
    raw = bytes((i * 7) % 251 for i in range(min(seg, orig - s * seg)))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    offs.append(offs[-1] + len(c.compress(raw) + c.flush(zlib.Z_FULL_FLUSH)))
enc = offs[-1] + 6
body = b"PXRTSZIX" + bytes([1, 0, 0, 0]) + struct.pack(">IQQQ", seg, orig, enc, count) + bytes(8)
body += b"".join(struct.pack(">Q", o) for o in offs) + bytes(4 * count)
open(f"{d}/index", "wb").write(struct.pack("<QQ", orig, enc) + body)
PY
        ;;
    esac
    rm -rf "$tmp"
}

status=0
for t in "${targets[@]}"; do
    seed "$t"
    echo ">>> fuzz $t for ${seconds}s (corpus $(ls fuzz/corpus/$t | wc -l) files)"
    log=$(mktemp)
    if (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 -timeout=30 \
        ${JOBS:+-fork=$JOBS} -print_final_stats=1 >"$log" 2>&1); then
        grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|Done [0-9]+ runs' "$log" | tr '\n' ' '
        echo
    else
        status=1
        echo ">>> $t: FINDING (see fuzz/artifacts/$t/)"
        grep -E 'panicked|ERROR|SUMMARY|artifact' "$log" | head -n 20
    fi
    rm -f "$log"
done
exit $status
