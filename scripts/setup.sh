#!/usr/bin/env bash
# Installs what building and testing Weir needs, idempotently: the wasm32-wasip2 target
# (plugins are Wasm components) and cargo-nextest (the test runner).
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
