#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine without a GPU or a CUDA install: nvcc, the CUDA
# headers and the libraries the binary links against, all from NVIDIA's PyPI wheels (CUDA 13.0; no Debian package
# carries nvcc, and the CUDA 12 nvcc wheels hold only ptxas). The driver library (libcuda) is not on PyPI: a stub
# with the driver's symbols stands in for it at link time, as the CUDA toolkit's own lib64/stubs does; at run time
# the GPU machine's driver provides the real one.
#
#   scripts/cuda-toolchain.sh          install (idempotent) into $LORALAND_CUDA_HOME
#   eval "$(scripts/cuda-toolchain.sh --env)"   install, then export CUDA_HOME, PATH, CUDA_COMPUTE_CAP
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "cuda-toolchain.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

CUDA_VERSION=13.0
ROOT=${LORALAND_CUDA_HOME:-$HOME/.cache/loraland/cuda-$CUDA_VERSION}
CUDA_HOME_DIR=$ROOT/nvidia/cu13
# Hopper (H100/H200) by default; set CUDA_COMPUTE_CAP for another GPU.
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

log() { echo "$@" >&2; }

install() {
  log "==> installing CUDA $CUDA_VERSION build tools from PyPI into $ROOT (~700 MB, once)"
  python3 -m pip install --progress-bar off --disable-pip-version-check --no-deps --target "$ROOT" \
    "nvidia-cuda-nvcc==$CUDA_VERSION.*" "nvidia-nvvm==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*" \
    "nvidia-cuda-runtime==$CUDA_VERSION.*" "nvidia-cuda-cccl==$CUDA_VERSION.*" "nvidia-cuda-nvrtc==$CUDA_VERSION.*" \
    "nvidia-cublas==$CUDA_VERSION.*" "nvidia-curand==10.4.*" >&2
  local lib=$CUDA_HOME_DIR/lib
  # The wheels ship only versioned names (libcublas.so.13); the linker's -lcublas wants libcublas.so.
  for so in "$lib"/lib*.so.*; do
    local base=${so%%.so.*}.so
    [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
  done
  # nvcc looks for its tools and headers relative to itself: bin/, nvvm/, include/, lib64/.
  [ -e "$CUDA_HOME_DIR/lib64" ] || ln -s lib "$CUDA_HOME_DIR/lib64"
  build_driver_stub "$lib"
  "$CUDA_HOME_DIR/bin/nvcc" --version | tail -2 >&2
}

# libcuda.so.1 with every driver entry point cudarc declares, as empty functions: enough for the linker to record
# the dependency and resolve the symbols; the real driver replaces it on a GPU machine.
build_driver_stub() {
  local lib=$1 sys
  sys=$(cudarc_driver_sys)
  local src=$ROOT/libcuda-stub.c
  grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$sys" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | sed 's/.*/int &(void) { return 999; }/' >"$src"
  [ -s "$src" ] || fail "found no driver functions in $sys (has cudarc's layout changed?)"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so.1" "$src" || fail "gcc could not build the libcuda stub"
  ln -sf libcuda.so.1 "$lib/libcuda.so"
  log "    libcuda stub: $(wc -l <"$src") driver symbols from $sys"
}

# The driver API declarations of the cudarc version in Cargo.lock. Cargo unpacks a crate only when a build needs
# it, so on a machine that has never built the `cuda` feature it is fetched first.
cudarc_driver_sys() {
  cargo fetch --locked >&2 || fail "cargo fetch failed (the cudarc sources are needed for the libcuda stub)"
  local manifest
  manifest=$(cargo metadata --format-version 1 --locked --features loraland/cuda 2>/dev/null | python3 -c '
import json, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
print(pkgs[0]["manifest_path"] if pkgs else "")') || fail "cargo metadata failed"
  [ -n "$manifest" ] || fail "cudarc is not in Cargo.lock's cuda dependency graph"
  local sys
  sys=$(dirname "$manifest")/src/driver/sys/mod.rs
  [ -f "$sys" ] || fail "$sys does not exist (has cudarc's layout changed?)"
  echo "$sys"
}

fail() {
  log "cuda-toolchain.sh: $*"
  exit 1
}

[ -x "$CUDA_HOME_DIR/bin/nvcc" ] && [ -e "$CUDA_HOME_DIR/lib/libcuda.so" ] || install

if [ "${1:-}" = "--env" ]; then
  echo "export CUDA_HOME='$CUDA_HOME_DIR' CUDA_ROOT='$CUDA_HOME_DIR' CUDA_COMPUTE_CAP='$COMPUTE_CAP'"
  echo "export PATH='$CUDA_HOME_DIR/bin':\"\$PATH\""
fi
