#!/usr/bin/env bash
# Build (once) the root filesystem of nnflash's emulated Raspberry-Pi-like aarch64 test host.
#
# A Debian bookworm arm64 tree made with `debootstrap --foreign` and finished under qemu-user-static
# (binfmt_misc), shaped like Raspberry Pi OS Lite Bookworm 64-bit: Python 3.11 with venv and pip,
# OpenSSH server (key authentication only), user `pi` (uid 1000, groups video and i2c), hostname
# raspberrypi, and no apt package index inside. tests/emulated/emuhost.py runs its sshd chrooted into
# this tree inside a network namespace.
#
# Usage: scripts/build_emu_rootfs.sh          # prints the rootfs path on stdout, progress on stderr
# Env:   NNFLASH_EMU_CACHE   rootfs location (default /var/cache/nnflash-emu/bookworm-arm64)
#        NNFLASH_EMU_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#        NNFLASH_EMU_REBUILD=1  rebuild even when the stamp matches
#
# Idempotent: the finished tree holds a stamp with the sha256 of this script; when it matches, only
# the cheap checks run (system packages present, binfmt handler registered with the F flag). A build
# goes into a temporary directory next to the cache and is renamed into place at the end; a flock on
# "<cache>.lock" keeps concurrent callers from building twice. Needs root; installs debootstrap,
# qemu-user-static and binfmt-support with apt-get when they are missing. A fresh build takes about
# 4.5 minutes on 2 cores (download ~25 s, second stage under qemu ~4 min); the result is ~195 MB.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
ROOTFS="${NNFLASH_EMU_CACHE:-/var/cache/nnflash-emu/bookworm-arm64}"
ROOTFS="${ROOTFS%/}"
MIRROR="${NNFLASH_EMU_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
INCLUDE="python3,python3-venv,python3-pip,openssh-server,ca-certificates"
STAMP_NAME=".nnflash-emu-stamp"
T0=$(date +%s)

log() { echo "build_emu_rootfs: [$(($(date +%s) - T0))s] $*" >&2; }
# prefix each line read on stdin with the seconds since the start (bash's $SECONDS: no fork per line)
stamp_lines() {
    local line
    while IFS= read -r line; do echo "build_emu_rootfs: [${SECONDS}s] $1: $line"; done
}
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, binfmt_misc)"

HOST_ARCH="$(uname -m)"
NATIVE=0
[ "$HOST_ARCH" = aarch64 ] && NATIVE=1

# ------------------------------------------------------------------------------------------------
# System packages

ensure_packages() {
    local missing=""
    command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
    if [ "$NATIVE" -eq 0 ]; then
        [ -x /usr/bin/qemu-aarch64-static ] || missing="$missing qemu-user-static"
        command -v update-binfmts >/dev/null 2>&1 || missing="$missing binfmt-support"
    fi
    command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
    if [ -n "$missing" ]; then
        log "installing system packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >&2
    fi
}

# ------------------------------------------------------------------------------------------------
# binfmt_misc: the qemu-aarch64 handler, enabled, with the F (fix-binary) flag so that the
# interpreter is opened at registration time and works inside a chroot that lacks it.

QEMU_ENTRY=/proc/sys/fs/binfmt_misc/qemu-aarch64
QEMU_INTERP=/usr/libexec/qemu-binfmt/aarch64-binfmt-P
QEMU_MAGIC='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
QEMU_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'

register_qemu_direct() {
    local interp="$QEMU_INTERP"
    [ -e "$interp" ] || interp=/usr/bin/qemu-aarch64-static
    [ -e "$QEMU_ENTRY" ] && echo -1 >"$QEMU_ENTRY"
    printf ':qemu-aarch64:M::%s:%s:%s:PF\n' "$QEMU_MAGIC" "$QEMU_MASK" "$interp" \
        >/proc/sys/fs/binfmt_misc/register
}

