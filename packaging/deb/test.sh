#!/bin/sh
# Test a built package in a fresh Debian bookworm chroot of its architecture.
#
#   sudo packaging/deb/test.sh [--no-boot] [--bench N] [--keep] DEB
#
#  1. install: apt installs DEB (and what it depends on) into a fresh minbase+systemd
#     chroot; the service user, group and data directory exist; bytecode was compiled.
#  2. use: --version, 'init' as root (keys end up owned by the service user), 'demo',
#     the man page and the bash completion.
#  3. the unit: 'systemd-analyze verify' is silent and 'systemd-analyze security
#     --offline' scores it at most 2.0.
#  4. boot (unless --no-boot, or systemd-nspawn cannot run here): the chroot boots with
#     systemd-nspawn -b; the service is "active (running)"; a probe run inside the unit
#     checks its sandbox; watchdog pings arrive and it stays up past WatchdogSec; an actor
#     started over the lattice runs in a sandbox worker; after kill -9 it is restarted
#     with the actor restored; it stops cleanly. --bench N: start-to-ready, N times,
#     against the same agent in an unconfined transient unit.
#  5. upgrade to N+1 (DEB repacked with a higher version) keeps keys, config and the
#     desired actors; 'remove' stops the service and keeps config and data; 'purge'
#     deletes them and the user.
# Exit status 0 when everything passed, 77 when this machine cannot run DEB's
# architecture, 1 otherwise. --keep leaves the chroot for inspection.
set -eu
PROG=test.sh
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

usage() { sed -n '2,24s/^# \{0,1\}//p' "$0"; }

boot=yes bench=0 keep=no deb=
while [ $# -gt 0 ]; do
    case $1 in
        --no-boot) boot=no; shift ;;
        --bench) bench=${2:?--bench needs a count}; shift 2 ;;
        --keep) keep=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option '$1'" ;;
        *) deb=$1; shift ;;
    esac
done
[ -n "$deb" ] || { usage >&2; exit 2; }
[ -f "$deb" ] || die "no such package: $deb"
need_root
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
arch=$(dpkg-deb -f "$deb" Architecture)
version=$(dpkg-deb -f "$deb" Version)
check_arch "$arch"
if [ "$arch" != "$(host_arch)" ]; then
    setup_foreign_arch "$arch" || { say "cannot run $arch binaries on this machine"; exit 77; }
fi

started=$(date +%s)
ok() { say "ok: $*"; }
fail() {
    say "FAIL: $*"
    exit 1
}
# check DESCRIPTION CMD...: run CMD, fail the test when it fails.
check() {
    _ck_what=$1
    shift
    if "$@"; then ok "$_ck_what"; else fail "$_ck_what"; fi
}

root=$(mktemp -d /var/tmp/lattice-edge-test-$arch.XXXXXX)
machine=lattice-edge-test-$$
nspawn_pid=
cleanup() {
    [ -n "$nspawn_pid" ] && stop_container
    if [ "$keep" = yes ]; then say "chroot kept in $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

tarball=$(with_lock "test-base-$arch" test_base "$arch")
tar -C "$root" -xf "$tarball"
# The cache's policy-rc.d kept daemons down while it was made; maintainer scripts must
# be free to stop and start the service here.
rm -f "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/root/"
base=$(basename "$deb")
run() { in_chroot "$root" "$@"; }
py=/usr/lib/lattice-edge/bin/python3

# --- 1. install ------------------------------------------------------------------------
say "installing $base into a fresh $DEB_SUITE/$arch chroot"
run sh -c "apt-get update -qq && apt-get install -y -qq /root/$base" >"$root/install.log" 2>&1 \
    || { tail -30 "$root/install.log" >&2; fail "apt-get install ./$base"; }
ok "apt-get install ./$base (dependencies from $DEB_SUITE)"
check "dpkg says installed" run sh -c "dpkg-query -W -f '\${Status}' lattice-edge | grep -qx 'install ok installed'"
check "system user and group lattice-edge" run sh -c \
    'getent passwd lattice-edge | grep -q ":/nonexistent:/usr/sbin/nologin$" && getent group lattice-edge >/dev/null'
check "/var/lib/lattice-edge is lattice-edge:lattice-edge 0750" run sh -c \
    '[ "$(stat -c "%U:%G %a" /var/lib/lattice-edge)" = "lattice-edge:lattice-edge 750" ]'
check "postinst compiled the bytecode" run sh -c \
    'ls /usr/lib/lattice-edge/lib/python3.11/site-packages/agent/__pycache__/*.pyc >/dev/null'
installed_kib=$(run du -sk --apparent-size /usr/lib/lattice-edge | cut -f1)

# --- 2. use ----------------------------------------------------------------------------
check "lattice-edge --version prints $version" run sh -c \
    "lattice-edge --version | grep -q -- '$version'"
demo_issuer=$(run $py -c 'from agent.runtime.demo import DEMO_ISSUER; print(DEMO_ISSUER)')
host_id=$(run lattice-edge init --name deb-test --trust-issuer "$demo_issuer" 2>"$root/init.log") \
    || { cat "$root/init.log" >&2; fail "lattice-edge init as root"; }
case $host_id in N*) ok "init as root: host $host_id" ;; *) fail "init printed '$host_id'" ;; esac
check "init filled the packaged config" run sh -c \
    'grep -q "^name = \"deb-test\"" /etc/lattice-edge/agent.toml && grep -q "^data_dir = \"/var/lib/lattice-edge\"" /etc/lattice-edge/agent.toml'
