#!/usr/bin/env bash
# Build release ddmd and ddmadm as the demo, the benchmarks and
# scripts/text-order.sh run them: `-p ddmd -p ddmadm` together. Symbol
# names carry hashes of the features each dependency was built with,
# which follow the set of packages built together, and ddmd/text-order.txt
# names the symbols of this build (ddmd/build.rs). With --bench, the
# fabric benchmark's route monitor too, in a second command so that ddmd
# stays as built here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ddmd -p ddmadm
if [ "${1:-}" = --bench ]; then
    cargo build --release -p ddm-test-harness --bins --example bench_fabric
fi
