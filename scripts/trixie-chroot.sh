#!/usr/bin/env bash
# A small Debian 13 (trixie) chroot for the XTheadVector build of storybot-llama2c (make riscv-thead).
# Debian 12's compilers do not know xtheadvector; trixie's gcc-14-riscv64-linux-gnu does, but it needs
# trixie's glibc, so it runs in this chroot while the host stays Debian 12. The chroot also holds trixie's
# qemu-riscv64 (QEMU 10, static, runs on the host too), which has the thead-c906 CPU model.
#
# Usage:
#   scripts/trixie-chroot.sh ensure       create it unless it is there and current (idempotent); needs root
#   scripts/trixie-chroot.sh path         print where it is (it may not exist yet)
#   scripts/trixie-chroot.sh run CMD...   run CMD inside it in the current directory, which is bind-mounted
#                                         at the same path (a private mount namespace, gone when CMD ends)
#
# Where: $STORYBOT_TRIXIE_CHROOT, else $XDG_CACHE_HOME/storybot/trixie-chroot (~/.cache/storybot/...).
# The mirror is the one apt uses on this host for its own Debian release, so no other registry is asked.
set -euo pipefail

root="${STORYBOT_TRIXIE_CHROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/storybot/trixie-chroot}"
# Bump when the package set changes: an older chroot is then rebuilt by `ensure`.
recipe="v1 minbase gcc-14-riscv64-linux-gnu libc6-dev-riscv64-cross qemu-riscv64"
stamp="$root/.storybot-recipe"

die() { echo "trixie-chroot: $*" >&2; exit 1; }

# The Debian archive URI apt has for this host's own release (e.g. bookworm), from its sources.
host_mirror() {
    local codename uri
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || die "cannot tell this host's Debian release from /etc/os-release"
    uri="$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' "Release: $codename" 2>/dev/null |
        head -n 1)"
    [ -n "$uri" ] || die "apt has no Debian source for '$codename' (see /etc/apt/sources.list*)"
    echo "${uri%/}"
}

# qemu-user is 450 MB of emulators for every architecture: keep only qemu-riscv64 out of its .deb.
qemu_hook='set -e; cd "$1/tmp"; chroot "$1" sh -c "cd /tmp && apt-get download -q qemu-user";
  dpkg-deb --fsys-tarfile qemu-user_*.deb | tar -xO ./usr/bin/qemu-riscv64 > "$1/usr/local/bin/qemu-riscv64";
  chmod 755 "$1/usr/local/bin/qemu-riscv64"; rm -f qemu-user_*.deb'

current() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; }

ensure() {
    if current; then
        echo "$root"
        return
    fi
    [ "$(id -u)" = 0 ] || die "creating $root needs root (mmdebstrap, chroot)"
    # One creator at a time (two worktrees' set-ups may run at once); the other then finds it ready.
    mkdir -p "$(dirname "$root")"
    exec 9>"$root.lock"
    flock 9
    if current; then
        echo "$root"
        return
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (Debian package mmdebstrap)"
    local mirror tmp start_s
    mirror="$(host_mirror)"
    tmp="$root.tmp"
    rm -rf "$tmp"
    start_s=$(date +%s)
    echo "trixie-chroot: creating $root from $mirror (a few minutes, once)" >&2
    # minbase and no documentation; the compiler and the riscv64 libc are the only additions.
    mmdebstrap --quiet --mode=root --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --include=gcc-14-riscv64-linux-gnu,libc6-dev-riscv64-cross \
        --customize-hook="$qemu_hook" \
        trixie "$tmp" "$mirror" >&2
    echo "$recipe" >"$tmp/.storybot-recipe"
    rm -rf "$root"
    mv "$tmp" "$root"
    echo "trixie-chroot: ready in $(($(date +%s) - start_s)) s, $(du -sh "$root" | cut -f1)" >&2
    echo "$root"
}

run() {
    [ $# -gt 0 ] || die "run wants a command"
    [ -f "$stamp" ] || die "$root does not exist: run scripts/trixie-chroot.sh ensure"
    local here
    here="$(pwd -P)"
    mkdir -p "$root$here"
    # Unprivileged developers get a user namespace mapped to root; CI and the set-up run as root.
    local userns=()
    [ "$(id -u)" = 0 ] || userns=(--map-root-user)
    exec unshare "${userns[@]}" --mount --propagation private -- /bin/sh -c '
        set -e
        root=$1 here=$2; shift 2
        mount --bind "$here" "$root$here"
        exec chroot "$root" /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$here" "$@"
    ' sh "$root" "$here" "$@"
}

case "${1:-}" in
ensure) ensure ;;
path) echo "$root" ;;
run) shift; run "$@" ;;
*) die "usage: $0 ensure | path | run CMD..." ;;
esac
