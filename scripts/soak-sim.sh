#!/usr/bin/env bash
# The simulation's soak (issue 11): seeded fault schedules on the rack and
# on two racks (test-harness/tests/sim_faults.rs), seeds FIRST..LAST
# (default 1..200), until one fails. A failure prints its seed, the step
# and the first violated invariant; `DDM_SIM_SEED=N cargo test -p
# ddm-test-harness --test sim_faults seeded_faults` replays it exactly.
# Usage: scripts/soak-sim.sh [FIRST [LAST]]
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
last=${2:-200}
cargo test -q -p ddm-test-harness --test sim_faults --no-run >&2
for s in $(seq "$first" "$last"); do
    if ! out=$(DDM_SIM_SEED=$s cargo test -q -p ddm-test-harness \
        --test sim_faults seeded_faults 2>&1); then
        printf '%s\n' "$out" >&2
        echo "soak-sim: seed $s failed" >&2
        exit 1
    fi
done
echo "soak-sim: seeds $first to $last kept every invariant"
