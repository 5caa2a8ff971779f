#!/usr/bin/env bash
# Make the PostgreSQL server the tests use reachable: $AFFINAGE_TEST_POSTGRES_URL, by default
# postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a role that may CREATE DATABASE).
# Idempotent, in order: a server that answers is used as it is; else the installed cluster on that port is started;
# else Debian's `postgresql` package is installed (apt-get) and its cluster started. A cluster this script creates
# trusts the postgres role on loopback only, so that the URL needs no password. Needs root (or sudo) to start or
# install; a remote server must already run.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
URL=${AFFINAGE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
say() { echo "start-postgres: $*" >&2; }

# host and port of the URL, and whether a connection with it succeeds (the venv has psycopg)
read -r HOST PORT < <("$PYTHON" -c 'import sys; from sqlalchemy import make_url; u = make_url(sys.argv[1]); print(u.host or "127.0.0.1", u.port or 5432)' "$URL")
reachable() {
    "$PYTHON" - "$URL" <<'EOF' 2>/dev/null
import sys
import psycopg
from sqlalchemy import make_url

url = make_url(sys.argv[1])
psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False), connect_timeout=3).close()
EOF
}

if reachable; then
    say "PostgreSQL answers at $HOST:$PORT"
    exit 0
fi
case "$HOST" in
    127.0.0.1|localhost|::1) ;;
    *) say "no answer from $HOST:$PORT and it is not this machine: start that server, or unset AFFINAGE_TEST_POSTGRES_URL"
       exit 1 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else say "starting or installing PostgreSQL needs root (or sudo)"; exit 1; fi
fi

cluster() {  # "VERSION NAME STATUS" of the cluster on $PORT, if any
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters --no-header | awk -v port="$PORT" '$3 == port { print $1, $2, $4; exit }'
}

CREATED=""
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_lsclusters >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { say "PostgreSQL is not installed and apt-get is not available: install it yourself"; exit 1; }
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq postgresql >/dev/null
    CREATED=yes  # the package made its cluster just now
fi
if [ -z "$(cluster)" ]; then
    VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
    NAME=main
    if pg_lsclusters --no-header | awk '{ print $1, $2 }' | grep -qx "$VERSION main"; then NAME=affinage-test; fi
    say "creating cluster $VERSION/$NAME on port $PORT"
    $SUDO pg_createcluster "$VERSION" "$NAME" --port "$PORT" >/dev/null
    CREATED=yes
fi
read -r VERSION NAME STATUS < <(cluster)
if [ -n "$CREATED" ]; then
    HBA=/etc/postgresql/$VERSION/$NAME/pg_hba.conf
    say "letting the postgres role in without a password from loopback ($HBA)"
    printf '%s\n' "host all postgres 127.0.0.1/32 trust" "host all postgres ::1/128 trust" | $SUDO sh -c "cat - '$HBA' > '$HBA.new' && mv '$HBA.new' '$HBA'"
    $SUDO chown postgres:postgres "$HBA"
fi
if [ "$STATUS" = online ]; then
    [ -z "$CREATED" ] || $SUDO pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$NAME" reload
else
    say "starting cluster $VERSION/$NAME on port $PORT"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$NAME" start
fi

for _ in $(seq 1 30); do
    if reachable; then
        say "PostgreSQL answers at $HOST:$PORT"
        exit 0
    fi
    sleep 1
done
say "cluster $VERSION/$NAME runs on port $PORT but refuses $URL: let that role in (pg_hba.conf) or set AFFINAGE_TEST_POSTGRES_URL"
exit 1
