#!/bin/bash
#:
#: name = "linux"
#: variety = "basic"
#: target = "ubuntu-22.04"
#: rust_toolchain = "stable"
#: output_rules = [
#:   "/out/*",
#: ]
#:
#
# Release builds of ddmd and ddmadm for Linux, twice: with the default
# features (the netlink dataplane) and with --no-default-features. Each
# binary is published with its SHA-256:
#
#   ddmd                             ddmd.sha256.txt
#   ddmadm                           ddmadm.sha256.txt
#   ddmd-no-default-features         ddmd-no-default-features.sha256.txt
#   ddmadm-no-default-features       ddmadm-no-default-features.sha256.txt
#
# Under buildomat the files go to /out; elsewhere to out/ at the top of the
# repository (OUT_DIR overrides both).

set -euo pipefail

cd "$(dirname "$0")/../.."

if [[ -n "${BUILDOMAT_JOB_ID:-}" ]]; then
	out_dir="${OUT_DIR:-/out}"
else
	out_dir="${OUT_DIR:-$PWD/out}"
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bins=(ddmd ddmadm)

rustc --version
cargo --version
rm -rf "$out_dir"
mkdir -p "$out_dir"

# build SUFFIX [CARGO FLAGS...]: build the release binaries and copy each to
# $out_dir/<name><SUFFIX> with its checksum beside it.
build() {
	local suffix="$1"
	shift
	echo "==> cargo build --release ${*:-(default features)}"
	cargo build --release --locked -p ddmd -p ddmadm "$@"
	local bin name
	for bin in "${bins[@]}"; do
		name="$bin$suffix"
		cp "$target_dir/release/$bin" "$out_dir/$name"
		(cd "$out_dir" && sha256sum "$name" >"$name.sha256.txt")
	done
}

# Both builds share one target directory; each copies its binaries out
# before the next one overwrites them.
build ""
build "-no-default-features" --no-default-features

echo "==> artifacts in $out_dir"
(cd "$out_dir" && ls -l && sha256sum -c ./*.sha256.txt)
