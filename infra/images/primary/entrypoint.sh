#!/bin/sh
# tickstack-postgres: the primary image's entry point. The Pulumi program runs it as
# `postgres -c config_file=...` (infra/components/database.py) with PGDATA on the volume.
#
# An empty data directory is initialised first, as the local environment does
# (infra/local/postgres.py): data checksums, scram over TCP, peer on the socket, the superuser's
# password from the file POSTGRES_PASSWORD_FILE names (or POSTGRES_PASSWORD), and the database POSTGRES_DB (default tickstack). A data
# directory that holds a database is never touched. Any other command is run as given.
set -eu
if [ "${1:-}" != postgres ]; then
  exec "$@"
fi
shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    # The cloud's way: a mounted Secret file, never the environment.
    if [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
      echo "tickstack-postgres: POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE is missing or empty" >&2
      exit 1
    fi
  elif [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "tickstack-postgres: $PGDATA is empty and POSTGRES_PASSWORD is not set (nor POSTGRES_PASSWORD_FILE)" >&2
    exit 1
  fi
  echo "tickstack-postgres: initialising $PGDATA"
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)  # /tmp is a writable volume; the root filesystem is read-only
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    head -n 1 "$POSTGRES_PASSWORD_FILE" > "$pwfile"
  else
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  fi
  initdb -D "$PGDATA" -U postgres --pwfile "$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 --data-checksums -E UTF8 --locale=C.UTF-8
  rm -f "$pwfile"
  db=${POSTGRES_DB:-tickstack}
  case $db in
    *[!a-z0-9_]*|'') echo "tickstack-postgres: POSTGRES_DB must be [a-z0-9_]+" >&2; exit 1 ;;
  esac
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE %s;\n' "$db" | postgres --single -j -D "$PGDATA" postgres >/dev/null
    echo "tickstack-postgres: created database $db"
  fi
fi
exec postgres "$@"
