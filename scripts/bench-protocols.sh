#!/usr/bin/env bash
# Ingest protocols side by side: the same sample records through Weir's NDJSON
# (/api/v1/logs), OTLP/HTTP protobuf (/v1/logs) and OTLP/gRPC (LogsService/Export), one
# after the other against one fresh `weir serve` (no plugins: the protocols' own cost),
# each round repeated so drift on this noisy machine shows. Prints one JSON line per run.
#
# Usage: scripts/bench-protocols.sh [SECONDS] [CONCURRENCY] [BATCH] [ROUNDS] [PROFILE]
# PROFILE is `release` (default; its own target dir, ~40 min cold) or `dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; conc="${2:-8}"; batch="${3:-1000}"; rounds="${4:-2}"; profile="${5:-release}"
if [ "$profile" = release ]; then
  export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
  cargo build --release --bin weir >&2
  bin="$CARGO_TARGET_DIR/release/weir"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
  cargo build --workspace --bins >&2
  bin="$CARGO_TARGET_DIR/debug/weir"
fi
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/weir.toml" <<TOML
[tenants.bench]
tokens = ["bench-token"]
[hot]
max_mb = 16384
TOML
"$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 \
  --grpc-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 600); do grep -q "grpc listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's/^weir: http listening on //p' "$dir/out")
grpc=$(sed -n 's/^weir: grpc listening on //p' "$dir/out")
for r in $(seq 1 "$rounds"); do
  for p in ndjson otlp-http otlp-grpc; do
    "$bin" bench --url "http://$http" --grpc-url "http://$grpc" --token bench-token \
      --stream "s-$p" --protocol "$p" --seconds "$secs" --concurrency "$conc" --batch "$batch" --keys 1
  done
done