check "the keys belong to the service user, mode 0600" run sh -c \
    '[ "$(stat -c "%U %a" /var/lib/lattice-edge/keys/host.nk /var/lib/lattice-edge/keys/cluster.nk | sort -u)" = "lattice-edge 600" ]'
run lattice-edge demo >"$root/demo.log" 2>&1 || { cat "$root/demo.log" >&2; fail "lattice-edge demo"; }
check "lattice-edge demo (tour, all answers correct, stopped cleanly)" \
    sh -c "grep -q 'all answers correct' '$root/demo.log' && grep -q 'host stopped cleanly' '$root/demo.log'"
check "man page lattice-edge(1) covers every command" run sh -c \
    'zcat /usr/share/man/man1/lattice-edge.1.gz | grep -q "^\.SS actor start" && zcat /usr/share/man/man1/lattice-edge.1.gz | grep -q "^\.SS init"'
check "bash completion completes 'lattice-edge pro' to profiles" run bash -c \
    '. /usr/share/bash-completion/completions/lattice-edge
     COMP_WORDS=(lattice-edge pro); COMP_CWORD=1; _lattice_edge_completion lattice-edge pro lattice-edge
     [ "${COMPREPLY[*]}" = "profiles" ]'

# --- 3. the unit -----------------------------------------------------------------------
unit=/lib/systemd/system/lattice-edge.service
verify=$(run systemd-analyze verify --man=no "$unit" 2>&1) || true
[ -z "$verify" ] || { echo "$verify" >&2; fail "systemd-analyze verify reported problems"; }
ok "systemd-analyze verify: no complaints"
run systemd-analyze security --offline=yes --no-pager "$unit" >"$root/security.txt" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for lattice-edge.service: \([0-9.]*\).*/\1/p' "$root/security.txt")
[ -n "$score" ] || { cat "$root/security.txt" >&2; fail "no exposure score from systemd-analyze"; }
if awk "BEGIN { exit !($score <= 2.0) }"; then
    ok "systemd-analyze security --offline: exposure $score (goal <= 2.0)"
else
    grep '✗' "$root/security.txt" >&2 || true
    fail "exposure $score is above 2.0"
fi
echo "{\"figure\": \"unit_exposure\", \"arch\": \"$arch\", \"value\": $score}"

# --- 4. boot ---------------------------------------------------------------------------
nspawn_possible() {
    host_install systemd-container >/dev/null 2>&1 || return 1
    command -v systemd-nspawn >/dev/null && command -v nsenter >/dev/null
}

# Inside the booted container, as root, with a clean environment.
ns() {
    nsenter --target "$leader" --all -- /usr/bin/env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= "$@"
}
prop() { ns systemctl show -p "$1" --value lattice-edge; }