ensure_binfmt() {
    [ "$NATIVE" -eq 1 ] && return 0
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc at /proc/sys/fs/binfmt_misc (container without the privilege?)"
    fi
    if [ ! -e "$QEMU_ENTRY" ]; then
        log "enabling the qemu-aarch64 binfmt handler"
        if ! update-binfmts --display qemu-aarch64 >/dev/null 2>&1; then
            update-binfmts --import qemu-aarch64 >&2 || true
        fi
        update-binfmts --enable qemu-aarch64 >&2 || true
    fi
    [ -e "$QEMU_ENTRY" ] || register_qemu_direct
    if ! head -n1 "$QEMU_ENTRY" | grep -qx enabled; then
        echo 1 >"$QEMU_ENTRY"
    fi
    if ! grep -q '^flags:.*F' "$QEMU_ENTRY"; then
        log "re-registering qemu-aarch64 with the F (fix-binary) flag"
        register_qemu_direct
    fi
    grep -q '^flags:.*F' "$QEMU_ENTRY" || die "qemu-aarch64 binfmt handler lacks the F flag"
}

# ------------------------------------------------------------------------------------------------
# The build

# Runs a command chrooted into $1, in a private mount namespace so that whatever it mounts
# (debootstrap mounts /proc and /sys) disappears with it and never shows up on the host.
in_chroot() {
    local root="$1"
    shift
    unshare --mount --propagation private -- chroot "$root" "$@"
}

configure_rootfs() {
    local root="$1"
    log "configuring: user pi, sshd, hostname"
    cat >"$root/tmp/nnflash-configure.sh" <<'EOF'
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
getent group video >/dev/null || groupadd --system video
getent group i2c >/dev/null || groupadd --system i2c
if ! getent passwd pi >/dev/null; then
    getent group pi >/dev/null || groupadd --gid 1000 pi
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/pi --shell /bin/bash --groups video,i2c pi
fi
# "*": no password login, but not "locked" ("!"), which sshd refuses even for keys when UsePAM is off
usermod -p '*' pi
install -d -m 700 -o pi -g pi /home/pi/.ssh
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A
EOF
    in_chroot "$root" /bin/sh /tmp/nnflash-configure.sh >&2
    rm -f "$root/tmp/nnflash-configure.sh"

    mkdir -p "$root/etc/ssh/sshd_config.d"
    cat >"$root/etc/ssh/sshd_config.d/10-nnflash-emu.conf" <<'EOF'
# nnflash emulated test host: keys only. First value wins, so this overrides sshd_config.
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
PrintMotd no
UseDNS no
MaxStartups 100
MaxSessions 100
# per-run key written by emuhost.py into the host's private /run, plus the usual file
AuthorizedKeysFile .ssh/authorized_keys /run/nnflash-emu/authorized_keys
EOF
    echo raspberrypi >"$root/etc/hostname"
    cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters

127.0.1.1	raspberrypi
EOF
    # no nameserver and no route: nothing outside is reachable from the emulated host
    printf '# nnflash emulated host: no network beyond the test link\n' >"$root/etc/resolv.conf"
    : >"$root/etc/machine-id"

    # what the first stage extracted before dpkg's path-exclude took effect
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    find "$root/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true

    log "removing the apt package index and caches"
    rm -rf "$root/var/lib/apt/lists" "$root/var/cache/apt"
    mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
    rm -rf "$root/debootstrap" "$root/var/log/"*.log "$root/root/.cache"
    find "$root/tmp" "$root/var/tmp" -mindepth 1 -delete 2>/dev/null || true
    find "$root/run" -mindepth 1 -delete 2>/dev/null || true
}

# Trees replaced by a rebuild: a running emulated host (emuhost.py holds a shared flock on the
# tree's stamp file) keeps using its old tree, which goes once no host holds it any more.
remove_old_trees() {
    local d
    for d in "$(dirname "$ROOTFS")/.$(basename "$ROOTFS").old."*; do
        [ -d "$d" ] || continue
        if flock -n -x "$d/$STAMP_NAME" true 2>/dev/null; then
            rm -rf --one-file-system "$d"
        else
            log "replaced rootfs still in use by a running emulated host, left for later: $d"
        fi
    done
}

