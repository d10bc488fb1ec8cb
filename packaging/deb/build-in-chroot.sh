#!/bin/sh
# Runs inside the bookworm build chroot of the target architecture (build.sh starts it):
# sdist and wheel, the venv at its final path, and the package's file tree in
# /srv/lattice-edge/out/root. build.sh adds DEBIAN/ and calls dpkg-deb on the host.
set -eu
: "${ARCH:?}" "${VERSION:?}" "${SOURCE_DATE_EPOCH:?}" "${MAINTAINER:?}"

work=/srv/lattice-edge
src=$work/src
out=$work/out
stage=$out/root
prefix=/usr/lib/lattice-edge
tools=/srv/lattice-edge-tools
deb=$src/packaging/deb

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
# The system's trust store (build.sh adds the host's local CAs), not pip's own copy.
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# What we compile (pywasm3; on armhf also psutil, msgpack, cffi, PyNaCl) gets Debian's
# hardening flags, as a Debian package build would. GCC 14 turns pywasm3's pointer casts
# into errors; the flag is harmless on bookworm's GCC 12.
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
CFLAGS="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
export CFLAGS="$CFLAGS -Wno-error=incompatible-pointer-types"
LDFLAGS="$(dpkg-buildflags --get LDFLAGS)"
export LDFLAGS
# pip's cache of the wheels it compiles (PyNaCl with libsodium takes most of an hour under
# qemu) lives in the chroot, one per set of flags, so a wheel is reused only when it would
# be built the same way again.
PIP_CACHE_DIR=/root/.cache/pip-$(printf '%s\n%s\n' "$CFLAGS" "$LDFLAGS" | md5sum | cut -c1-12)
export PIP_CACHE_DIR
# PyPI has no armv7l wheel of PyNaCl: it compiles from the sdist with the libsodium it
# bundles, as the amd64 and arm64 wheels carry theirs. (Not Debian's libsodium23: it is
# 1.0.18, and PyNaCl 1.6 needs symbols from 1.0.19 on, which the smoke test below catches.)

step() { echo "build-in-chroot[$ARCH]: $*" >&2; }
quiet() {
    log=$out/$1.log
    shift
    "$@" >"$log" 2>&1 || {
        tail -40 "$log" >&2
        echo "build-in-chroot[$ARCH]: failed: $* (log: $log)" >&2
        exit 1
    }
}

rm -rf "$out"
mkdir -p "$out" "$stage"

step "sdist and wheel (python -m build: the wheel is built from the sdist)"
[ -x $tools/bin/pyproject-build ] || quiet tools sh -c "python3 -m venv $tools && $tools/bin/pip install build"
quiet build $tools/bin/python -m build --outdir "$out/dist" "$src"
$tools/bin/python "$deb/check_dist.py" "$src" "$out/dist"

step "venv in $prefix"
rm -rf $prefix
python3 -m venv $prefix
# With the firmware bridge's libraries (pyserial, cbor2, imgtool): the unit reaches serial
# ports for it, and the agent imports them only when [[firmware.devices]] is configured.
# PyYAML (imgtool's, for a command the bridge never runs) is installed pure-Python: its
# wheels link a static libyaml, which Debian does not want embedded (lintian: embedded-library).
quiet pip env PIP_NO_BINARY=pyyaml PYYAML_FORCE_LIBYAML=0 \
    $prefix/bin/pip install "$out/dist/lattice_edge-$VERSION-py3-none-any.whl[firmware]"
quiet pip-uninstall $prefix/bin/python -m pip uninstall -y pip setuptools
# bin/ keeps the interpreter links, the console script and nats-server (cffi's code
# generator, the activate scripts and the empty include/ are for developers).
for entry in $prefix/bin/*; do
    case ${entry##*/} in python | python3 | python3.* | lattice-edge | nats-server) ;;
        *) rm -rf "$entry" ;;
    esac
