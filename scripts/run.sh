#!/usr/bin/env bash
# Builds the release binary and runs `weir serve` on embedded defaults (loopback,
# data under ./weir-data). Extra arguments go to `weir serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
./scripts/setup.sh
cargo build --release --bin weir
exec "$CARGO_TARGET_DIR/release/weir" serve "$@"
