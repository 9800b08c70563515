#!/usr/bin/env bash
# End-to-end ingest benchmark: starts a release `weir serve` (redactor in the chain) on a
# fresh data dir and a free port, drives it with `weir bench` from the same machine, then
# reports the bench's JSON line plus the server's processing progress.
#
# Usage: scripts/bench-e2e.sh [SECONDS] [CONCURRENCY] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
# Release builds keep their own target dir (a cold one takes ~40 min here).
export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
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
[hot]
max_mb = 16384
TOML
"$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^weir: http listening on //p' "$dir/out")
t0=$(date +%s.%N)
"$bin" bench --url "http://$addr" --token bench-token --stream app \
  --seconds "$secs" --concurrency "$conc" --batch "$batch" --keys 8
# How far processing got when the load stopped, and how long it takes to catch up.
q() { curl -s -H 'Authorization: Bearer bench-token' "http://$addr/api/v1/query" -d "{\"sql\":\"$1\"}"; }
echo "rows queryable right after the load: $(q 'SELECT count(*) FROM logs')"
start=$(date +%s.%N)
while curl -s "http://$addr/metrics" | grep '^weir_log_lag_bytes' | grep -vq ' 0$'; do sleep 0.2; done
end=$(date +%s.%N)
rows=$(q 'SELECT count(*) FROM logs' | sed 's/.*\[\[\([0-9]*\)\]\].*/\1/')
echo "caught up $(echo "$end - $start" | bc) s after the load; rows: $rows"
echo "processed end to end: $(echo "$rows / ($end - $t0)" | bc) rows/s (first ack to last row queryable)"
curl -s "http://$addr/metrics" | grep -E '^weir_hot_evicted_rows|^weir_plugin_call_seconds_(sum|count)|^weir_store_commit_seconds_(sum|count)' || true
# Where the server's CPU went, per thread kind (seconds of user+system time).
tick=$(getconf CLK_TCK)
for t in /proc/$pid/task/*; do
  name=$(cat "$t/comm"); set -- $(cut -d' ' -f14,15 "$t/stat")
  echo "$name $(( $1 + $2 ))"
done | sed -E 's/-[0-9]+ / /' | awk -v tick="$tick" '{c[$1]+=$2} END {for (k in c) printf "cpu %-22s %6.1f s\n", k, c[k]/tick}' | sort -k3 -nr
