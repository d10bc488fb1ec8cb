# Shared by build.sh and test.sh (sourced, POSIX sh): architectures, host tools and the
# cached Debian bookworm chroots everything is built and tested in.
#
# Cache: $LATTICE_EDGE_DEB_CACHE (default /var/cache/lattice-edge-deb), outside the
# checkout so a clean clone, and every step of one CI run, reuses it:
#   build-ARCH/           the build chroot (minbase + compilers), reused between builds
#   test-base-ARCH.tar    minbase + systemd; every test unpacks a fresh copy
# Each is made under a temporary name and renamed when complete, under a lock.
# sh has no local variables: each function prefixes its own with its initials.

DEB_SUITE=bookworm
DEB_MIRROR=${LATTICE_EDGE_DEB_MIRROR:-http://deb.debian.org/debian}
DEB_SECURITY_MIRROR=${LATTICE_EDGE_DEB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DEB_CACHE=${LATTICE_EDGE_DEB_CACHE:-/var/cache/lattice-edge-deb}

# What the build chroot needs beyond minbase. pywasm3 and (on armhf) psutil, msgpack,
# cffi (against Debian's libffi) and PyNaCl (with its bundled libsodium) compile there.
BUILD_PACKAGES="build-essential python3-dev python3-venv ca-certificates file"
BUILD_PACKAGES_armhf="libffi-dev"
# What the test chroot needs beyond minbase: an init to boot with systemd-nspawn.
TEST_PACKAGES="systemd systemd-sysv"

say() { printf '%s: %s\n' "${PROG:-lattice-edge-deb}" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts); run it with sudo"
}

host_arch() { dpkg --print-architecture; }

check_arch() {
    case $1 in
        amd64 | arm64 | armhf) ;;
        *) die "unsupported architecture '$1' (amd64, arm64 or armhf)" ;;
    esac
}

# The qemu-user binfmt handler for a Debian architecture.
qemu_binfmt_name() {
    case $1 in
        arm64) echo qemu-aarch64 ;;
        armhf) echo qemu-arm ;;
        amd64) echo qemu-x86_64 ;;
    esac
}

# apt-get install on the host, only what is missing.
host_install() {
    _hi_missing=
    for _hi_pkg in "$@"; do
        dpkg-query -W -f '${Status}\n' "$_hi_pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || _hi_missing="$_hi_missing $_hi_pkg"
    done
    [ -z "$_hi_missing" ] && return 0
    say "installing on the host:$_hi_missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $_hi_missing >/dev/null
}

# True when this machine can run ARCH's binaries in a chroot: natively, or through a
# qemu-user binfmt handler registered with the F flag (the interpreter is opened when
# registered, so it works inside the chroot without qemu being in it).
can_run_arch() {
    [ "$1" = "$(host_arch)" ] && return 0
    _cr_handler=/proc/sys/fs/binfmt_misc/$(qemu_binfmt_name "$1")
    [ -r "$_cr_handler" ] && grep -q '^enabled' "$_cr_handler" \
        && grep -q '^flags:.*F' "$_cr_handler"
}

# Make ARCH runnable here: install qemu-user-static and binfmt-support, mount binfmt_misc
# and enable the handler. Returns 1 (with the reason on stderr) when the kernel or the
# container does not allow it.
setup_foreign_arch() {
    can_run_arch "$1" && return 0
    host_install qemu-user-static binfmt-support
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || {
            say "cannot mount binfmt_misc (a container that forbids it?)"
            return 1
        }
    fi
    update-binfmts --enable "$(qemu_binfmt_name "$1")" >/dev/null 2>&1 || true
    can_run_arch "$1" || {
        say "no qemu binfmt handler with the F flag for $1"
        return 1
    }
}

# apt settings the chroot should share with the host: proxies and, on machines whose
# mirror is a dated snapshot, the Valid-Until check.
chroot_apt_conf() {
    apt-config dump 2>/dev/null \
        | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date) ' || true
}

