#!/usr/bin/env bash
# nvcc for the CUDA *compile check* of `make test` (NVCC=scripts/nvcc-check.sh): every kernel of ours goes to the
# real nvcc ($CUDA_HOME/bin/nvcc), but candle's own kernels (the candle-kernels crate: its PTX and its MMQ/MoE
# static library) get empty outputs. Those are candle's, compiled by candle's CI, and they cost about 30 minutes
# of nvcc on 2 cores; a type check of our code against the `cuda` feature needs only that their files exist.
# `make gpu-bundle` builds with the real nvcc throughout: that binary is the one that runs on a GPU.
set -euo pipefail
real="${CUDA_HOME:?CUDA_HOME is not set (eval \"\$(scripts/cuda-toolchain.sh --env)\")}/bin/nvcc"

# cargo runs each build script in its package's folder, and nvcc inherits it.
case "$PWD" in
  */candle-kernels-*) ;;
  *) exec "$real" "$@" ;;
esac

mode="" out="" outdir="" sources=() objects=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ptx|-ptx) mode=ptx ;;
    -c) mode=obj ;;
    --lib|-lib) mode=lib ;;
    -o) out=$2; shift ;;
    --output-directory|-odir) outdir=$2; shift ;;
    --version|-V) exec "$real" --version ;;
    *.cu) sources+=("$1") ;;
    *.o) objects+=("$1") ;;
  esac
  shift
done

case "$mode" in
  ptx)
    for src in "${sources[@]}"; do
      name=$(basename "${src%.cu}").ptx
      printf '// stub: candle kernel %s is not compiled in the compile check\n.version 8.0\n.target sm_80\n.address_size 64\n' \
        "$src" >"${out:-${outdir:-.}/$name}"
    done ;;
  obj) gcc -c -x c /dev/null -o "$out" ;;
  lib) rm -f "$out" && ar rcs "$out" "${objects[@]}" ;;
  *) echo "nvcc-check.sh: unexpected nvcc call in candle-kernels: $*" >&2; exit 1 ;;
esac
