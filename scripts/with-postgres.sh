#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL server: Debian's `postgresql` (installed if missing), a new cluster in
# a temporary folder, listening on a free loopback port, stopped and deleted when the command ends. The command
# sees its URL in LORALAND_TEST_POSTGRES (a superuser's, so the tests can create a database each). The server also
# takes TLS (a self-signed certificate made here), for the tests of `sslmode=require`.
#
#   scripts/with-postgres.sh cargo test -p app
set -euo pipefail

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/initdb" ] && { echo "$dir"; return; }; done
  return 1
}
if ! BIN=$(pg_bin); then
  echo "==> apt-get install postgresql"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  BIN=$(pg_bin)
fi

DIR=$(mktemp -d /tmp/loraland-pg.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# initdb and postgres refuse to run as root: run them as the package's `postgres` user.
AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$DIR"
  AS=(runuser -u postgres --)
fi
stop() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap stop EXIT
"${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U loraland --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log"; exit 1; }
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -keyout "$DIR/server.key" \
  -out "$DIR/server.crt" >"$DIR/openssl.log" 2>&1 || { cat "$DIR/openssl.log"; exit 1; }
chmod 600 "$DIR/server.key"
[ "$(id -u)" = 0 ] && chown postgres: "$DIR/server.key" "$DIR/server.crt"
# No durability for a throw-away cluster; room for the tests' parallel pools.
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o \
  "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
  -c ssl=on -c ssl_cert_file=$DIR/server.crt -c ssl_key_file=$DIR/server.key" \
  start >/dev/null || { cat "$DIR/server.log"; exit 1; }
export LORALAND_TEST_POSTGRES="postgres://loraland@127.0.0.1:$PORT/postgres"
echo "==> PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT for the tests ($DIR)"
"$@"
