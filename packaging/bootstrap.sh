#!/bin/sh
# Install Lattice Edge into ./.venv on a fresh Debian / Raspberry Pi OS machine.
#
#   sh packaging/bootstrap.sh          the agent, for 'lattice-edge run'
#   sh packaging/bootstrap.sh --test   the agent (editable) plus the test tools, and
#                                      Debian's nats-server 2.9.10 for the old-server tests
#
# pywasm3 0.5.0 ships only as source, so the machine needs gcc and the Python headers;
# they are installed with apt when missing.
set -eu
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
mode=${1:-}
started=$(date +%s)
step() { echo "bootstrap: [$(($(date +%s) - started))s] $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

missing=
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing="$missing python3-venv"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$include/Python.h" ] || missing="$missing python3-dev"
if [ -n "$missing" ]; then
    step "installing system packages:$missing"
    apt_install $missing
fi

[ -x .venv/bin/python ] || { step "creating .venv"; "$PYTHON" -m venv .venv; }
# GCC 14 turns pywasm3's pointer casts into errors; the flag is harmless on older GCC.
export CFLAGS="${CFLAGS:-} -Wno-error=incompatible-pointer-types"
export PIP_DISABLE_PIP_VERSION_CHECK=1

step "installing into .venv with pip (pywasm3 compiles from source: minutes on a Pi)"
if [ "$mode" = "--test" ]; then
    .venv/bin/pip install -q -e '.[test]'
    # The oldest nats-server we support (Debian bookworm's) for the 2.9-style tests.
    old=.venv/nats-server-2.9
    if [ ! -x "$old/usr/sbin/nats-server" ] && command -v apt-get >/dev/null 2>&1; then
        step "fetching Debian's nats-server for the old-server tests"
        tmp=$(mktemp -d)
        if (cd "$tmp" && apt-get download -qq nats-server 2>/dev/null) \
            || { [ -z "$apt_updated" ] && as_root apt-get update -qq && apt_updated=1 \
                 && (cd "$tmp" && apt-get download -qq nats-server); }; then
            mkdir -p "$old" && dpkg-deb -x "$tmp"/nats-server_*.deb "$old"
        else
            echo "bootstrap: could not fetch Debian's nats-server; its tests will not run" >&2
        fi
        rm -rf "$tmp"
    fi
else
    .venv/bin/pip install -q .
fi
step "done"
