#!/usr/bin/env bash
# End-to-end ingest benchmark: starts a release `weir serve` (redactor in the chain) on a
# fresh data dir and a free port, drives it with `weir bench` from the same machine, then
# reports the bench's JSON line plus the server's processing progress.
#
# Usage: scripts/bench-e2e.sh [SECONDS] [CONCURRENCY] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
secs="${1:-20}"; conc="${2:-8}"; batch="${3:-1000}"
cargo build --release --bin weir >&2
bin="$CARGO_TARGET_DIR/release/weir"
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/weir.toml" <<TOML
[tenants.bench]
tokens = ["bench-token"]
[tenants.bench.streams.app]
plugins = [{ plugin = "builtin:pii-redact" }]
TOML
"$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^weir: http listening on //p' "$dir/out")
"$bin" bench --url "http://$addr" --token bench-token --stream app \
  --seconds "$secs" --concurrency "$conc" --batch "$batch" --keys 8
# How far processing got when the load stopped, and how long it takes to catch up.
q() { curl -s -H 'Authorization: Bearer bench-token' "http://$addr/api/v1/query" -d "{\"sql\":\"$1\"}"; }
echo "rows queryable right after the load: $(q 'SELECT count(*) FROM logs')"
start=$(date +%s.%N)
while curl -s "http://$addr/metrics" | grep '^weir_log_lag_bytes' | grep -vq ' 0$'; do sleep 0.2; done
echo "caught up $(echo "$(date +%s.%N) - $start" | bc) s after the load; rows: $(q 'SELECT count(*) FROM logs')"
