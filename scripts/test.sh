#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate, plugin tests natively and in Wasm,
# and the end-to-end tests that start the real `weir` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
./scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
