#!/usr/bin/env bash
# The one-machine deployment of deploy/nginx, started and checked by scripts/scale-out.py: Debian's nginx
# (installed if missing, without starting its own service), a throw-away PostgreSQL (scripts/with-postgres.sh),
# N release replicas. Needs `make site fetch-model`. Options go to scale-out.py (--replicas, --duration, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
if ! command -v nginx >/dev/null; then
  echo "==> apt-get install nginx"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  # Keep the package from starting the system's nginx on port 80: this check runs its own.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx >/dev/null
fi
scripts/with-postgres.sh python3 scripts/scale-out.py "$@"
