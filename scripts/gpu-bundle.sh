#!/usr/bin/env bash
# Gathers what scripts/gpu-check.sh needs on a GPU machine that has no Rust toolchain into
# target/gpu-check/bundle.tar.xz: the CUDA build of loraland, the engine's GPU test binary, and the tiny PEFT
# reference fixtures.
# Usage: scripts/gpu-bundle.sh <cargo target dir of the CUDA build>   (`make gpu-bundle` passes it)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${1:?usage: scripts/gpu-bundle.sh <cuda target dir>}
OUT=target/gpu-check
eval "$(scripts/cuda-toolchain.sh --env)"

echo "==> building the engine's GPU tests (--features cuda)"
test_bin=$(RUSTFLAGS="${RUSTFLAGS:-}" CARGO_TARGET_DIR=$TARGET_DIR \
  cargo test --release -p engine --features engine/cuda --test gpu --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
[ -n "$test_bin" ] || { echo "no GPU test binary was built" >&2; exit 1; }

# The binaries embed candle's kernels (~140 MB together); compressed they fit the device tool's 64 MiB carry.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/fixtures"
cp "$TARGET_DIR/release/loraland" "$STAGE/loraland"
cp "$test_bin" "$STAGE/engine-gpu-tests"
strip "$STAGE/loraland" "$STAGE/engine-gpu-tests"
cp -r ../shared/fixtures/tiny-llama ../shared/fixtures/tiny-mistral "$STAGE/fixtures/"
rm -rf "$OUT" && mkdir -p "$OUT"
echo "==> compressing (about a minute)"
XZ_OPT="-6 -T0" tar -cJf "$OUT/bundle.tar.xz" -C "$STAGE" .
ls -la "$OUT/bundle.tar.xz"
echo "==> ready: run \`bash scripts/gpu-check.sh\` on the GPU machine with target/gpu-check carried"
