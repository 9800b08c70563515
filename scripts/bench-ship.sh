#!/usr/bin/env bash
# `weir ship` lines/s from a file into a local server, next to posting the same file
# with curl (the same 5000-line gzip bodies, one request at a time).
#
#   scripts/bench-ship.sh FILE [WEIR_BINARY]
#
# FILE: NDJSON lines. WEIR_BINARY defaults to $CARGO_TARGET_DIR/release/weir. Each run
# starts a fresh server (default tenant, no plugins) in a temporary directory.
set -euo pipefail
file=${1:?usage: bench-ship.sh FILE [WEIR_BINARY]}
weir=${2:-${CARGO_TARGET_DIR:-/var/tmp/weir-target}/release/weir}
lines=$(wc -l < "$file")
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

start_server() {
  rm -rf "$work/data"
  "$weir" serve --data-dir "$work/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 > "$work/out" 2> "$work/server.log" &
  server=$!
  until grep -q 'http listening' "$work/out" 2>/dev/null; do sleep 0.2; done
  url=http://$(sed -n 's/^weir: http listening on //p' "$work/out")
}

stop_server() { kill "$server"; wait "$server" || true; }

rate() { python3 -c "import sys; print(f'{int(sys.argv[1])/float(sys.argv[2]):,.0f}')" "$1" "$2"; }

start_server
t0=$(date +%s.%N)
TIMEFORMAT='%U %S' && { time "$weir" ship --to "$url" --stream bench --file "$file" \
  --spool "$work/spool" --once --progress-secs 0 2> "$work/ship.log" ; } 2> "$work/cpu"
t1=$(date +%s.%N)
ship_cpu=$(awk '{print $1 + $2}' "$work/cpu")
ship_s=$(python3 -c "print($t1 - $t0)")
tail -1 "$work/ship.log"
stop_server

start_server
split -l 5000 -d -a 4 "$file" "$work/part."
gzip -1 "$work"/part.*
t0=$(date +%s.%N)
for p in "$work"/part.*.gz; do
  curl -sf -o /dev/null -H 'Content-Encoding: gzip' --data-binary @"$p" "$url/api/v1/logs?stream=bench"
done
t1=$(date +%s.%N)
curl_s=$(python3 -c "print($t1 - $t0)")
stop_server

echo "lines: $lines ($(du -h "$file" | cut -f1))"
echo "weir ship --once: ${ship_s}s, $(rate "$lines" "$ship_s") lines/s; the shipper's CPU: ${ship_cpu}s ($(rate "$lines" "$ship_cpu") lines per CPU second)"
echo "curl, 5000-line gzip bodies, one at a time (gzip done beforehand): ${curl_s}s, $(rate "$lines" "$curl_s") lines/s"
