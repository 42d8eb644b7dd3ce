#!/usr/bin/env bash
# Write ddmd/text-order.txt, the order in which release ddmd's functions
# are linked (ddmd/build.rs): the functions release daemons ran, in the
# groups scripts/text-order.py describes, from callgrind profiles of
#   * the fabric benchmark's three daemons (scripts/bench-fabric.py at 2,000
#     prefixes: discovery, exchange, the RIB, netlink, the admin API), and
#   * an admin-only daemon starting, then answering each ddmadm query and
#     change once.
# ddmd is built by scripts/build-release.sh, whose symbols the file names.
# Run as root (namespaces),
# after a change that moves much code; about a minute after the builds.
# Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "text-order: needs valgrind" >&2; exit 1; }
scripts/build-release.sh --bench >&2
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cg() { echo "valgrind --tool=callgrind --demangle=no --callgrind-out-file=$work/$1.out"; }
WRAP="s1:$(cg s1);t1:$(cg t1);s2:$(cg s2)" REPEAT=1 SIZES=2000 RUNS=2 \
    FAIL_RUNS=1 python3 scripts/bench-fabric.py > "$work/bench.log" 2>&1 &
pids=($!)
if ! wait "${pids[0]}"; then
    tail -20 "$work/bench.log" >&2
    echo "text-order: the benchmark failed" >&2
    exit 1
fi
mkdir "$work/admin"
$(cg admin) target/release/ddmd --no-state-machine --admin-addr ::1 \
    --admin-port 0 --admin-port-file "$work/admin/port" \
    --data-dir "$work/admin" --hostname order > "$work/admin/log" 2>&1 &
pids=($!)
for _ in $(seq 300); do [ -s "$work/admin/port" ] && break; sleep 0.1; done
[ -s "$work/admin/port" ] || { cat "$work/admin/log" >&2; exit 1; }
port=$(sed 's/.*://' "$work/admin/port")
# What ran until now is startup ($work/admin.out.1); what follows, calls.
sleep 0.5
callgrind_control -d "${pids[0]}" > /dev/null 2>&1
adm() { target/release/ddmadm --port "$port" "$@" > /dev/null; }
for q in get-peers get-prefixes get-originated tunnel-imported \
    tunnel-originated fabric-dot sync; do
    adm "$q"
done
adm advertise-prefixes fd00:70::/64
adm withdraw-prefixes fd00:70::/64
kill -TERM "${pids[0]}"
wait "${pids[0]}" || true
pids=()
python3 scripts/text-order.py "$PWD/target/release/ddmd" \
    --first "$work/admin.out" --then "$work"/s1.out "$work"/t1.out \
    "$work"/s2.out --startup "$work/admin.out.1" > ddmd/text-order.txt
echo "text-order: wrote ddmd/text-order.txt ($(wc -l < ddmd/text-order.txt) functions)" >&2
