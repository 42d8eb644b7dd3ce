#!/bin/bash
#:
#: name = "test"
#: variety = "basic"
#: target = "ubuntu-22.04"
#: rust_toolchain = "stable"
#:
#
# The Linux tests: the README's test command as root with
# DDM_REQUIRE_NETNS=1, so that the network-namespace suites run (a suite
# that cannot run fails instead of skipping), and a check that every
# namespace test ran (it runs .ci/run). Installs
# iproute2, iputils-ping and procps with apt-get.
#
# The namespace suites need root: run as a user, the job re-runs itself
# through `sudo -n` (keeping PATH, for cargo), or stops when it cannot.

set -euo pipefail

cd "$(dirname "$0")/../.."

if [[ "$(id -u)" -ne 0 ]]; then
	if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		exec sudo -n -E env "PATH=$PATH" "$0" "$@"
	fi
	echo "test.sh: the namespace suites need root (and sudo -n failed)" >&2
	exit 1
fi

rustc --version
cargo --version
export DDM_REQUIRE_NETNS=1
bash .ci/run
