#!/usr/bin/env bash
# Real content, side by side (issue 11): builds a corpus on this machine and prints, per file,
# pixelrts's encoded size and time next to mksquashfs (gzip, zstd) and `zstd -T0 -3` of the same
# file, and `pixelrts decode --verify` next to `zstd -dc` and `openssl dgst -sha256`. One run,
# one table; ratios matter, these machines are shared and noisy.
#
#   scripts/bench-content.sh [WORKDIR]      (default: a fresh directory under /var/tmp)
#
# The corpus:
#   os.img       an ext4 image (mkfs.ext4 -d) of /usr/lib/x86_64-linux-gnu, /usr/share/doc,
#                /usr/share/locale and the Python standard library: the disk image people boot
#   locale.tar   a tar of /usr/share/locale
#   docs.txt     the uncompressed files of /usr/share/doc, concatenated
#   vmlinuz, initrd.img from /boot when present
#   random.bin   1 GiB of random bytes (BENCH_RANDOM_MIB to change)
#   small files  random 1000 B, 100000 B, 300000 B, 600000 B, 20000000 B and 64 KiB of zeros
# Then the read path (scripts/bench-read.sh) on os.img and random.bin.
# Before it, a second table, the layout's cost on random data at sizes from 1 B to 1 GiB + 1 (each
# size just past a grid boundary is the worst case: most of the image is padding), against the
# limit of 1% + 4 KiB and, where tests/fixtures/reference has one, the reference's PNG of the same input.
# Needs: mksquashfs (squashfs-tools), zstd, mkfs.ext4 (e2fsprogs), openssl; installs the
# Debian packages when missing and run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${PIXELRTS_BIN:-$ROOT/target/release/pixelrts}
[ -x "$BIN" ] || cargo build --release --quiet
WORK=${1:-$(mktemp -d /var/tmp/pixelrts-content.XXXXXX)}
mkdir -p "$WORK"
RANDOM_MIB=${BENCH_RANDOM_MIB:-1024}

need=()
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v zstd >/dev/null || need+=(zstd)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing: ${need[*]} (install them, or run as root)" >&2
        exit 2
    fi
fi

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
size() { stat -c %s "$1"; }

corpus=()
echo ">>> building the corpus in $WORK" >&2
if [ ! -f "$WORK/os.img" ]; then
    stage="$WORK/stage"
    rm -rf "$stage"
    mkdir -p "$stage"
    pystd=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    for d in /usr/lib/x86_64-linux-gnu /usr/share/doc /usr/share/locale "$pystd"; do
        [ -d "$d" ] || continue
        mkdir -p "$stage$(dirname "$d")"
        # Hard links when on the same filesystem, copies otherwise; site-packages is not the
        # standard library.
        cp -al "$d" "$stage$d" 2>/dev/null || cp -a "$d" "$stage$d"
    done
    rm -rf "$stage$pystd/site-packages"
    kib=$(du -sk "$stage" | cut -f1)
    mkfs.ext4 -q -F -d "$stage" "$WORK/os.img" "$((kib * 13 / 10 + 65536))k"
    rm -rf "$stage"
fi
corpus+=(os.img)
[ -f "$WORK/locale.tar" ] || tar cf "$WORK/locale.tar" -C /usr/share locale
corpus+=(locale.tar)
if [ ! -f "$WORK/docs.txt" ]; then
    find /usr/share/doc -type f ! -name '*.gz' ! -name '*.bz2' ! -name '*.xz' -print0 |
        sort -z | xargs -0 cat >"$WORK/docs.txt" 2>/dev/null || true
fi
corpus+=(docs.txt)
for f in /boot/vmlinuz /boot/initrd.img; do
    real=$(readlink -f "$f" 2>/dev/null || true)
    if [ -n "$real" ] && [ -r "$real" ]; then
        cp "$real" "$WORK/$(basename "$f")"
        corpus+=("$(basename "$f")")
    fi
done
[ -f "$WORK/random.bin" ] || head -c "$((RANDOM_MIB << 20))" /dev/urandom >"$WORK/random.bin"
corpus+=(random.bin)
for n in 1000 100000 300000 600000 20000000; do
    [ -f "$WORK/random_$n.bin" ] || head -c "$n" /dev/urandom >"$WORK/random_$n.bin"
    corpus+=("random_$n.bin")
done
[ -f "$WORK/zeros_65536.bin" ] || head -c 65536 /dev/zero >"$WORK/zeros_65536.bin"
corpus+=(zeros_65536.bin)

