#!/usr/bin/env bash
# The web app's adapter download, loaded by PEFT (`make peft-check`): a release server on the tiny fixture model, a
# training job through its Train API, the zip loaded by `PeftModel.from_pretrained`, PEFT's tokens and
# log-probabilities against the server's. torch + PEFT + transformers come from PyPI into target/peft-venv (5.6 GB,
# once).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release/loraland
[ -x "$BIN" ] || { echo "peft-check.sh: no $BIN: run \`make site\` first" >&2; exit 1; }
VENV=target/peft-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import peft, transformers, torch' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/peft-check/requirements.txt
fi
MODEL=$(cd .. && pwd)/shared/fixtures/tiny-llama/base
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d -t loraland-peft.XXXXXX)
RAYON_NUM_THREADS=1 "$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$DATA" --model "$MODEL" \
  --adapters-dir "$DATA/adapters" --max-input-tokens 512 --log warn > "$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
  sleep 0.2
done
"$VENV/bin/python" scripts/peft-check/check.py "http://127.0.0.1:$PORT" "$MODEL"
