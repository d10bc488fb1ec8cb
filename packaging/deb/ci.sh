#!/bin/sh
# What .ci/run runs for the Debian package: build the amd64 .deb (build.sh runs lintian
# on it) and test it (test.sh); then each architecture in LATTICE_EDGE_DEB_CI_ARCHES
# (default "arm64") under qemu-user, skipping, and saying so, any this machine cannot run.
# From a clean machine arm64 adds about 24 minutes (its chroots are made under qemu) and
# armhf about 43 (PyNaCl compiles and tests its libsodium under qemu), so armhf is left
# to the by-hand runs unless asked for: LATTICE_EDGE_DEB_CI_ARCHES="arm64 armhf".
# The chroots are cached in /var/cache/lattice-edge-deb between steps and runs.
set -eu
PROG=ci.sh
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

out=$repo/dist/deb
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")
foreign=${LATTICE_EDGE_DEB_CI_ARCHES-arm64}

package() {
    started=$(date +%s)
    sh "$here/build.sh" --arch "$1" --out "$out"
    sh "$here/test.sh" "$out/lattice-edge_${version}_$1.deb"
    say "$1 package built and tested in $(($(date +%s) - started)) s"
}

package amd64
for arch in arm64 armhf; do
    case " $foreign " in
        *" $arch "*)
            if setup_foreign_arch "$arch"; then
                package "$arch"
            else
                say "SKIPPED the $arch package: this machine cannot run $arch binaries (binfmt_misc or a qemu-user handler with the F flag is unavailable)"
            fi
            ;;
        *) say "not building the $arch package in CI (LATTICE_EDGE_DEB_CI_ARCHES='$foreign'); docs/packaging.md has the by-hand run" ;;
    esac
done
