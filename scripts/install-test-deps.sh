#!/usr/bin/env bash
# Installs what the tests need beyond the build tools: Debian's Chromium and chromedriver (Playwright drives
# /usr/bin/chromium; it cannot download its own browser here) and the npm packages of end2end/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "==> apt-get install chromium chromium-driver"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x end2end/node_modules/.bin/playwright ] || [ end2end/package-lock.json -nt end2end/node_modules/.package-lock.json ]; then
  echo "==> npm ci (end2end)"
  (cd end2end && npm ci --no-fund --no-audit --loglevel=error)
fi
