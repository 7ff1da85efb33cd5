#!/usr/bin/env bash
# Runs the browser tests against the release site that `make serve` builds (`make site`: target/release/loraland and
# target/site): Playwright starts that server on a free port with a fresh data folder and the tiny fixture model,
# and stops it when the tests end. Extra arguments go to `playwright test`.
set -euo pipefail
cd "$(dirname "$0")/.."

E2E_BIN=${E2E_BIN:-$PWD/target/release/loraland}
[ -x "$E2E_BIN" ] && [ -f target/site/pkg/loraland.wasm ] \
  || { echo "e2e.sh: no release site (target/release/loraland, target/site): run \`make site\` first" >&2; exit 1; }
E2E_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
E2E_DATA_DIR=$(mktemp -d -t loraland-e2e.XXXXXX)
export E2E_BIN E2E_PORT E2E_DATA_DIR
trap 'rm -rf "$E2E_DATA_DIR"' EXIT
# The tiny fixture model stands in for the demo model (E2E_MODEL overrides it); three catalog tasks get fixture
# adapters under their ids (E2E_ADAPTER_FIXTURES: a folder of PEFT adapters for that model).
FIXTURE_ADAPTERS="${E2E_ADAPTER_FIXTURES:-$(cd .. && pwd)/shared/fixtures/tiny-llama/adapters}"
mkdir -p "$E2E_DATA_DIR/adapters"
for pair in glue_sst2:qv_r8 customer_support:all_r4 gsm8k:mlp_r2; do
  [ -d "$FIXTURE_ADAPTERS/${pair#*:}" ] && ln -s "$FIXTURE_ADAPTERS/${pair#*:}" "$E2E_DATA_DIR/adapters/${pair%%:*}"
done
cd end2end && npx playwright test "$@"
