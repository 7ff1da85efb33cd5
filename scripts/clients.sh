#!/usr/bin/env bash
# Runs the real OpenAI and LoRAX Python clients (clients/requirements.txt, installed from PyPI into
# target/clients-venv) against the release `loraland serve` (`make site`) started here on a free port with the tiny
# fixture model.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/clients-venv
if [ ! -x "$VENV/bin/python" ] || ! cmp -s clients/requirements.txt "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar off --disable-pip-version-check -r clients/requirements.txt
  cp clients/requirements.txt "$VENV/requirements.txt"
fi

BIN=${LORALAND_BIN:-target/release/loraland}
[ -x "$BIN" ] || { echo "clients.sh: $BIN is missing: run \`make site\` first" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d -t loraland-clients.XXXXXX)
LOG="$DATA/server.log"
FIXTURES=../shared/fixtures/tiny-llama
"$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$DATA" --model "$FIXTURES/base" \
  --adapters-dir "$FIXTURES/adapters" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; echo "server exited"; exit 1; }
  sleep 0.2
done
"$VENV/bin/python" clients/test_clients.py "http://127.0.0.1:$PORT" || { tail -50 "$LOG"; exit 1; }
