#!/usr/bin/env bash
# Does a hostile tenant slow a well-behaved one? The good tenant's load (`weir bench`,
# redactor in its pipeline) runs on a fresh release server twice: alone, then while a
# second tenant floods a stream whose plugin loops forever (built here from
# `weir plugin new --lang rust`, its process() replaced by an endless loop). Reports the
# good tenant's acknowledged events/s and its processed rows/s in both runs.
#
# Usage: scripts/bench-neighbours.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
secs="${1:-20}"
cargo build --release --bin weir >&2
bin="$CARGO_TARGET_DIR/release/weir"
work=$(mktemp -d)
trap 'kill $pid $flood 2>/dev/null || true; rm -rf "$work"' EXIT
pid=""; flood=""

# The hostile plugin.
"$bin" plugin new --lang rust "$work/looper" > /dev/null
sed -i 's|        Ok(batch)|        loop {\n            std::hint::black_box(\&batch);\n        }|' "$work/looper/src/lib.rs"
looper=$(CARGO_TARGET_DIR="$CARGO_TARGET_DIR/scaffold" "$bin" plugin build --dir "$work/looper" 2>/dev/null | tail -1)

run() { # $1 = with flood (0/1)
  local dir="$work/run$1"
  mkdir -p "$dir"
  cat > "$dir/weir.toml" <<TOML
[tenants.good]
tokens = ["good-token"]
[tenants.good.streams.app]
plugins = [{ plugin = "builtin:pii-redact" }]
[tenants.evil]
tokens = ["evil-token"]
[tenants.evil.streams.spin]
plugins = [{ plugin = "file:$looper" }]
[tenants.evil.limits]
deadline_ms = 500
[hot]
max_mb = 16384
TOML
  "$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  local addr
  addr=$(sed -n 's/^weir: http listening on //p' "$dir/out")
  if [ "$1" = 1 ]; then
    # 20 small batches a second to the looping plugin, spread over partitions.
    ( i=0; while true; do
        curl -s -o /dev/null -H 'Authorization: Bearer evil-token' \
          "http://$addr/api/v1/logs?stream=spin&key=k$((i % 8))" -d '{"x":1}'
        i=$((i + 1)); sleep 0.05
      done ) &
    flood=$!
  fi
  local t0 t1 rows
  t0=$(date +%s.%N)
  "$bin" bench --url "http://$addr" --token good-token --stream app \
    --seconds "$secs" --concurrency 8 --batch 1000 --keys 8
  while curl -s "http://$addr/metrics" | grep '^weir_log_lag_bytes' | grep -vq ' 0$'; do
    [ "$1" = 1 ] && break  # the spinning stream's entries stay in the log; see below
    sleep 0.2
  done
  if [ "$1" = 1 ]; then
    # Wait for the good tenant's rows only: its count stops moving.
    local prev=-1
    while true; do
      rows=$(curl -s -H 'Authorization: Bearer good-token' "http://$addr/api/v1/query" \
        -d '{"sql":"SELECT count(*) FROM logs"}' | sed 's/.*\[\[\([0-9]*\)\]\].*/\1/')
      [ "$rows" = "$prev" ] && break
      prev=$rows; sleep 1
    done
  fi
  t1=$(date +%s.%N)
  rows=$(curl -s -H 'Authorization: Bearer good-token' "http://$addr/api/v1/query" \
    -d '{"sql":"SELECT count(*) FROM logs"}' | sed 's/.*\[\[\([0-9]*\)\]\].*/\1/')
  echo "good tenant processed $rows rows in $(echo "$t1 - $t0" | bc) s: $(echo "$rows / ($t1 - $t0)" | bc) rows/s"
  curl -s "http://$addr/metrics" | grep -E '^weir_plugin_(calls|traps|quarantined)_total\{tenant="evil"' || true
  [ -n "$flood" ] && kill "$flood" 2>/dev/null || true
  flood=""
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
echo "run 1: the good tenant alone"
run 0
echo "run 2: with a tenant flooding a plugin that never returns"
run 1
