#!/usr/bin/env bash
# Figures of the simulated fabric (issue 11): for each topology, one line
# per event (cold-start, held: paths per destination and memory, idle: 10 s
# of virtual time after converging, crash-spine0 / crash-r0t0 / crash-t0):
#   topology=NAME event=E routers=N converge_wall_s=X converge_virtual_s=Y
#   peak_rss_mib=Z fabric_peak_rss_mib=P msgs_per_router=M
#   bytes_per_router=B datagrams_per_router=D snapshots=K check_wall_s=C
#   cpu_user_s=U cpu_sys_s=S page_faults=F invariants=ok (peak_rss_mib,
#   CPU and faults: the whole process over the event, the harness's
#   checks included; fabric_peak_rss_mib: the peak just before the
#   harness's last snapshot, i.e. without it)
# Usage: scripts/bench-sim.sh [TOPOLOGY...]   (default: rack racks-16 thousand)
# TOPOLOGY is rack, racks-N or thousand. PROFILE=sim (default: release
# optimisation without LTO, see Cargo.toml), release or dev.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-sim}
flag=(--profile "$profile")
topologies=("$@")
[ ${#topologies[@]} -eq 0 ] && topologies=(rack racks-16 thousand)
cargo test "${flag[@]}" -p ddm-test-harness --test sim_bench --no-run >&2
# A simulation allocates and frees gigabytes in bursts (every router's
# pushes are in flight in the same virtual instant): one arena, and freed
# memory kept for reuse instead of handed back and faulted in again. Page
# faults are most of the kernel time of a 1,024-router cold start (7-10 s
# of system time here); with these settings it took 15.5 and 16.4 s, with
# glibc's defaults 17.1 and 18.7 s (same build, runs alternated).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=67108864}
for t in "${topologies[@]}"; do
    # A failed run (a broken invariant, a fabric that does not converge)
    # prints all it said and stops the script.
    if ! out=$(DDM_SIM_TOPOLOGY=$t cargo test "${flag[@]}" -q \
        -p ddm-test-harness --test sim_bench -- --ignored --nocapture \
        --test-threads 1 2>&1); then
        printf '%s\n' "$out" >&2
        echo "bench-sim: $t failed" >&2
        exit 1
    fi
    printf '%s\n' "$out" | grep '^topology='
done
