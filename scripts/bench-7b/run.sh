#!/usr/bin/env bash
# `make bench-7b`: the 7B CPU benchmark against llama.cpp (see compare.py). Installs llama.cpp (llama-cpp-python,
# built from source for this CPU: about 10 minutes on 2 cores, once) into target/bench7b-venv, makes the
# Mistral-7B-shaped random GGUFs in data/bench-7b (make_gguf.py: 12 GB kept, 27 GB of free disk needed while the
# f16 source exists) and runs, with the release binary `make site` builds, BENCH_7B_ROUNDS rounds (default 3). Writes
# bench/results/bench-7b.md and .json. Needs about 10 GB of free memory (the Q8_0 file, loaded by one side at a time).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/bench7b-venv
DIR=data/bench-7b
if [ ! -x "$VENV/bin/python" ] || ! cmp -s scripts/bench-7b/requirements.txt "$VENV/requirements.txt"; then
  echo "==> installing llama.cpp (llama-cpp-python from source) into $VENV"
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install --quiet \
    --progress-bar off --disable-pip-version-check -r scripts/bench-7b/requirements.txt
  cp scripts/bench-7b/requirements.txt "$VENV/requirements.txt"
fi
if [ ! -f "$DIR/mistral-7b-random.Q4_K_M.gguf" ] || [ ! -f "$DIR/mistral-7b-random.Q8_0.gguf" ]; then
  free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "$free_gb" -lt 28 ]; then
    echo "bench-7b: making the 7B files needs about 28 GB of free disk here; $free_gb GB free" >&2
    exit 1
  fi
  echo "==> making the Mistral-7B-shaped random GGUFs in $DIR"
  "$VENV/bin/python" scripts/bench-7b/make_gguf.py "$DIR"
fi
mkdir -p bench/results
"$VENV/bin/python" scripts/bench-7b/compare.py "$DIR" "${BENCH_7B_ROUNDS:-3}" bench/results/bench-7b.md
