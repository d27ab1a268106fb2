# shellcheck shell=bash
# Shared by bench-read.sh, bench-loop.sh and bench-loop-bound.sh (sourced, not run): timing,
# dropping the page cache, a work folder with a mount point and a loop mount point that are
# undone on exit, the loop-mounted `tar` they time, and the squashfs image they compare with.

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# bench_workdir PREFIX: a fresh $WORK under /var/tmp with $MNT and $LOOPMNT in it; on exit,
# whatever is still mounted or attached there is undone and $WORK removed.
bench_workdir() {
    WORK=$(mktemp -d "/var/tmp/$1.XXXXXX")
    MNT=$WORK/mnt
    LOOPMNT=$WORK/loop
    mkdir -p "$MNT" "$LOOPMNT"
    trap bench_cleanup EXIT
}
bench_cleanup() {
    mountpoint -q "$LOOPMNT" && umount "$LOOPMNT" || true
    [ -n "${LOOPDEV:-}" ] && losetup -d "$LOOPDEV" 2>/dev/null || true
    mountpoint -q "$MNT" && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; } || true
    rm -rf "$WORK"
}

# loop_tar FILE [data]: loop-mounts the ext4 image FILE read-only at $LOOPMNT, prints the seconds
# `tar cf /dev/null` of its tree takes (with "data": `tar cf - | cat`, which reads the files'
# contents too; GNU tar reads none into /dev/null), and detaches it again.
loop_tar() {
    LOOPDEV=$(losetup -r -f --show "$1")
    mount -t ext4 -o ro,noload "$LOOPDEV" "$LOOPMNT"
    local t0 t1
    t0=$(now)
    if [ "${2:-}" = data ]; then
        tar cf - -C "$LOOPMNT" . | cat >/dev/null
    else
        tar cf /dev/null -C "$LOOPMNT" .
    fi
    t1=$(now)
    umount "$LOOPMNT"
    losetup -d "$LOOPDEV"
    LOOPDEV=
    secs "$t0" "$t1"
}

# zstd_sqfs_of IMAGE: makes IMAGE.zstd.sqfs (`mksquashfs -comp zstd` of a folder holding IMAGE
# alone, as squashfuse_ll serves it) unless it is there; kept beside IMAGE for later runs.
zstd_sqfs_of() {
    [ -f "$1.zstd.sqfs" ] && return 0
    rm -rf "$WORK/sq"; mkdir "$WORK/sq"; ln "$1" "$WORK/sq/$(basename "$1")"
    mksquashfs "$WORK/sq" "$1.zstd.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null
    rm -rf "$WORK/sq"
}