build() {
    local stamp="$1" parent tmp t1 t2
    parent="$(dirname "$ROOTFS")"
    # leftovers of builds that were killed (we hold the lock: no other build is running)
    rm -rf --one-file-system "$parent/.$(basename "$ROOTFS").build."*
    tmp="$(mktemp -d "$parent/.$(basename "$ROOTFS").build.XXXXXX")"
    BUILD_TMP="$tmp"
    # --one-file-system: never follow a leftover mount out of the tree
    trap 'rm -rf --one-file-system "$BUILD_TMP"' EXIT
    chmod 755 "$tmp"

    log "debootstrap first stage ($SUITE arm64 minbase, mirror $MIRROR) into $tmp"
    t1=$(date +%s)
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" \
        "$SUITE" "$tmp" "$MIRROR" 2>&1 | stamp_lines "first stage" >&2
    log "first stage took $(($(date +%s) - t1))s"

    # lean and faster under qemu: no fsync per file, no man pages, docs (copyrights stay) or locales
    mkdir -p "$tmp/etc/dpkg/dpkg.cfg.d"
    echo force-unsafe-io >"$tmp/etc/dpkg/dpkg.cfg.d/nnflash-emu-unsafe-io"
    cat >"$tmp/etc/dpkg/dpkg.cfg.d/nnflash-emu-nodoc" <<'EOF'
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF

    log "debootstrap second stage (under qemu-aarch64)"
    t2=$(date +%s)
    in_chroot "$tmp" /debootstrap/debootstrap --second-stage 2>&1 | stamp_lines "second stage" >&2
    rm -f "$tmp/etc/dpkg/dpkg.cfg.d/nnflash-emu-unsafe-io"
    log "second stage took $(($(date +%s) - t2))s"

    configure_rootfs "$tmp"

    # sanity: the tree runs, with the expected Python
    local pyver machine
    pyver="$(in_chroot "$tmp" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    machine="$(in_chroot "$tmp" /usr/bin/python3 -c 'import platform; print(platform.machine())')"
    [ "$pyver" = 3.11 ] || die "unexpected python3 version $pyver in the new rootfs"
    [ "$machine" = aarch64 ] || die "unexpected machine $machine in the new rootfs"

    printf '%s\n' "$stamp" >"$tmp/$STAMP_NAME"
    if [ -e "$ROOTFS" ]; then
        local old
        old="$parent/.$(basename "$ROOTFS").old.$$"
        mv -T "$ROOTFS" "$old"
        mv -T "$tmp" "$ROOTFS"
        remove_old_trees
    else
        mv -T "$tmp" "$ROOTFS"
    fi
    trap - EXIT
    log "rootfs ready at $ROOTFS: fresh build took $(($(date +%s) - T0))s" \
        "($(du -sh "$ROOTFS" 2>/dev/null | cut -f1))"
}

# ------------------------------------------------------------------------------------------------

mkdir -p "$(dirname "$ROOTFS")"
exec 9>"$ROOTFS.lock"
if ! flock -n 9; then
    log "another build holds $ROOTFS.lock; waiting"
    flock 9
fi

ensure_packages
ensure_binfmt

STAMP="sha256:$(sha256sum "$SELF" | cut -d' ' -f1) suite=$SUITE arch=arm64"
if [ "${NNFLASH_EMU_REBUILD:-0}" != 1 ] && [ -f "$ROOTFS/$STAMP_NAME" ] &&
    [ "$(cat "$ROOTFS/$STAMP_NAME")" = "$STAMP" ]; then
    log "cached rootfs is up to date: $ROOTFS"
    remove_old_trees
else
    [ -e "$ROOTFS" ] && log "stamp differs (or rebuild asked): rebuilding $ROOTFS"
    build "$STAMP"
fi

# quick check that the arm64 tree actually executes here
in_chroot "$ROOTFS" /bin/true || die "cannot execute the arm64 rootfs (binfmt/qemu problem?)"
echo "$ROOTFS"
