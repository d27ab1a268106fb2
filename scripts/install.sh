#!/usr/bin/env bash
# Installs pixelrts system-wide (run as root, after `cargo build --release`):
#   PREFIX/bin/pixelrts                  the release binary
#   /sbin/mount.fuse.pixelrts            symlink to it: mount(8) runs this helper for
#                                        `mount -t fuse.pixelrts` and fstab lines, and the binary
#                                        acts as `pixelrts mount` when invoked under that name
#   /etc/systemd/system/pixelrts@.service    (only when /etc/systemd/system exists)
#   /etc/pixelrts/                       where the service's per-mount-point .conf files go
#   PREFIX/share/pixelrts/               example.conf and the example mnt-rts.mount unit
#   PREFIX/share/man/man1, man8          pixelrts(1), pixelrts-SUBCOMMAND(1), mount.fuse.pixelrts(8)
#   PREFIX/share/bash-completion/completions/pixelrts, PREFIX/share/zsh/site-functions/_pixelrts,
#   PREFIX/share/fish/vendor_completions.d/pixelrts.fish      shell completions
#
# Usage:  scripts/install.sh [--uninstall] [PREFIX]      (PREFIX defaults to /usr/local)
#   PIXELRTS=path        the binary to install [default: ${CARGO_TARGET_DIR:-target}/release/pixelrts]
#   DESTDIR=dir          stage everything under dir (packaging, tests); links still point at PREFIX
#   SBINDIR=/sbin        where the mount helper goes (mount(8) looks in /sbin only)
#
# Running it twice changes nothing the second time; --uninstall removes what it installed but
# keeps /etc/pixelrts/*.conf (your configuration) and never removes a mount helper link that
# points somewhere else.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

uninstall=0
prefix=/usr/local
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) uninstall=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) prefix=$1 ;;
    esac
    shift
done
case $prefix in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, got '$prefix'" >&2; exit 2 ;;
esac
prefix=${prefix%/}
destdir=${DESTDIR:-}
destdir=${destdir%/}
sbindir=${SBINDIR:-/sbin}

bin_path=$prefix/bin/pixelrts                   # as seen by the installed system
bin_dest=$destdir$bin_path                      # where this run writes it
helper=$destdir$sbindir/mount.fuse.pixelrts
unit_dir=$destdir/etc/systemd/system
conf_dir=$destdir/etc/pixelrts
share_dir=$destdir$prefix/share/pixelrts
man_dir=$destdir$prefix/share/man
bash_completion=$destdir$prefix/share/bash-completion/completions/pixelrts
zsh_completion=$destdir$prefix/share/zsh/site-functions/_pixelrts
fish_completion=$destdir$prefix/share/fish/vendor_completions.d/pixelrts.fish

say() { echo "install.sh: $*"; }

# Reloads systemd's unit files when systemd is the running init (not in containers or chroots,
# and not when staging under DESTDIR).
reload_systemd() {
    if [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
        say "systemctl daemon-reload"
    fi
}

# Copies $1 to $2 with mode $3 unless $2 already has the same bytes: re-runs report "unchanged"
# and do not touch mtimes. The copy goes to a temporary name then rename(2)s over the old file,
# so a running mount keeps its (old) binary and nothing ever sees a half-written file.
put() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        chmod "$mode" "$dst"
        say "unchanged $dst"
        return
    fi
    mkdir -p "$(dirname "$dst")"
    install -m "$mode" "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    say "installed $dst"
}

# Removes $1 if it exists.
remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        say "removed $1"
    fi
}

