#!/bin/sh
# tickstack-postgres: the primary image's entry point. The Pulumi program runs it as
# `postgres -c config_file=...` (infra/components/database.py) with PGDATA on the volume.
#
# An empty data directory is initialised first, as the local environment does
# (infra/local/postgres.py): data checksums, scram over TCP, peer on the socket, the superuser's
# password from the file POSTGRES_PASSWORD_FILE names (or POSTGRES_PASSWORD), and the database
# POSTGRES_DB (default tickstack). A data directory that holds a database is never re-initialised.
#
# Every start of a data directory that already held a database first brings its extensions to
# the image's versions, before any client can connect: the server starts with the pod's options
# on a private socket only (listen_addresses='', no TCP); `ALTER EXTENSION timescaledb UPDATE`
# and `ALTER EXTENSION vector UPDATE` run as the first command of a fresh session in each
# database that has them; each outcome is logged ("timescaledb <old> -> <new> in database
# tickstack", "timescaledb <new>: up to date in database tickstack"); the server stops (fast)
# and only then starts for real. Idempotent: a second start finds everything up to date. A
# version left behind, or a data directory of another PostgreSQL major (docs/upgrading.md: the
# major upgrade Job), fails the start (exit 1). A data directory in recovery (a restore, a
# standby) starts as it is: nothing can be written to it.
# Any other command is run as given.
set -eu

log() { echo "tickstack-postgres: $*"; }
fail() { echo "tickstack-postgres: $*" >&2; exit 1; }

# psql on the private socket as the superuser (peer): each call a fresh session whose first
# command is $2. The database name goes through the environment, never parsed as conninfo.
private_psql() {
  PGDATABASE=$1 psql -X -q -At -v ON_ERROR_STOP=1 -h "$private_dir" -p "$private_port" \
    -U postgres -c "$2"
}

stop_private() {
  if [ -n "${private_pid:-}" ]; then
    kill -INT "$private_pid" 2>/dev/null || true
    wait "$private_pid" || true
    private_pid=
  fi
  if [ -n "${private_dir:-}" ]; then
    rm -rf "$private_dir"
    private_dir=
  fi
}

# Stop the private server, then fail with the message.
abort() { stop_private; fail "$@"; }

update_extension() {  # database, extension
  have=$(private_psql "$1" "SELECT e.extversion || ' ' || a.default_version
      FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
      WHERE e.extname = '$2'") || abort "database $1: could not read the version of $2"
  [ -n "$have" ] || return 0
  found=1
  old=${have% *}
  want=${have#* }
  if [ "$old" = "$want" ]; then
    log "$2 $old: up to date in database $1"
    return 0
  fi
  # The first command of a fresh session: nothing has loaded the old library in it yet.
  private_psql "$1" "ALTER EXTENSION $2 UPDATE" \
    || abort "database $1: ALTER EXTENSION $2 UPDATE failed ($old -> $want)"
  new=$(private_psql "$1" "SELECT extversion FROM pg_extension WHERE extname = '$2'") \
    || abort "database $1: could not read the version of $2 after ALTER EXTENSION $2 UPDATE"
  [ "$new" = "$want" ] \
    || abort "database $1: ALTER EXTENSION $2 UPDATE left version $new, not $want"
  log "$2 $old -> $new in database $1"
}

update_extensions() {  # the server's options
  image_major=$(postgres -V | sed -n 's/^postgres (PostgreSQL) \([0-9][0-9]*\).*/\1/p')
  data_major=$(cat "$PGDATA/PG_VERSION")
  if [ "$data_major" != "$image_major" ]; then
    fail "$PGDATA holds a PostgreSQL $data_major cluster and this image runs PostgreSQL" \
      "$image_major: upgrade it first (docs/upgrading.md: the primaryMajorUpgrade Job)"
  fi
  if [ -e "$PGDATA/recovery.signal" ] || [ -e "$PGDATA/standby.signal" ]; then
    log "$PGDATA is in recovery: its extensions are not updated on this start"
    return 0
  fi
  private_dir=$(mktemp -d)  # /tmp: a writable volume
  private_port=5432  # only names the socket file: no TCP
  trap 'stop_private; exit 130' INT TERM
  log "checking extensions (PostgreSQL on a private socket, no TCP)"
  postgres "$@" -c listen_addresses= -c "unix_socket_directories=$private_dir" \
    -c "port=$private_port" &
  private_pid=$!
  until pg_isready -q -h "$private_dir" -p "$private_port"; do
    if ! kill -0 "$private_pid" 2>/dev/null; then
      rc=0
      wait "$private_pid" || rc=$?
      private_pid=
      abort "PostgreSQL did not start to update its extensions (exit $rc; its log above)"
    fi
    sleep 0.2
  done
  bad=$(private_psql postgres "SELECT count(*) FROM pg_database
                               WHERE datallowconn AND datname ~ '[\r\n]'") \
    || abort "could not list the databases"
  [ "$bad" = 0 ] || abort "$bad database name(s) hold a line break: cannot update their" \
    "extensions; rename them"
  dbs=$(private_psql postgres "SELECT datname FROM pg_database WHERE datallowconn
                               ORDER BY datname") || abort "could not list the databases"
  found=
  while IFS= read -r db <&3; do
    update_extension "$db" timescaledb
    update_extension "$db" vector
  done 3<<EOF
$dbs
EOF
  [ -n "$found" ] || log "no database has timescaledb or vector"
  kill -INT "$private_pid"
  rc=0
  wait "$private_pid" || rc=$?
  private_pid=
  stop_private
  trap - INT TERM
  [ "$rc" -eq 0 ] || fail "PostgreSQL did not stop cleanly after updating its extensions" \
    "(exit $rc)"
}

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
else
  # Before any client connects (a fresh cluster has no extension yet).
  update_extensions "$@"
fi
exec postgres "$@"