printf '\n| file | bytes | pixelrts bytes (of input) | encode s | squashfs-gzip bytes | s | squashfs-zstd bytes | s | zstd -3 bytes | s | ours / sqfs-gzip size | sqfs-gzip s / ours s | decode --verify s | zstd -dc s | openssl sha256 s |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for name in "${corpus[@]}"; do
    f="$WORK/$name"
    n=$(size "$f")
    cat "$f" >/dev/null # the same (cached) start for every tool
    # Every output is removed first: replacing a big file while writing its successor costs
    # seconds of page-cache work that belong to no tool.
    rm -f "$WORK/out.rts.png" "$WORK/g.sqfs" "$WORK/z.sqfs" "$WORK/f.zst"
    t0=$(now); "$BIN" encode "$f" "$WORK/out.rts.png" --no-sidecar --force >/dev/null; t1=$(now)
    ours=$(size "$WORK/out.rts.png"); ours_s=$(secs "$t0" "$t1")
    sq="$WORK/sq"; rm -rf "$sq"; mkdir "$sq"; ln "$f" "$sq/$name"
    t0=$(now); mksquashfs "$sq" "$WORK/g.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null; t1=$(now)
    gz=$(size "$WORK/g.sqfs"); gz_s=$(secs "$t0" "$t1")
    t0=$(now); mksquashfs "$sq" "$WORK/z.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null; t1=$(now)
    zs=$(size "$WORK/z.sqfs"); zs_s=$(secs "$t0" "$t1")
    rm -rf "$sq"
    t0=$(now); zstd -T0 -3 -q -f "$f" -o "$WORK/f.zst"; t1=$(now)
    zst=$(size "$WORK/f.zst"); zst_s=$(secs "$t0" "$t1")
    t0=$(now); "$BIN" decode "$WORK/out.rts.png" - --verify >/dev/null; t1=$(now)
    dec_s=$(secs "$t0" "$t1")
    t0=$(now); zstd -dc "$WORK/f.zst" >/dev/null; t1=$(now)
    zdc_s=$(secs "$t0" "$t1")
    t0=$(now); openssl dgst -sha256 "$f" >/dev/null; t1=$(now)
    sha_s=$(secs "$t0" "$t1")
    python3 - "$name" "$n" "$ours" "$ours_s" "$gz" "$gz_s" "$zs" "$zs_s" "$zst" "$zst_s" "$dec_s" "$zdc_s" "$sha_s" <<'EOF'
import sys
(name, n, ours, ours_s, gz, gz_s, zs, zs_s, zst, zst_s, dec_s, zdc_s, sha_s) = sys.argv[1:]
n, ours, gz, zs, zst = map(int, (n, ours, gz, zs, zst))
f = lambda x: f"{x:,}"
speed = float(gz_s) / max(float(ours_s), 0.005)
print(f"| {name} | {f(n)} | {f(ours)} ({ours / max(n, 1):.3f}) | {ours_s} | {f(gz)} | {gz_s} | {f(zs)} | {zs_s} "
      f"| {f(zst)} | {zst_s} | {ours / gz:.3f} | {speed:.1f}x | {dec_s} | {zdc_s} | {sha_s} |")
EOF
done
rm -f "$WORK/out.rts.png" "$WORK/g.sqfs" "$WORK/z.sqfs" "$WORK/f.zst"

# The layout's cost on random data, by size. Sizes just past 4^k bytes leave 3/4 of the image as
# padding; 6 MiB and 20,000,000 B sit between boundaries.
VECTORS=${PIXELRTS_VECTORS:-$ROOT/tests/fixtures/reference}
printf '\n| random bytes | layout | pixelrts bytes | over input | limit (1%% + 4 KiB) | reference PNG | ours / reference | encode s | decode --verify s |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for n in 1 1000 100000 300000 600000 1048577 2097152 4194305 5242880 6291456 16777217 20000000 67108865 268435457 1073741825; do
    f="$WORK/sized.bin"
    if [ "$n" -eq 5242880 ] && [ -f "$VECTORS/g_5MiB_prng.bin" ]; then
        cp "$VECTORS/g_5MiB_prng.bin" "$f"
    elif [ "$n" -eq 300000 ] && [ -f "$VECTORS/e_300000_prng.bin" ]; then
        cp "$VECTORS/e_300000_prng.bin" "$f"
    elif [ "$n" -eq 1 ] && [ -f "$VECTORS/b_one_byte.bin" ]; then
        cp "$VECTORS/b_one_byte.bin" "$f"
    elif [ "$n" -eq 1000 ] && [ -f "$VECTORS/c_1000_prng.bin" ]; then
        cp "$VECTORS/c_1000_prng.bin" "$f"
    else
        head -c "$n" /dev/urandom >"$f"
    fi
    rm -f "$WORK/out.rts.png"
    t0=$(now); "$BIN" encode "$f" "$WORK/out.rts.png" --no-sidecar --force >/dev/null; t1=$(now)
    enc_s=$(secs "$t0" "$t1")
    t0=$(now); "$BIN" decode "$WORK/out.rts.png" - --verify >/dev/null; t1=$(now)
    dec_s=$(secs "$t0" "$t1")
    layout=$("$BIN" info "$WORK/out.rts.png" | grep -q '^seekable: *yes' && echo seekable || echo plain)
    ref=""
    for v in b_one_byte c_1000_prng e_300000_prng g_5MiB_prng; do
        if [ -f "$VECTORS/$v.bin" ] && cmp -s "$VECTORS/$v.bin" "$f"; then
            ref=$(size "$VECTORS/$v.rts.png")
        fi
    done
    python3 - "$n" "$layout" "$(size "$WORK/out.rts.png")" "${ref:-0}" "$enc_s" "$dec_s" <<'EOF'
import sys
n, layout, ours, ref, enc_s, dec_s = sys.argv[1:]
n, ours, ref = int(n), int(ours), int(ref)
limit = n // 100 + 4096
mark = "ok" if ours - n <= limit else "OVER"
r = f"{ref:,} | {ours / ref:.4f}" if ref else "– | –"
print(f"| {n:,} | {layout} | {ours:,} | {ours - n:,} ({(ours - n) / n:.2%}) | {limit:,} {mark} | {r} | {enc_s} | {dec_s} |")
EOF
done
rm -f "$WORK/sized.bin" "$WORK/out.rts.png"

# The read path (scripts/bench-read.sh): the OS image and the random file served by the mount,
# squashfuse_ll (zstd, gzip) and the kernel's squashfs. BENCH_READ=0 skips it.
if [ "${BENCH_READ:-1}" != 0 ]; then
    PIXELRTS_BIN="$BIN" scripts/bench-read.sh "$WORK/os.img" "$WORK/random.bin"
fi
echo >&2
echo ">>> corpus kept in $WORK (delete it when done)" >&2
