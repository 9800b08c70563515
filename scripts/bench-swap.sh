#!/usr/bin/env bash
# Hot-swap costs on a release server under load:
# 1. ack latency of `weir bench` with no swaps, then with the pipeline swapped every
#    SWAP_MS (alternating two redactor configurations of equal cost), in one run;
# 2. upload -> active: the C redactor (built from examples/) uploaded, put in the
#    pipeline, and the first record processed by it queryable, in milliseconds.
#
# Usage: scripts/bench-swap.sh [SECONDS_PER_PHASE] [SWAP_MS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
secs="${1:-20}"; swap_ms="${2:-200}"
cargo build --release --bin weir >&2
bin="$CARGO_TARGET_DIR/release/weir"
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/weir.toml" <<TOML
[admin]
token = "admin-secret"
[tenants.bench]
tokens = ["bench-token"]
[tenants.bench.streams.app]
plugins = [{ plugin = "builtin:pii-redact" }]
[hot]
max_mb = 16384
TOML
"$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 \
  --admin-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 600); do grep -q "admin listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^weir: http listening on //p' "$dir/out")
admin=$(sed -n 's/^weir: admin listening on //p' "$dir/out")
export WEIR_ADMIN_URL="http://$admin" WEIR_ADMIN_TOKEN=admin-secret WEIR_TENANT=bench
# A load the box can process as fast as it comes (so no backlog builds up and both
# phases start from an idle server); drain what is left between phases.
load() { "$bin" bench --url "http://$addr" --token bench-token --stream app \
  --seconds "$secs" --concurrency 2 --batch 500 --keys 8; }
drain() { while curl -s "http://$addr/metrics" | grep '^weir_log_lag_bytes' | grep -vq ' 0$'; do sleep 0.2; done; }

echo "phase 1: no swaps"
load
drain
echo "phase 2: pipeline swapped every ${swap_ms} ms"
( end=$(( $(date +%s) + secs )); n=0
  # Two configurations of equal cost (the same kinds, listed in another order), so the
  # phase measures the swap itself; curl rather than the CLI, to spend no CPU on it.
  all='"email","card","ssn","phone","ipv4","ipv6","iban","jwt","aws_key"'
  rev='"aws_key","jwt","iban","ipv6","ipv4","phone","ssn","card","email"'
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ $((n % 2)) = 0 ]; then kinds=$rev; else kinds=$all; fi
    curl -s -o /dev/null -X PUT -H "Authorization: Bearer admin-secret" \
      "$WEIR_ADMIN_URL/admin/v1/tenants/bench/pipelines/app" \
      -d "{\"plugins\":[{\"plugin\":\"builtin:pii-redact\",\"config\":{\"kinds\":[$kinds]}}]}"
    n=$((n + 1)); sleep "$(echo "$swap_ms / 1000" | bc -l)"
  done; echo "swaps: $n" ) &
swapper=$!
load
wait $swapper

# Measure upload -> active on an idle server: first let processing catch up.
drain
echo "upload -> active (C redactor), idle server"
wasm=$("$bin" plugin build --dir examples/redact-c 2>/dev/null | tail -1)
q() { curl -s -H 'Authorization: Bearer bench-token' "http://$addr/api/v1/query" -d "{\"sql\":\"$1\"}"; }
t0=$(date +%s%N)
"$bin" plugin upload redact-c "$wasm" > /dev/null
t1=$(date +%s%N)
"$bin" pipeline set fresh redact-c > /dev/null
t2=$(date +%s%N)
curl -s -H 'Authorization: Bearer bench-token' "http://$addr/api/v1/logs?stream=fresh" \
  -d '{"m":"mail a@b.io"}' > /dev/null
until q "SELECT count(*) FROM logs WHERE stream = 'fresh' AND record LIKE '%REDACTED%'" | grep -q '\[\[1\]\]'; do
  sleep 0.005
done
t3=$(date +%s%N)
echo "upload (validate + compile) $(( (t1 - t0) / 1000000 )) ms; pipeline set $(( (t2 - t1) / 1000000 )) ms; first record processed and queryable $(( (t3 - t2) / 1000000 )) ms after; total $(( (t3 - t0) / 1000000 )) ms"
