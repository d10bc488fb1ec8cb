#!/bin/sh
# What .ci/run runs for the Debian package: build the amd64 .deb (build.sh runs lintian
# on it) and test it (test.sh); then the same for each architecture in
# LATTICE_EDGE_CI_DEB_ARCHES (default: none; "arm64 armhf" builds and tests those under
# qemu, ~@FOREIGN_CI_MINUTES@ more minutes), skipping, and saying so, any this machine
# cannot run. The chroots are cached in /var/cache/lattice-edge-deb between steps and runs.
set -eu
PROG=ci.sh
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

out=$repo/dist/deb
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")

package() {
    sh "$here/build.sh" --arch "$1" --out "$out"
    sh "$here/test.sh" "$out/lattice-edge_${version}_$1.deb"
}

package amd64
for arch in ${LATTICE_EDGE_CI_DEB_ARCHES:-}; do
    if setup_foreign_arch "$arch"; then
        package "$arch"
    else
        say "SKIPPED the $arch package: this machine cannot run $arch binaries (no binfmt_misc/qemu-user handler)"
    fi
done
for arch in arm64 armhf; do
    case " ${LATTICE_EDGE_CI_DEB_ARCHES:-} " in
        *" $arch "*) ;;
        *)
            if can_run_arch "$arch"; then
                say "not building the $arch package in CI (set LATTICE_EDGE_CI_DEB_ARCHES='$arch' to; see docs/packaging.md for the by-hand run)"
            else
                say "SKIPPED the $arch package: this machine cannot run $arch binaries (no binfmt_misc/qemu-user handler)"
            fi
            ;;
    esac
done
