#!/usr/bin/env bash
# The ingest protocols (scripts/bench-protocols.sh) against several weir binaries, side by
# side in one run: each round starts a fresh server per binary and runs NDJSON, OTLP/HTTP
# and OTLP/gRPC through it. Usage: scripts/bench-protocols-ab.sh SECONDS BIN [BIN...]
set -euo pipefail
secs=$1; shift
for round in 1 2; do
for bin in "$@"; do
  dir=$(mktemp -d)
  printf '[tenants.bench]\ntokens = ["bench-token"]\n[hot]\nmax_mb = 16384\n' > "$dir/weir.toml"
  "$bin" serve --config "$dir/weir.toml" --data-dir "$dir/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --tcp-addr 127.0.0.1:0 > "$dir/out" 2> "$dir/log" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "grpc listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  http=$(sed -n 's/^weir: http listening on \([^ ]*\).*/\1/p' "$dir/out")
  grpc=$(sed -n 's/^weir: grpc listening on \([^ ]*\).*/\1/p' "$dir/out")
  for p in ndjson otlp-http otlp-grpc; do
    echo -n "round=$round bin=$(basename $bin) "
    "$bin" bench --url "http://$http" --grpc-url "http://$grpc" --token bench-token \
      --stream "s-$p" --protocol "$p" --seconds "$secs" --concurrency 8 --batch 1000 --keys 1 2>/dev/null
  done
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
done
done
