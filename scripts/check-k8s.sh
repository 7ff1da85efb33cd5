#!/usr/bin/env bash
# Validates deploy/k8s offline (scripts/check-k8s.py): the Kubernetes schemas from PyPI's kubernetes-validate,
# installed into target/k8s-venv; then shows that the check refuses broken manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/k8s-venv
REQ=deploy/k8s/requirements.txt
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar off --disable-pip-version-check -q -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi
"$VENV/bin/python" scripts/check-k8s.py --self-test