done
rm -rf $prefix/include
# Relative links to bookworm's python3.11: the venv's interpreter is that minor version.
ln -sfn ../../../bin/python3.11 $prefix/bin/python3.11
ln -sfn python3.11 $prefix/bin/python3
ln -sfn python3.11 $prefix/bin/python
# Bytecode is compiled by postinst on the target and removed by prerm, as Debian's
# py3compile does, so the package ships none.
find $prefix -depth -name __pycache__ -exec rm -rf {} +
# Debug symbols: Go's nats-server and extension modules built here carry them. Libraries
# auditwheel bundled (*.libs/) were rewritten by patchelf and stay as they are.
find $prefix -type f \( -name '*.so' -o -name 'nats-server' \) ! -path '*.libs/*' -print \
    | while read -r binary; do
        if file -b "$binary" | grep -q 'not stripped'; then
            strip --strip-unneeded --remove-section=.comment --remove-section=.note "$binary"
        fi
    done

step "smoke test of the venv"
$prefix/bin/lattice-edge --version
$prefix/bin/python -c '
import importlib, pathlib, sys
site = pathlib.Path(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
# Every extension module must still load after stripping.
for so in sorted(site.rglob("*.so")):
    if ".libs" in so.parent.name or "tests" in so.parts:
        continue
    module = ".".join(so.relative_to(site).with_suffix("").with_suffix("").parts)
    importlib.import_module(module)
'
if [ -x $prefix/bin/nats-server ]; then $prefix/bin/nats-server --version; fi
$prefix/bin/python -c 'import firmware_bridge; firmware_bridge.require("bridge")'

find $prefix -depth -name __pycache__ -exec rm -rf {} +

step "file tree"
mkdir -p "$stage/usr/lib" "$stage/usr/bin"
cp -a $prefix "$stage/usr/lib/"
ln -s ../lib/lattice-edge/bin/lattice-edge "$stage/usr/bin/lattice-edge"
install -D -m 0644 "$deb/lattice-edge.service" "$stage/lib/systemd/system/lattice-edge.service"
install -D -m 0644 "$deb/agent.toml" "$stage/etc/lattice-edge/agent.toml"
install -D -m 0644 "$deb/modules-load.conf" "$stage/usr/lib/modules-load.d/lattice-edge.conf"
install -D -m 0644 "$deb/lintian-overrides" "$stage/usr/share/lintian/overrides/lattice-edge"

date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
man=$stage/usr/share/man/man1
mkdir -p "$man"
$prefix/bin/python "$deb/manpage.py" --version "$VERSION" --date "$date" >"$man/lattice-edge.1"
gzip -9n "$man/lattice-edge.1"

# click writes the completion scripts itself (they call back into lattice-edge).
complete() {
    mkdir -p "$(dirname "$2")"
    env "_LATTICE_EDGE_COMPLETE=$1" $prefix/bin/lattice-edge >"$2"
    chmod 0644 "$2"
}
complete bash_source "$stage/usr/share/bash-completion/completions/lattice-edge"
complete zsh_source "$stage/usr/share/zsh/vendor-completions/_lattice-edge"
complete fish_source "$stage/usr/share/fish/vendor_completions.d/lattice-edge.fish"

doc=$stage/usr/share/doc/lattice-edge
mkdir -p "$doc"
install -m 0644 "$src/README.md" "$doc/README.md"
# The bundled libraries' license texts go into the copyright file, as Debian wants them.
$prefix/bin/python "$deb/copyright.py" --move "$stage$prefix" >"$doc/copyright"
find "$stage$prefix" -depth -path '*.dist-info/*' -type d -empty -delete
{
    printf 'lattice-edge (%s) bookworm; urgency=medium\n\n' "$VERSION"
    printf '  * Built from %s.\n\n' "${SOURCE_REVISION:-a source tree}"
    printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
find "$stage" -depth -name __pycache__ -exec rm -rf {} +

step "shared library dependencies"
# dpkg-shlibdeps wants a debian/control and finds libraries shipped in the package under
# debian/<package>; the tree is linked there for it.
shl=$out/shlibdeps
mkdir -p $shl/debian
printf 'Source: lattice-edge\n\nPackage: lattice-edge\nArchitecture: any\n' >$shl/debian/control
ln -s "$stage" $shl/debian/lattice-edge
elves=$(find "$stage" -type f \( -name '*.so' -o -name '*.so.*' -o -name nats-server \) | sort)
libdirs=$(for f in $elves; do dirname "$f"; done | sort -u | sed 's/^/-l/')
(cd $shl && dpkg-shlibdeps -O --warnings=1 $libdirs -e $elves) >"$out/shlibs.substvars"
rm -rf $shl
cat "$out/shlibs.substvars"