start_container() {
    # nspawn wants /run/systemd/nspawn on a tmpfs; a private mount namespace gives it one
    # without touching the host. No host systemd is needed (--register=no --keep-unit).
    # A unified cgroup hierarchy and the bpf() call let the container's systemd enforce
    # DevicePolicy= (a cgroup BPF program), as it does on a Pi running bookworm.
    mkdir -p /run/systemd/nspawn
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=${LATTICE_EDGE_NSPAWN_UNIFIED:-1} \
        unshare --mount --propagation private -- sh -c '
        mount -t tmpfs tmpfs /run/systemd/nspawn
        exec systemd-nspawn --quiet -D "$1" -M "$2" -b --console=passive \
            --register=no --keep-unit --private-network --system-call-filter=bpf' \
        sh "$root" "$machine" \
        </dev/null >"$root/boot.log" 2>&1 &
    nspawn_pid=$!
    leader=
    for _ in $(seq 1 120); do
        nspawn=$(pgrep -P "$nspawn_pid" -x systemd-nspawn || true)
        leader=$(pgrep -P "${nspawn:-$nspawn_pid}" -x systemd 2>/dev/null || true)
        [ -n "$leader" ] && break
        sleep 0.5
    done
    [ -n "$leader" ] || { cat "$root/boot.log" >&2; fail "the container did not start"; }
    state=$(timeout 600 nsenter --target "$leader" --all -- /usr/bin/env -i \
        PATH=/usr/bin:/bin systemctl is-system-running --wait 2>/dev/null || true)
    ok "booted with systemd-nspawn -b (system state: ${state:-unknown})"
}

