#!/usr/bin/env bash
# One call on a GPU machine (the `device` tool): the engine's GPU tests, the random Mistral-7B load benchmark, and
# PyTorch + PEFT on the same shapes, in one run. Needs target/gpu-check from `make gpu-bundle` (carried; the GPU
# machine has no Rust toolchain) and, on that machine, the NVIDIA driver, the CUDA 13 runtime libraries (cuBLAS,
# cuRAND, NVRTC, cudart: the `nvidia-*` cu13 wheels, which PyTorch's CUDA 13 builds install) and torch +
# transformers + peft for the comparison.
#
#   bash scripts/gpu-check.sh [out-dir]      (the device tool: out-dir = $OUT)
# Writes gpu-check.log, gpu-tests.txt, bench-mistral-7b.md and peft-mistral-7b.md into out-dir.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-target/gpu-check-results}}
PRESET=${GPU_CHECK_PRESET:-mistral-7b}
STREAMS=${GPU_CHECK_STREAMS:-1,8,32}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1
step() { echo; echo "==> $*  [$(date +%T)]"; }
status=0

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
[ -f target/gpu-check/bundle.tar.xz ] || { echo "no target/gpu-check/bundle.tar.xz: run make gpu-bundle, carry it"; exit 2; }
BUNDLE=$(mktemp -d)
python3 -m tarfile -e target/gpu-check/bundle.tar.xz "$BUNDLE" && chmod +x "$BUNDLE"/loraland "$BUNDLE"/engine-gpu-tests || exit 2

step "CUDA 13 libraries"
# The binary links libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13: take
# them from the Python packages (nvidia/cu13/lib, torch/lib) when the system has no CUDA 13 toolkit.
libdirs=$(python3 - <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
seen = []
for root in roots:
    for pattern in ("nvidia/cu13/lib", "nvidia/*/lib", "torch/lib"):
        for d in glob.glob(os.path.join(root, pattern)):
            if os.path.isdir(d) and d not in seen:
                seen.append(d)
print(":".join(seen))
EOF
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/cuda/lib64"
missing=$(ldd "$BUNDLE/loraland" | grep "not found")
if [ -n "$missing" ]; then
  echo "the CUDA build cannot start here; missing libraries:"
  echo "$missing"
  status=1
else
  ldd "$BUNDLE/loraland" | grep -E "cublas|curand|nvrtc|cudart|libcuda"

  step "engine GPU tests (PEFT fixtures: f32 within 1e-4, bf16 within 1e-2, greedy tokens; SGMV vs CPU reference)"
  LORALAND_FIXTURES=$BUNDLE/fixtures RUST_BACKTRACE=1 "$BUNDLE/engine-gpu-tests" --test-threads=1 --nocapture \
    2>&1 | tee "$OUT_DIR/gpu-tests.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  step "loraland bench load --random-model $PRESET --device cuda:0 (streams $STREAMS)"
  RUST_LOG=warn "$BUNDLE/loraland" bench load --random-model "$PRESET" --device cuda:0 \
    --stream-counts "$STREAMS" --requests-per-stream 1 2>&1 | tee "$OUT_DIR/bench-$PRESET.md"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

step "PyTorch + PEFT on the same shapes"
python3 scripts/peft_bench.py --preset "$PRESET" --device cuda --streams "$STREAMS" 2>&1 \
  | tee "$OUT_DIR/peft-$PRESET.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "done, status $status"
exit $status
