#!/usr/bin/env bash
# The same redaction in Rust, C, Python and JavaScript, measured side by side in one
# run by `weir plugin bench` (release host): compile time, instantiate time and
# throughput on the shared sample records, with each language's ratio to Rust.
#
# Usage: scripts/bench-plugins.sh [SECONDS_PER_PLUGIN]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
export CARGO_TARGET_DIR="${WEIR_RELEASE_TARGET:-/var/tmp/weir-release}"
secs="${1:-5}"
cargo build --release --bin weir >&2
bin="$CARGO_TARGET_DIR/release/weir"
rust="$CARGO_TARGET_DIR/wasm-plugins/wasm32-wasip2/plugin/pii_redact.wasm"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bin" plugin bench "$rust" --seconds "$secs" \
  --config '{"kinds":["email","card","ssn"]}' 2>/dev/null | tee -a "$out"
for lang in c python js; do
  wasm=$("$bin" plugin build --dir "examples/redact-$lang" 2>/dev/null | tail -1)
  "$bin" plugin bench "$wasm" --seconds "$secs" 2>/dev/null | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = rows[0]["us_per_record"]
print(f"{'plugin':<16}{'KB':>9}{'compile ms':>12}{'inst us':>10}{'us/rec':>9}{'rec/s':>10}{'vs rust':>9}")
for r in rows:
    print(f"{r['plugin']:<16}{r['bytes']/1024:>9.0f}{r['compile_ms']:>12.0f}{r['instantiate_us_median']:>10.0f}"
          f"{r['us_per_record']:>9.2f}{r['records_per_s']:>10.0f}{base/r['us_per_record']:>9.2f}")
PY
