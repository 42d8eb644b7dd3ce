#!/usr/bin/env bash
# The fabric demo: a trio of DDM routers in network namespaces — two servers
# (s1, s2) and one transit (t1) — that discover each other, exchange prefixes,
# program the kernel and forward traffic. Everything is torn down on exit.
#
# Needs root (network namespaces), iproute2 and ping. Usage:
#     sudo scripts/fabric-demo.sh            # builds release binaries first
#     DDM_BIN=target/debug scripts/fabric-demo.sh   # use already-built ones
#     DDM_DEMO_HOLD=1 scripts/fabric-demo.sh   # keep the fabric up until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "fabric-demo: needs root (it creates network namespaces)" >&2
    exit 1
fi
for tool in ip ping; do
    command -v "$tool" >/dev/null || {
        echo "fabric-demo: $tool is missing (apt-get install iproute2 iputils-ping)" >&2
        exit 1
    }
done

bin="${DDM_BIN:-}"
if [ -z "$bin" ]; then
    scripts/build-release.sh
    bin=target/release
fi
tag="${DDM_DEMO_TAG:-ddmdemo$$}"
work="$(mktemp -d)"
nodes=(s1 t1 s2)
pids=()

# Each daemon is started by `ip netns exec` directly (no shell function or
# subshell in between), so the recorded pid is the daemon's own: `ip` execs
# it. SIGTERM lets each router remove its routes; whatever still runs in a
# namespace after a grace period is killed before the namespace goes.
cleanup() {
    set +e
    trap - EXIT INT TERM
    [ -n "${hold:-}" ] && kill "$hold" 2>/dev/null
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for n in "${nodes[@]}"; do
        if [ -e "/run/netns/$tag-$n" ]; then
            ip netns pids "$tag-$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
            ip netns del "$tag-$n" 2>/dev/null
        fi
    done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ns() { ip netns exec "$tag-$1" "${@:2}"; }
adm() {
    local node=$1; shift
    ns "$node" "$bin/ddmadm" -p "$(sed 's/.*://' "$work/$node/port")" "$@"
}

say "namespaces and links: s1 — t1 — s2"
for n in "${nodes[@]}"; do
    ip netns add "$tag-$n"
    ns "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 \
        net.ipv6.conf.default.accept_dad=0
    ip -n "$tag-$n" link set lo up
    mkdir -p "$work/$n"
done
ns t1 sysctl -qw net.ipv6.conf.all.forwarding=1
ip link add s1t1 netns "$tag-s1" type veth peer name t1s1 netns "$tag-t1"
ip link add s2t1 netns "$tag-s2" type veth peer name t1s2 netns "$tag-t1"
for pair in s1:s1t1 t1:t1s1 t1:t1s2 s2:s2t1; do
    ip -n "$tag-${pair%%:*}" link set "${pair##*:}" up
done
ip -n "$tag-s1" addr add fd00:1::1/64 dev lo
ip -n "$tag-s2" addr add fd00:2::1/64 dev lo

start() {
    local node=$1 kind=$2; shift 2
    local args=()
    for ifname in "$@"; do args+=(-a "$ifname"); done
    ip netns exec "$tag-$node" "$bin/ddmd" "${args[@]}" --kind "$kind" \
        --hostname "$node" --admin-port 0 \
        --admin-port-file "$work/$node/port" \
        --data-dir "$work/$node" >"$work/$node/ddmd.log" 2>&1 &
    pids+=($!)
}
say "starting the routers"
start s1 server s1t1
start t1 transit t1s1 t1s2
start s2 server s2t1
for n in "${nodes[@]}"; do
    for _ in $(seq 100); do [ -s "$work/$n/port" ] && break; sleep 0.1; done
    [ -s "$work/$n/port" ] || { echo "ddmd on $n did not start:"; cat "$work/$n/ddmd.log"; exit 1; }
    echo "$n: admin API on $(cat "$work/$n/port")"
done

say "waiting for peering"
for _ in $(seq 100); do
    adm t1 --json get-peers | grep -c '"Exchange"' | grep -qx 2 && break
    sleep 0.1
done
adm t1 get-peers

say "s1 advertises fd00:1::/64, s2 advertises fd00:2::/64"
adm s1 advertise-prefixes fd00:1::/64
adm s2 advertise-prefixes fd00:2::/64
for _ in $(seq 100); do
    ip -n "$tag-s1" -6 route show proto 221 | grep -q fd00:2:: &&
        ip -n "$tag-s2" -6 route show proto 221 | grep -q fd00:1:: && break
    sleep 0.05
done

for n in "${nodes[@]}"; do
    say "$n: prefixes learned"
    adm "$n" get-prefixes
    echo "-- kernel routes (proto 221):"
    ip -n "$tag-$n" -6 route show proto 221
done

say "ping fd00:2::1 from fd00:1::1 (s1 → t1 → s2)"
ns s1 ping -6 -c 3 -i 0.2 -I fd00:1::1 fd00:2::1

if [ -n "${DDM_DEMO_HOLD:-}" ]; then
    say "the fabric stays up (namespaces $tag-*); Ctrl-C tears it down"
    # `wait` on a background sleep returns as soon as a trapped signal
    # arrives (a foreground command would first have to finish).
    sleep infinity &
    hold=$!
    wait "$hold"
fi

say "done; tearing down"
