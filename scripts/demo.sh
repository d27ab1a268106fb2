#!/usr/bin/env bash
# Demo on a fresh machine: build, make a demo input, encode it into a PNG, show its info,
# decode it back with --verify and compare byte for byte; then mount the folder holding the PNG
# (`pixelrts mount`), read the decoded file through the mount, write a new file into the mount's
# encode/ folder and unmount. The mount part needs /dev/fuse and fusermount3 (Debian: fuse3);
# without them it says so and stops after the codec part.
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
fi
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then "$bin" umount "$work/mnt" || fusermount3 -u -z "$work/mnt"; fi
    if [ $# -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$work"; fi
}
trap 'cleanup' EXIT
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
echo "codec OK: $(wc -c <"$input") bytes round-tripped through $(wc -c <"$work/demo.bin.rts.png") bytes of PNG"

if ! command -v fusermount3 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "== installing fuse3 (for the mount part)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3 >/dev/null \
        || echo "could not install fuse3"
fi
if [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null 2>&1; then
    echo "mount part skipped: needs /dev/fuse and fusermount3 (apt-get install fuse3)"
    exit 0
fi
echo "== mount"
mkdir -p "$work/images" "$work/mnt"
mv "$work/demo.bin.rts.png" "$work/images/"
"$bin" mount "$work/images" "$work/mnt"
ls -l "$work/mnt"
echo "== sha256 through the mount (the decoded file, read lazily)"
sha256sum "$input" "$work/mnt/demo.bin"
cmp "$input" "$work/mnt/demo.bin"
getfattr -n user.pixelrts.data_hash "$work/mnt/demo.bin" 2>/dev/null || true
echo "== cp into encode/: encoded on close to images/notes.txt.rts.png"
seq 1 100000 >"$work/notes.txt"
cp "$work/notes.txt" "$work/mnt/encode/"
ls -l "$work/images"
cmp "$work/notes.txt" "$work/mnt/notes.txt"
"$bin" umount "$work/mnt"
echo "demo OK: codec and mount"
