#!/usr/bin/env bash
# Runs the browser tests: builds the site (debug), then Playwright starts `loraland` on a free port with a fresh
# data folder (the tiny fixture model) and stops it when the tests end.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo leptos build
E2E_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
E2E_DATA_DIR=$(mktemp -d -t loraland-e2e.XXXXXX)
export E2E_PORT E2E_DATA_DIR
trap 'rm -rf "$E2E_DATA_DIR"' EXIT
# The tiny fixture model stands in for the demo model; three catalog tasks get fixture adapters under their ids.
FIXTURE_ADAPTERS="$(cd .. && pwd)/shared/fixtures/tiny-llama/adapters"
mkdir -p "$E2E_DATA_DIR/adapters"
ln -s "$FIXTURE_ADAPTERS/qv_r8" "$E2E_DATA_DIR/adapters/glue_sst2"
ln -s "$FIXTURE_ADAPTERS/all_r4" "$E2E_DATA_DIR/adapters/customer_support"
ln -s "$FIXTURE_ADAPTERS/mlp_r2" "$E2E_DATA_DIR/adapters/gsm8k"
cd end2end && npx playwright test "$@"
