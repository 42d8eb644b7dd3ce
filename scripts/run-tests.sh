#!/usr/bin/env bash
# Runs exactly the README's test command and, as root (or in CI), checks
# that every network-namespace test really ran. Installs the tools the
# namespace suites need first when it can (root with apt-get). Used by
# .ci/run and buildomat/jobs/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> installing test dependencies"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # iproute2: ip netns / veth for the namespace suites; iputils-ping: ping
    # across the fabric; procps: sysctl inside namespaces. (iproute2 also
    # brings ss, which the one-sided reset test reads socket queues with.)
    apt-get install -y -qq --no-install-recommends \
        iproute2 iputils-ping procps ca-certificates >/dev/null
fi
for tool in ip ping sysctl ss; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

# Namespace tests skip loudly when they cannot run; here they must run.
ran_file="$(mktemp)"
trap 'rm -f "$ran_file"' EXIT
export DDM_NETNS_RAN_FILE="$ran_file"
if [ "$(id -u)" -eq 0 ]; then
    export DDM_REQUIRE_NETNS=1
fi

echo "==> tests (the README's test command)"
test_cmd="$(sed -n 's/^    \(cargo build --workspace --bins && cargo test --workspace\)$/\1/p' README.md | head -n1)"
[ -n "$test_cmd" ] || { echo "README has no test command" >&2; exit 1; }
echo "+ $test_cmd"
bash -c "$test_cmd"

# Every test that goes through the gate names itself there (directly, or
# through ddm-actors' `testns::run`); all of them must have run (counted
# from the sources, not guessed). Comments, such as doc examples, are not
# tests that run.
expected="$(find ddm-actors dataplane types ddmd ddmadm test-harness \
        admin-api admin-client \
        -name '*.rs' -exec sed -E '/^[[:space:]]*\/\//d' {} + |
    perl -0777 -ne 'print "$1\n" while /(?:require_netns|testns::run)\(\s*"([^"]+)"/g' |
    sort -u)"
ran="$(sort -u "$ran_file")"
echo "==> namespace tests that ran: $(echo "$ran" | grep -c . || true) of $(echo "$expected" | grep -c .)"
if [ "${CI:-}" = "true" ] || [ "$(id -u)" -eq 0 ]; then
    missing="$(comm -23 <(echo "$expected") <(echo "$ran"))"
    if [ -n "$missing" ]; then
        echo "namespace tests that did not run:" >&2
        echo "$missing" >&2
        exit 1
    fi
fi