if [ "$uninstall" = 1 ]; then
    if [ -L "$helper" ]; then
        if [ "$(readlink "$helper")" = "$bin_path" ]; then
            remove "$helper"
        else
            say "kept $helper: it points to $(readlink "$helper"), not $bin_path"
        fi
    fi
    remove "$unit_dir/pixelrts@.service"
    remove "$bin_dest"
    remove "$share_dir/example.conf"
    remove "$share_dir/mnt-rts.mount"
    rmdir "$share_dir" 2>/dev/null || true
    for page in "$man_dir"/man1/pixelrts.1 "$man_dir"/man1/pixelrts-*.1 "$man_dir"/man8/mount.fuse.pixelrts.8; do
        remove "$page"
    done
    remove "$bash_completion"
    remove "$zsh_completion"
    remove "$fish_completion"
    # Empty means nothing of the user's is lost; otherwise keep their configuration.
    if rmdir "$conf_dir" 2>/dev/null; then
        say "removed $conf_dir"
    elif [ -d "$conf_dir" ]; then
        say "kept $conf_dir (your configuration)"
    fi
    reload_systemd
    exit 0
fi

src_bin=${PIXELRTS:-${CARGO_TARGET_DIR:-target}/release/pixelrts}
if [ ! -x "$src_bin" ]; then
    # Not built here on purpose: this usually runs as root, and a root-owned target/ would then
    # break the user's next `cargo build`.
    echo "install.sh: no binary at $src_bin; run \`cargo build --release\` first (as yourself)," >&2
    echo "            or point PIXELRTS= at the binary to install" >&2
    exit 1
fi

put "$src_bin" "$bin_dest" 0755

# The helper: mount(8) execs /sbin/mount.TYPE for `-t TYPE` (here fuse.pixelrts) when it exists,
# and the binary recognises that argv[0]. `ln -sfn` replaces a stale link in one step.
mkdir -p "$(dirname "$helper")"
if [ -L "$helper" ] && [ "$(readlink "$helper")" = "$bin_path" ]; then
    say "unchanged $helper -> $bin_path"
elif [ -e "$helper" ] && [ ! -L "$helper" ]; then
    echo "install.sh: $helper exists and is not a symlink; not replacing it" >&2
    exit 1
else
    ln -sfn "$bin_path" "$helper"
    say "linked $helper -> $bin_path"
fi

# The service names /usr/local/bin/pixelrts; point it at this PREFIX.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
if [ -d "$unit_dir" ]; then
    sed "s|/usr/local/bin/pixelrts|$bin_path|g" systemd/pixelrts@.service >"$tmp"
    put "$tmp" "$unit_dir/pixelrts@.service" 0644
    mkdir -p "$conf_dir"
    reload_systemd
else
    say "skipped the systemd unit: $unit_dir does not exist"
fi
put systemd/example.conf "$share_dir/example.conf" 0644
put systemd/mnt-rts.mount "$share_dir/mnt-rts.mount" 0644

# Man pages and completions, generated by the binary being installed from its own clap
# definitions (so they match it), into a scratch folder, then put in place like the rest.
gen=$(mktemp -d)
trap 'rm -f "$tmp"; rm -rf "$gen"' EXIT
"$src_bin" man "$gen/man" >/dev/null
for page in "$gen"/man/*.1; do put "$page" "$man_dir/man1/${page##*/}" 0644; done
for page in "$gen"/man/*.8; do put "$page" "$man_dir/man8/${page##*/}" 0644; done
"$src_bin" completions bash >"$gen/bash"
"$src_bin" completions zsh >"$gen/zsh"
"$src_bin" completions fish >"$gen/fish"
put "$gen/bash" "$bash_completion" 0644
put "$gen/zsh" "$zsh_completion" 0644
put "$gen/fish" "$fish_completion" 0644
# man(1) finds new pages without it; apropos/whatis need the index.
if [ -z "$destdir" ] && command -v mandb >/dev/null 2>&1; then
    mandb -q "$prefix/share/man" 2>/dev/null || true
fi

cat <<MSG
install.sh: done. To mount /srv/images on /mnt/rts at boot, either
    cp $prefix/share/pixelrts/example.conf /etc/pixelrts/mnt-rts.conf   # edit SOURCE, OPTIONS
    systemctl enable --now pixelrts@mnt-rts.service
or add to /etc/fstab:
    /srv/images  /mnt/rts  fuse.pixelrts  allow_other,nofail  0  0
MSG
