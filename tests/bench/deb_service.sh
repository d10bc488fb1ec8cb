#!/bin/sh
# Start-to-ready of lattice-edge.service under systemd, against the same agent in an
# unconfined transient unit, in the same booted chroot; plus the unit's exposure score
# and the installed size. One JSON line per figure (figure, arch, value or median).
#
#   sudo sh tests/bench/deb_service.sh dist/lattice-edge_0.1.0_amd64.deb [RUNS]
#
# It runs packaging/deb/test.sh --bench RUNS (the whole package test, then RUNS
# alternating restarts of each unit: InactiveExit -> ActiveEnter, i.e. until READY=1).
set -eu
deb=${1:?usage: deb_service.sh DEB [RUNS]}
runs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
sh "$here/../../packaging/deb/test.sh" --bench "$runs" "$deb" | grep '^{'
