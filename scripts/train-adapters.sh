#!/usr/bin/env bash
# Trains the embedded model's demo adapters, one per catalog task, into adapters/<task id> with `loraland train`
# on each task's synthetic data, then scores them all with `loraland eval --all --constrained`.
#
#   scripts/train-adapters.sh                 # every task
#   scripts/train-adapters.sh glue_sst2 gsm8k # some tasks
#
# Environment: STEPS (default 30), BATCH (default 8, and 4 for the tasks with long templates), LR (1e-3), SEED (0),
# MODEL (the default SmolLM2 GGUF), RAYON_NUM_THREADS (all cores). These defaults are the commands that made the
# adapters in the repository; each adapter's training.json records its exact command line.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}
STEPS=${STEPS:-30}
LR=${LR:-1e-3}
SEED=${SEED:-0}
BIN=target/release/loraland

# `make adapters` passes the Makefile's RUSTFLAGS, so that this build shares the other builds' artifacts.
cargo build --release -p loraland
[ -f "$MODEL" ] || "$BIN" fetch-model

if [ $# -gt 0 ]; then
  tasks=("$@")
else
  mapfile -t tasks < <(python3 -c 'import json; print("\n".join(t["id"] for t in json.load(open("catalog/adapters.json"))["tasks"]))')
fi

for task in "${tasks[@]}"; do
  echo "== $task"
  # Long prompts (200-450 tokens) train in batches of 4 to keep a run under ten minutes here; jigsaw's template
  # alone is longer than the default --seq-len of 256.
  case "$task" in
    legal|jigsaw|covid|customer_support|viggo|conllpp|bc5cdr|dbpedia|hellaswag|drop|magicoder|tldr_content_gen)
      batch=${BATCH:-4} ;;
    *) batch=${BATCH:-8} ;;
  esac
  extra=()
  [ "$task" = jigsaw ] && extra=(--seq-len 512)
  "$BIN" train --model "$MODEL" --task "$task" --out "adapters/$task" \
    --steps "$STEPS" --batch "$batch" --lr "$LR" --seed "$SEED" --train-examples 2000 --eval-examples 16 --quiet \
    "${extra[@]}"
  chmod 644 "adapters/$task"/*
done

# Score every task when all were trained, else the ones just trained.
if [ $# -gt 0 ]; then which=(--task "$(IFS=,; echo "$*")"); else which=(--all); fi
mkdir -p bench/results
"$BIN" eval --model "$MODEL" "${which[@]}" --adapters-dir adapters --seed "$SEED" --limit "${EVAL_LIMIT:-32}" --constrained \
  --json bench/results/eval-smollm2.json | tee bench/results/eval-smollm2.md