# debootstrap_into ARCH DIR "PACKAGES": a minbase chroot with extra packages, made fresh,
# with point releases and security updates applied.
debootstrap_into() {
    _db_arch=$1 _db_dir=$2 _db_include=$3
    _db_log=$_db_dir.log
    rm -rf "$_db_dir"
    mkdir -p "$_db_dir"
    say "debootstrap $DEB_SUITE/$_db_arch into $_db_dir (once; cached afterwards)"
    _db_started=$(date +%s)
    if ! debootstrap --arch="$_db_arch" --variant=minbase \
        --include="$(echo $_db_include | tr ' ' ,)" \
        "$DEB_SUITE" "$_db_dir" "$DEB_MIRROR" >"$_db_log" 2>&1; then
        tail -20 "$_db_log" >&2
        die "debootstrap failed (log: $_db_log)"
    fi
    {
        echo "deb $DEB_MIRROR $DEB_SUITE main"
        echo "deb $DEB_MIRROR $DEB_SUITE-updates main"
        echo "deb $DEB_SECURITY_MIRROR $DEB_SUITE-security main"
    } >"$_db_dir/etc/apt/sources.list"
    chroot_apt_conf >"$_db_dir/etc/apt/apt.conf.d/90lattice-edge-host"
    # No daemons start while packages are installed into the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$_db_dir/usr/sbin/policy-rc.d"
    chmod 755 "$_db_dir/usr/sbin/policy-rc.d"
    if ! in_chroot "$_db_dir" sh -c 'apt-get update -qq && apt-get -y -qq upgrade && apt-get clean' \
        >>"$_db_log" 2>&1; then
        tail -20 "$_db_log" >&2
        die "apt-get upgrade in the new chroot failed (log: $_db_log)"
    fi
    say "debootstrap $_db_arch took $(($(date +%s) - _db_started)) s"
    rm -f "$_db_log"
}

# in_chroot ROOT CMD...: run a command in the chroot, in private mount and PID
# namespaces: /proc, /sys, /dev and /tmp are mounted for it and vanish with it, and so
# does any process it leaves behind. The host's network is shared (apt and pip need it).
in_chroot() {
    _ic_root=$1
    shift
    cp /etc/resolv.conf "$_ic_root/etc/resolv.conf" 2>/dev/null || true
    unshare --mount --pid --fork --propagation private -- sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount -t sysfs -o ro sysfs "$root/sys"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
        # Not exec: the command must not be PID 1 (the agent takes a parent of PID 1 to
        # mean its supervisor died), and this shell reaps whatever it orphans.
        chroot "$root" /usr/bin/env -i \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
            ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
            ${no_proxy:+no_proxy=$no_proxy} \
            ${LATTICE_EDGE_DEB_PIP_INDEX_URL:+PIP_INDEX_URL=$LATTICE_EDGE_DEB_PIP_INDEX_URL} \
            "$@"' sh "$_ic_root" "$@"
}

# with_lock NAME CMD...: serialise work on one cache entry.
with_lock() {
    _wl_name=$1
    shift
    mkdir -p "$DEB_CACHE"
    (
        flock 9
        "$@"
    ) 9>"$DEB_CACHE/$_wl_name.lock"
}

# build_chroot ARCH: the persistent build chroot, printed on stdout; rebuilt when its
# package list changes.
build_chroot() {
    _bc_dir=$DEB_CACHE/build-$1
    eval "_bc_extra=\${BUILD_PACKAGES_$1:-}"
    _bc_wanted="$BUILD_PACKAGES $_bc_extra"
    if [ "$(cat "$_bc_dir/.lattice-edge-packages" 2>/dev/null)" != "$_bc_wanted" ]; then
        debootstrap_into "$1" "$_bc_dir.new" "$_bc_wanted"
        echo "$_bc_wanted" >"$_bc_dir.new/.lattice-edge-packages"
        rm -rf "$_bc_dir"
        mv "$_bc_dir.new" "$_bc_dir"
    fi
    echo "$_bc_dir"
}

# test_base ARCH: the test base tarball (minbase + systemd), printed on stdout.
test_base() {
    _tb_tarball=$DEB_CACHE/test-base-$1.tar
    if [ ! -f "$_tb_tarball" ]; then
        _tb_dir=$DEB_CACHE/test-base-$1.new
        debootstrap_into "$1" "$_tb_dir" "$TEST_PACKAGES"
        tar -C "$_tb_dir" -cf "$_tb_tarball.new" .
        mv "$_tb_tarball.new" "$_tb_tarball"
        rm -rf "$_tb_dir"
    fi
    echo "$_tb_tarball"
}
