#!/usr/bin/env bash
# Installs what building and testing Weir needs, idempotently:
# - the wasm32-wasip2 target (plugins are Wasm components) and cargo-nextest;
# - the plugin toolchains `weir plugin build` uses for other languages, into
#   $WEIR_TOOLS (default /var/tmp/weir-tools): wit-bindgen and wasm-tools (C),
#   zig from PyPI's `ziglang` (C compiler), componentize-py (Python) and
#   componentize-js from npm (JavaScript);
# - rsyslog (Debian's package), the real syslog forwarder the TCP ingest test runs.
set -euo pipefail

TOOLS="${WEIR_TOOLS:-/var/tmp/weir-tools}"
WIT_BINDGEN=0.46.0       # same as the wit-bindgen crate of sdk/rust
WASM_TOOLS=1.263.0
COMPONENTIZE_PY=0.25.1
PYARROW=22.0.0
DUCKDB=1.4.2
ADBC_FLIGHTSQL=1.13.0
MOTO=5.2.5               # an S3-compatible server for the object-storage tests
ZIGLANG=0.17.1
OTEL=1.45.2              # the OpenTelemetry Python SDK and OTLP exporters (OTLP ingest tests)
COMPONENTIZE_JS=0.23.0

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
mkdir -p "$TOOLS"
# cargo tools, each at its pinned version (cargo install skips an equal version).
cargo_tool() { # crate version binary
  if ! "$TOOLS/bin/$3" --version 2>/dev/null | grep -q " $2"; then
    cargo install --locked --root "$TOOLS" "$1" --version "$2"
  fi
}
cargo_tool wit-bindgen-cli "$WIT_BINDGEN" wit-bindgen
cargo_tool wasm-tools "$WASM_TOOLS" wasm-tools

if [ ! -x "$TOOLS/venv/bin/python3" ]; then
  if ! python3 -m venv "$TOOLS/venv"; then
    sudo_if apt-get update -qq && sudo_if apt-get install -y -qq python3-venv
    python3 -m venv "$TOOLS/venv"
  fi
fi
# Python: componentize-py and zig for plugins; pyarrow and duckdb, the independent
# readers the cold-tier tests check Weir's Parquet files with; the ADBC Flight SQL
# driver the Flight SQL test queries the server with; moto's S3 server, the object
# store the S3 cold-tier test writes to; the OpenTelemetry SDK with its OTLP gRPC and
# HTTP exporters, the real client of the OTLP ingest tests.
frozen=$("$TOOLS/venv/bin/pip" freeze 2>/dev/null || true)
for pin in "componentize-py==$COMPONENTIZE_PY" "ziglang==$ZIGLANG" "pyarrow==$PYARROW" "duckdb==$DUCKDB" "adbc-driver-flightsql==$ADBC_FLIGHTSQL" "moto[server]==$MOTO" \
    "opentelemetry-sdk==$OTEL" "opentelemetry-exporter-otlp-proto-grpc==$OTEL" "opentelemetry-exporter-otlp-proto-http==$OTEL"; do
  if ! grep -qx "${pin/\[*\]/}" <<<"$frozen"; then
    "$TOOLS/venv/bin/pip" install --quiet "$pin"
  fi
done

if ! grep -qs "\"version\": \"$COMPONENTIZE_JS\"" \
    "$TOOLS/node/node_modules/@bytecodealliance/componentize-js/package.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    sudo_if apt-get update -qq && sudo_if apt-get install -y -qq nodejs npm
  fi
  mkdir -p "$TOOLS/node"
  (cd "$TOOLS/node" && { [ -f package.json ] || npm init -y >/dev/null; } &&
    npm install --silent --no-audit --no-fund "@bytecodealliance/componentize-js@$COMPONENTIZE_JS")
fi

# rsyslog: the TCP ingest test starts its own rsyslogd (foreground, own config), which
# forwards RFC 5424 (octet-counted) and RFC 3164 to Weir's syslog listener.
if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
  sudo_if apt-get update -qq && sudo_if apt-get install -y -qq rsyslog
fi
