#!/usr/bin/env bash
# Bytes per metric sample: Weir's cold Parquet vs a Prometheus TSDB fed the same 1M
# samples (1,000 series x 1,000 scrapes, see weir_core::sample::metric_scrapes).
# Installs Debian's prometheus package (for promtool) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/weir-target}"
if ! command -v promtool >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends prometheus >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
WEIR_OPENMETRICS_OUT="$work/samples.om" cargo nextest run --workspace \
    -E 'test(cold_metrics_bytes_per_sample)' --no-capture 2>&1 | grep 'bytes/sample'
# One 2-hour block is what Prometheus compacts to first; allow the data's ~4 h span.
promtool tsdb create-blocks-from openmetrics --max-block-duration=24h "$work/samples.om" "$work/tsdb" >/dev/null
bytes=$(du -sb "$work/tsdb" | cut -f1)
chunks=$(find "$work/tsdb" -path '*chunks*' -type f -exec du -cb {} + | tail -1 | cut -f1)
echo "prometheus $(promtool --version 2>&1 | head -1 | awk '{print $3}'): ${bytes} bytes in blocks ($(echo "scale=3; $bytes/1000000" | bc) bytes/sample), chunks alone ${chunks} ($(echo "scale=3; $chunks/1000000" | bc) bytes/sample)"
