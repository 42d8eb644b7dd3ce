#!/bin/bash
#:
#: name = "illumos"
#: variety = "basic"
#: target = "ubuntu-22.04"
#: rust_toolchain = "stable"
#:
#
# The illumos build: everything in the workspace that can be built for
# x86_64-unknown-illumos here (the `ddm-dataplane` crate with its `illumos`
# feature, the protocol floor `ddm-proto`, and `ddm-types`), type-checked with clippy's lints as errors,
# then built in release mode for that target. It is a cross build from
# Linux: the rest of the workspace depends on dropshot, whose TLS backend
# compiles C for the target, which needs an illumos C toolchain. Nothing is
# run and nothing is published (the crate is a library).
#
# A CI job: when the target cannot be installed with rustup it fails (run
# with CI=true; on a developer machine the script alone prints a SKIP line
# and succeeds, see scripts/check-illumos-dataplane.sh).

set -euo pipefail
export CI=true

cd "$(dirname "$0")/../.."

rustc --version
cargo --version
scripts/check-illumos-dataplane.sh --release
