#!/usr/bin/env bash
# Makes data/fixtures/mistral-spm (see make_fixture.py): a tiny random-weight Mistral GGUF carrying Mistral-7B-v0.1's
# SentencePiece tokenizer, and the token ids and chat rendering transformers gives, once per requirements version.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=data/fixtures/mistral-spm
VENV=target/spm-venv
STAMP="$(cat scripts/spm-fixture/requirements.txt scripts/spm-fixture/make_fixture.py scripts/spm-fixture/mistral_spm.py | sha256sum | cut -c1-16)"
[ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && exit 0
echo "==> making $OUT (Mistral-7B-v0.1's tokenizer in a tiny GGUF, with transformers' reference ids)"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s scripts/spm-fixture/requirements.txt "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --progress-bar off --disable-pip-version-check -r scripts/spm-fixture/requirements.txt
  cp scripts/spm-fixture/requirements.txt "$VENV/requirements.txt"
fi
mkdir -p "$OUT"
"$VENV/bin/python" scripts/spm-fixture/make_fixture.py "$OUT"
echo "$STAMP" > "$OUT/stamp"
