#!/usr/bin/env bash
# Aggregation benchmarks on a fresh release server (results in docs/BENCHMARKS.md):
#  1. throughput: the same `weir bench` load (8 connections, 1000-record batches) with
#     no aggregation, then with 1-minute windows by host and path computing count,
#     p50/p99 (DDSketch) and distinct users (HLL) plus a top-k; reports processed
#     rows/s of both runs and the checkpoint time the server measured;
#  2. window end -> queryable: a critical 1 s aggregation under a steady trickle of
#     events stamped with the current time; a poller notes when each window's row
#     first answers a query (scripts/window-latency.py), and reports p50/p99.
#
# Usage: scripts/bench-agg.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
secs="${1:-20}"
cargo build --release --bin weir >&2
bin="$CARGO_TARGET_DIR/release/weir"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=""

start() { # $1 = dir (with weir.toml)
  "$bin" serve --config "$1/weir.toml" --data-dir "$1/data" --http-addr 127.0.0.1:0 > "$1/out" 2> "$1/log" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "listening on" "$1/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/^weir: http listening on //p' "$1/out")
}

throughput() { # $1 = name, $2 = extra config
  local dir="$work/$1"
  mkdir -p "$dir"
  cat > "$dir/weir.toml" <<TOML
[tenants.t]
tokens = ["t-token"]
[hot]
max_mb = 16384
$2
TOML
  start "$dir"
  local t0 t1 rows
  t0=$(date +%s.%N)
  "$bin" bench --url "http://$addr" --token t-token --stream app \
    --seconds "$secs" --concurrency 8 --batch 1000 --keys 8 > "$dir/bench"
  while curl -s "http://$addr/metrics" | grep '^weir_log_lag_bytes' | grep -vq ' 0$'; do sleep 0.2; done
  t1=$(date +%s.%N)
  rows=$(curl -s -H 'Authorization: Bearer t-token' "http://$addr/api/v1/query" \
    -d '{"sql":"SELECT count(*) FROM logs"}' | sed 's/.*\[\[\([0-9]*\)\]\].*/\1/')
  echo "$1: $rows rows processed in $(echo "$t1 - $t0" | bc) s: $(echo "$rows / ($t1 - $t0)" | bc) rows/s"
  curl -s "http://$addr/metrics" | grep -E '^weir_agg_(checkpoint_seconds_(sum|count)|state_bytes|events_total)' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

throughput plain ""
throughput aggregated '[[tenants.t.streams.app.aggregations]]
name = "latency"
window = "1m"
lateness = "2h"
group_by = ["host", "http.path"]
functions = ["count", "p50(http.duration_ms) as p50", "p99(http.duration_ms) as p99", "distinct(user.id) as users", "topk(3, level) as levels"]'

dir="$work/latency"
mkdir -p "$dir"
cat > "$dir/weir.toml" <<TOML
[tenants.t]
tokens = ["t-token"]
[aggregation]
checkpoint_interval_ms = 1000
[[tenants.t.streams.app.aggregations]]
name = "per_second"
window = "1s"
critical = true
group_by = ["service"]
functions = ["count", "p99(ms) as p99", "distinct(user) as users"]
TOML
start "$dir"
python3 scripts/window-latency.py "http://$addr" t-token "$secs"
kill "$pid"; wait "$pid" 2>/dev/null || true