stop_container() {
    ns systemctl poweroff >/dev/null 2>&1 || kill "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
    _wf_limit=$1 _wf_what=$2
    shift 2
    _wf_end=$(($(date +%s) + _wf_limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$_wf_end" ] || fail "$_wf_what (waited $_wf_limit s)"
        sleep 1
    done
    ok "$_wf_what"
}
is_active() { [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; }
lattice() { ns lattice-edge "$@"; }
actor_running() { lattice actor list --json | grep -q "\"$1\""; }
journal() { ns journalctl -u lattice-edge -o cat --no-pager; }

# Start-to-ready in seconds of a unit that just started: InactiveExit -> ActiveEnter.
ready_seconds() {
    _rs_from=$(ns systemctl show -p InactiveExitTimestampMonotonic --value "$1")
    _rs_to=$(ns systemctl show -p ActiveEnterTimestampMonotonic --value "$1")
    awk "BEGIN { printf \"%.3f\", ($_rs_to - $_rs_from) / 1e6 }"
}

run_bench() {
    say "start-to-ready under systemd, $bench runs each, alternating"
    hardened= bare=
    for _ in $(seq 1 "$bench"); do
        ns systemctl restart lattice-edge
        hardened="$hardened $(ready_seconds lattice-edge)"
        ns systemctl stop lattice-edge
        # The same agent, user and config with none of the unit's sandboxing.
        ns systemd-run --quiet --unit=lattice-edge-bare -p Type=notify -p NotifyAccess=main \
            -p User=lattice-edge -p Group=lattice-edge -p TimeoutStartSec=300 \
            /usr/bin/lattice-edge run --config /etc/lattice-edge/agent.toml
        bare="$bare $(ready_seconds lattice-edge-bare)"
        ns systemctl stop lattice-edge-bare
    done
    ns systemctl start lattice-edge
    median() { echo "$@" | tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    m_hard=$(median $hardened) m_bare=$(median $bare)
    echo "{\"figure\": \"systemd_start_to_ready_s\", \"arch\": \"$arch\", \"unit\": \"lattice-edge.service\", \"median\": $m_hard, \"runs\": [$(echo $hardened | tr ' ' ,)]}"
    echo "{\"figure\": \"systemd_start_to_ready_s\", \"arch\": \"$arch\", \"unit\": \"transient, unconfined\", \"median\": $m_bare, \"runs\": [$(echo $bare | tr ' ' ,)]}"
    echo "{\"figure\": \"systemd_start_to_ready_ratio\", \"arch\": \"$arch\", \"value\": $(awk "BEGIN { printf \"%.2f\", $m_hard / $m_bare }")}"
}

fingerprint() { # what an upgrade and 'remove' must keep
    run sh -c 'cd / && md5sum etc/lattice-edge/agent.toml var/lib/lattice-edge/keys/host.nk \
        var/lib/lattice-edge/keys/cluster.nk && grep -o "\"actor_ref\": *\"[^\"]*\"" var/lib/lattice-edge/state.json'
}

# N+1: the same package with a higher version, so dpkg runs the upgrade path.
next_deb() {
    _nd_dir=$root/next
    rm -rf "$_nd_dir"
    mkdir -p "$_nd_dir"
    dpkg-deb -R "$deb" "$_nd_dir/pkg"
    sed -i "s/^Version: .*/Version: $version+upgradetest1/" "$_nd_dir/pkg/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip --build "$_nd_dir/pkg" "$root/root/next.deb" >/dev/null
    rm -rf "$_nd_dir"
}

if [ "$boot" = yes ] && ! nspawn_possible; then
    say "boot checks skipped: systemd-nspawn is not available here"
    boot=no
fi

next_deb
if [ "$boot" = yes ]; then
    # The probe runs as an extra ExecStartPost= in the unit's own sandbox.
    install -D -m 0644 "$here/sandbox_probe.py" "$root/usr/local/lib/lattice-edge-test/sandbox_probe.py"
    dropins=$root/etc/systemd/system/lattice-edge.service.d
    mkdir -p "$dropins"
    probe_args=
    if [ "$arch" != "$(host_arch)" ]; then
        # qemu-user cannot set up an IPC or user namespace for a service (EIO, EINVAL at
        # step NAMESPACE/USER), and does not apply seccomp filters. On real $arch hardware
        # neither limit exists; here the unit runs without those two and the probe does
        # not expect what only seccomp enforces. The score above is the shipped unit's.
        printf '[Service]\nPrivateIPC=no\nPrivateUsers=no\n' >"$dropins/90-qemu-user.conf"
        probe_args=" --emulated"
        say "note: emulated $arch: PrivateIPC= and PrivateUsers= off and seccomp not enforced in the boot test (qemu-user limits)"
    fi
    printf '[Service]\nExecStartPost=%s /usr/local/lib/lattice-edge-test/sandbox_probe.py%s\n' \
        "$py" "$probe_args" >"$dropins/50-sandbox-probe.conf"
    start_container
    wait_for 300 "the service started at boot and is active (running)" is_active
    check "systemctl status says active (running)" sh -c \
        "nsenter --target $leader --all -- systemctl status --no-pager lattice-edge 2>&1 | grep -q 'Active: active (running)'"
    leaf=$(journal | sed -n 's/.*lattice_edge.leaf: nats-server \([0-9.]*\) ready.*/\1/p' | tail -1)
    [ -n "$leaf" ] || { journal | tail -20 >&2; fail "no 'nats-server ... ready' in the journal"; }
    ok "the agent supervises its own nats-server $leaf"
    if [ "$(dpkg-deb -f "$deb" Depends | grep -c 'nats-server')" = 1 ]; then
        [ "$leaf" = "$(ns dpkg-query -W -f '${Version}' nats-server | cut -d- -f1)" ] \
            || fail "the leaf is not Debian's nats-server"
        [ "$(ns systemctl is-enabled nats-server 2>/dev/null || true)" = disabled ] \
            && [ "$(ns systemctl is-active nats-server 2>/dev/null || true)" = inactive ] \
            || fail "Debian's standalone nats-server.service was left enabled"
        ok "Debian's nats-server is the leaf; its standalone service is disabled"
    fi

    # Serial nodes (root:dialout 0660), one serial node and one console the service's
    # groups do not open, and a block device only the device policy can refuse.
    ns sh -c 'set -e
        node() { rm -f "$1"; mknod -m "$2" "$1" "$3" "$4" "$5"; chgrp "$6" "$1"; }
        node /dev/ttyUSB0 0660 c 188 0 dialout
        node /dev/ttyACM0 0660 c 166 0 dialout
        node /dev/ttyAMA0 0660 c 204 64 dialout
        node /dev/ttyS0 0660 c 4 64 dialout
        node /dev/lattice-edge-probe-ttyS1 0660 c 4 65 root
        node /dev/lattice-edge-probe-tty1 0620 c 4 1 tty
        node /dev/lattice-edge-probe-block 0666 b 7 0 root'
    ns systemctl restart lattice-edge
    wait_for 300 "restarted with the probe's device nodes" is_active
    probe=$(journal | sed -n 's/^lattice-edge-sandbox-probe: //p' | tail -1)
    [ -n "$probe" ] || { journal | tail -30 >&2; fail "the sandbox probe printed nothing"; }
    echo "$probe"
    violations=$(echo "$probe" | ns $py -c 'import json, sys; print("\n".join(json.load(sys.stdin)["violations"]))')
    [ -z "$violations" ] || { echo "$violations" >&2; fail "the unit's sandbox is not what it promises"; }
    if [ -n "$probe_args" ]; then
        ok "sandbox probe inside the unit (emulated): non-root, no capabilities, read-only /etc and /usr, no homes, serial ports reachable through dialout, workers can start"
    else
        ok "sandbox probe inside the unit: non-root, no capabilities, seccomp, read-only /etc and /usr, no homes, serial ports reachable through dialout, no W+X memory, workers can start"
    fi
    case $probe in
        *'"block_device": "EPERM"'*) ok "DevicePolicy=closed enforced: a 0666 block device is refused" ;;
        *) say "note: DevicePolicy= is not enforced in this container (cgroup v1 or emulated), so not tested" ;;
    esac
    rm -f "$dropins/50-sandbox-probe.conf"
    ns systemctl daemon-reload
    ns systemctl restart lattice-edge
    wait_for 300 "running the shipped unit alone again" is_active

    [ "$(prop WatchdogUSec)" = 30s ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
    first_ping=$(prop WatchdogTimestampMonotonic)
    wait_for 60 "watchdog pings arrive (WatchdogSec=30s)" \
        sh -c "[ \"\$(nsenter --target $leader --all -- systemctl show -p WatchdogTimestampMonotonic --value lattice-edge)\" != '$first_ping' ]"
    ns cp /usr/lib/lattice-edge/lib/python3.11/site-packages/agent/runtime/demo/echo.wasm /var/lib/lattice-edge/echo.wasm
    ns chown lattice-edge:lattice-edge /var/lib/lattice-edge/echo.wasm
    actor=$(lattice actor start file:///var/lib/lattice-edge/echo.wasm 2>"$root/actor.log" | tail -1) \
        || { cat "$root/actor.log" >&2; fail "actor start over the lattice"; }
    actor_key=$(echo "$actor" | grep -o 'M[A-Z2-7]\{55\}' | head -1)
    [ -n "$actor_key" ] || fail "actor start printed '$actor'"
    reply=$(lattice actor invoke "$actor_key" Greet deb-test 2>&1) || fail "actor invoke: $reply"
    case $reply in *deb-test*) ok "the demo actor runs in a sandbox worker under the unit: $reply" ;;
        *) fail "actor invoke answered '$reply'" ;; esac
    # The firmware bridge's libraries (pyserial, cbor2, imgtool) load inside the sandbox
    # (seccomp, no W+X memory): a UDP device with no MCU behind it is listed by the bridge.
    ns sh -c 'printf "\n[[firmware.devices]]\nname = \"probe-mcu\"\ntransport = \"udp\"\naddress = \"127.0.0.1:1337\"\n" >>/etc/lattice-edge/agent.toml'
    ns systemctl restart lattice-edge
    wait_for 300 "restarted with a firmware device configured" is_active
    firmware_listed() { lattice firmware list --json >"$root/firmware.json" 2>&1 && grep -q '"probe-mcu"' "$root/firmware.json"; }
    firmware_listed || sleep 5
    firmware_listed || { cat "$root/firmware.json" >&2; journal | tail -30 >&2; fail "the firmware bridge does not list its device"; }
    ok "the firmware bridge runs under the unit and lists its device"
    wait_for 60 "the demo actor is back after the restart" actor_running "$actor_key"
    # The documented way to use the CLI without sudo: be in the group lattice-edge.
    ns useradd --no-create-home --shell /bin/sh --groups lattice-edge edgeops
    ns useradd --no-create-home --shell /bin/sh stranger
    as_user() { ns runuser -u "$1" -- lattice-edge status --config /etc/lattice-edge/agent.toml --json; }
    as_user edgeops | ns $py -c 'import json, sys; assert json.load(sys.stdin)["agent"]["up"]' \
        || fail "a member of the group lattice-edge cannot see the running agent"
    visitor=0
    as_user stranger >/dev/null 2>&1 || visitor=$?
    [ "$visitor" = 3 ] || fail "a user outside the group got status exit $visitor, not 3 (agent hidden)"
    ok "lattice-edge status: a member of group lattice-edge sees the agent up; another user does not"
    sleep 35
    [ "$(prop NRestarts)" = 0 ] || fail "the service restarted $(prop NRestarts) times while idle"
    is_active || fail "the service is no longer running"
    ok "up past WatchdogSec with no restarts"

    old_pid=$(prop MainPID)
    ns sh -c "kill -9 $old_pid"
    wait_for 120 "restarted after kill -9 of the agent" \
        sh -c "[ \"\$(nsenter --target $leader --all -- systemctl show -p NRestarts --value lattice-edge)\" = 1 ]"
    wait_for 300 "active (running) again with a new main process" is_active
    [ "$(prop MainPID)" != "$old_pid" ] || fail "MainPID did not change"
    wait_for 60 "the actor is back from the desired state" actor_running "$actor_key"

    [ "$bench" -gt 0 ] && run_bench

    # --- 5. upgrade, remove, purge (with the service running) --------------------------
    before=$(fingerprint)
    pid_before=$(prop MainPID)
    ns dpkg -i /root/next.deb >"$root/upgrade.log" 2>&1 || { cat "$root/upgrade.log" >&2; fail "upgrade to $version+upgradetest1"; }
    [ "$(fingerprint)" = "$before" ] || fail "the upgrade changed keys, config or desired state"
    ok "upgrade $version -> $version+upgradetest1 kept keys, config and desired actors"
    wait_for 300 "the upgraded service is active (running)" is_active
    [ "$(prop MainPID)" != "$pid_before" ] || fail "the upgrade did not restart the service"
    ok "the upgrade stopped the old agent and started the new one"
    wait_for 60 "the actor runs again after the upgrade" actor_running "$actor_key"

    cursor=$(ns journalctl -u lattice-edge -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p')
    ns systemctl stop lattice-edge
    [ "$(prop Result)" = success ] || fail "stop: Result=$(prop Result)"
    [ "$(prop ExecMainStatus)" = 0 ] || fail "stop: exit status $(prop ExecMainStatus)"
    stop_log=$(ns journalctl -u lattice-edge --after-cursor="$cursor" -o cat --no-pager)
    case $stop_log in
        *"timed out"* | *"Killing process"* | *"Failed with result"*)
            echo "$stop_log" >&2
            fail "stop needed a kill" ;;
    esac
    echo "$stop_log" | grep -q "lattice_edge.host: stopped" || { echo "$stop_log" >&2; fail "the agent did not log its own orderly stop"; }
    ok "systemctl stop: the agent stopped in order, exit 0, nothing left to kill"
    ns systemctl start lattice-edge
    wait_for 300 "started again for 'remove'" is_active

    ns dpkg -r lattice-edge >"$root/remove.log" 2>&1 || { cat "$root/remove.log" >&2; fail "dpkg -r"; }
    [ "$(ns systemctl is-active lattice-edge 2>/dev/null || true)" != active ] || fail "remove left the service running"
    ok "remove stopped the service"
else
    say "boot checks skipped"
    run sh -c 'cp /usr/lib/lattice-edge/lib/python3.11/site-packages/agent/runtime/demo/echo.wasm /var/lib/lattice-edge/' 
    run sh -c 'printf "{\"version\": 1, \"actors\": [{\"actor_ref\": \"file:///var/lib/lattice-edge/echo.wasm\", \"count\": 1, \"annotations\": {}}], \"links\": []}" >/var/lib/lattice-edge/state.json'
    before=$(fingerprint)
    run dpkg -i /root/next.deb >"$root/upgrade.log" 2>&1 || { cat "$root/upgrade.log" >&2; fail "upgrade"; }
    [ "$(fingerprint)" = "$before" ] || fail "the upgrade changed keys, config or desired state"
    ok "upgrade $version -> $version+upgradetest1 kept keys, config and desired actors (no service)"
    run dpkg -r lattice-edge >"$root/remove.log" 2>&1 || { cat "$root/remove.log" >&2; fail "dpkg -r"; }
fi
in_root() { if [ "$boot" = yes ]; then ns "$@"; else run "$@"; fi; }
[ "$(in_root sh -c 'cd / && md5sum etc/lattice-edge/agent.toml var/lib/lattice-edge/keys/host.nk var/lib/lattice-edge/keys/cluster.nk')" \
    = "$(echo "$before" | grep -v actor_ref)" ] || fail "remove lost config or keys"
check "remove kept config, keys and the user; the code is gone" in_root sh -c \
    'dpkg-query -W -f "\${Status}" lattice-edge | grep -qx "deinstall ok config-files" && getent passwd lattice-edge >/dev/null && [ ! -e /usr/lib/lattice-edge ] && [ -f /var/lib/lattice-edge/state.json ]'
in_root dpkg --purge lattice-edge >"$root/purge.log" 2>&1 || { cat "$root/purge.log" >&2; fail "dpkg --purge"; }
check "purge deleted config, data, keys, the user and the group" in_root sh -c \
    '[ ! -e /etc/lattice-edge ] && [ ! -e /var/lib/lattice-edge ] && ! getent passwd lattice-edge && ! getent group lattice-edge && ! dpkg-query -W lattice-edge 2>/dev/null | grep -q .'
[ "$boot" = yes ] && stop_container

echo "{\"figure\": \"installed_size_kib\", \"arch\": \"$arch\", \"value\": $installed_kib}"
say "all checks passed for $base in $(($(date +%s) - started)) s"
