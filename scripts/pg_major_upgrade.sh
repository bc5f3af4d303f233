#!/usr/bin/env bash
# In-place PostgreSQL major upgrade of one stopped cluster (pg_upgrade), re-runnable.
#
#   pg_major_upgrade.sh --data DIR --old-bindir OLD --new-bindir NEW
#                       [--stanza NAME --pgbackrest-config FILE] [--work-dir DIR]
#                       [--mode auto|clone|link|copy]
#   pg_major_upgrade.sh --data DIR --delete-old
#
# The one procedure with two consumers: the local environment (infra/local/upgrade.py, at
# `make up`) and the cloud's upgrade Job (the primary image's /usr/local/bin/tickstack-major-upgrade).
# Runs as the cluster's OS user with the cluster STOPPED. Every server it starts listens on a
# private socket directory only (no TCP) and trusts that socket alone.
#
# Steps (each logged with its duration): check the old cluster; initdb the new one beside DIR
# (DIR.upgrade-new) with the old one's settings; pg_upgrade --check; pg_upgrade (--clone where
# the filesystem can, else --link); swap (DIR becomes the new cluster, the old one is kept as
# DIR.pg<old>: after --link it can no longer be started, it is kept only until the caller has a
# full backup and runs --delete-old); start the new cluster privately, ALTER EXTENSION
# timescaledb/vector UPDATE in each database (a fresh session each), vacuumdb
# --analyze-in-stages --missing-stats-only, stop it; with --stanza: pgbackrest stanza-upgrade.
#
# Re-runnable: DIR.upgrade-state (beside DIR) records the phase; a crash, SIGKILL or SIGTERM at
# any point leaves a state the next run completes. Before pg_upgrade has linked anything the old
# cluster is untouched; if pg_upgrade stops after renaming the old global/pg_control (link mode)
# but before its transfer finished, a rerun renames it back and starts over from initdb.
#
# Exit: 0 DIR holds the new major (also at once when it already did), 1 a step failed (the
# message names it; the old cluster is intact or a rerun completes the upgrade), 2 bad usage,
# 130 interrupted (SIGINT/SIGTERM: servers it started are stopped; a rerun continues).
set -euo pipefail

PORT=50432
prog=pg_major_upgrade

usage() {
  sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
said=0
bad() { said=1; echo "$prog: $*" >&2; exit 2; }
die() { said=1; echo "$prog: FAILED in step '${step:-start}': $*" >&2; exit 1; }
log() { echo "$prog: $*"; }

data="" old_bin="" new_bin="" stanza="" pgbr_conf="" work="" mode=auto delete_old=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) [ $# -ge 2 ] || usage; data=$2; shift 2 ;;
    --old-bindir) [ $# -ge 2 ] || usage; old_bin=$2; shift 2 ;;
    --new-bindir) [ $# -ge 2 ] || usage; new_bin=$2; shift 2 ;;
    --stanza) [ $# -ge 2 ] || usage; stanza=$2; shift 2 ;;
    --pgbackrest-config) [ $# -ge 2 ] || usage; pgbr_conf=$2; shift 2 ;;
    --work-dir) [ $# -ge 2 ] || usage; work=$2; shift 2 ;;
    --mode) [ $# -ge 2 ] || usage; mode=$2; shift 2 ;;
    --delete-old) delete_old=1; shift ;;
    -h|--help) usage ;;
    *) bad "unknown argument: $1 (see --help)" ;;
  esac
done
[ -n "$data" ] || bad "--data DIR is required"
case "$data" in /*) ;; *) data="$(pwd)/$data" ;; esac
data=${data%/}
parent=$(dirname "$data")
base=$(basename "$data")
marker="$parent/$base.upgrade-state"
newdir="$parent/$base.upgrade-new"
[ -d "$parent" ] || bad "--data $data: its parent directory does not exist"

pg_major_of_dir() {  # the major a data directory holds ("" when none)
  if [ -f "$1/PG_VERSION" ]; then tr -d '[:space:]' <"$1/PG_VERSION"; fi
}

# --- --delete-old: after the caller's full backup on the new major --------------------------
if [ "$delete_old" = 1 ]; then
  [ -z "$old_bin$new_bin$stanza$pgbr_conf" ] || bad "--delete-old takes --data only"
  [ ! -e "$marker" ] || { echo "$prog: $marker exists: an upgrade of $data is not finished;" \
    "rerun it before deleting the old cluster" >&2; exit 1; }
  cur=$(pg_major_of_dir "$data")
  [ -n "$cur" ] || { echo "$prog: $data holds no cluster: nothing is deleted" >&2; exit 1; }
  deleted=0
  for d in "$parent/$base".pg[0-9]*; do
    [ -d "$d" ] || continue
    was=$(pg_major_of_dir "$d")
    if [ -z "$was" ] || [ "$was" -ge "$cur" ]; then
      echo "$prog: $d holds PostgreSQL ${was:-nothing}, not an older major than $data's $cur:" \
        "left alone" >&2
      exit 1
    fi
    rm -rf -- "$d"
    log "deleted the old PostgreSQL $was cluster $d"
    deleted=1
  done
  [ "$deleted" = 1 ] || log "no old cluster beside $data: nothing to delete"
  rm -rf -- "$parent/$base.upgrade-work" "$parent/$base.upgrade-lock"
  exit 0
fi

# --- usage checks ------------------------------------------------------------------------------
[ -n "$old_bin" ] && [ -n "$new_bin" ] || bad "--old-bindir and --new-bindir are required"
for b in "$old_bin" "$new_bin"; do
  for t in pg_ctl pg_controldata postgres; do
    [ -x "$b/$t" ] || bad "$b/$t is missing (a PostgreSQL bin directory is expected)"
  done
done
for t in initdb pg_upgrade psql vacuumdb; do
  [ -x "$new_bin/$t" ] || bad "$new_bin/$t is missing"
done
[ -x "$old_bin/psql" ] || bad "$old_bin/psql is missing"
case "$mode" in auto|clone|link|copy) ;; *) bad "--mode $mode: one of auto, clone, link, copy" ;; esac
if [ -n "$stanza" ] || [ -n "$pgbr_conf" ]; then
  [ -n "$stanza" ] && [ -n "$pgbr_conf" ] || bad "--stanza and --pgbackrest-config go together"
  [ -r "$pgbr_conf" ] || bad "--pgbackrest-config $pgbr_conf is not readable"
  command -v pgbackrest >/dev/null || bad "--stanza given but pgbackrest is not installed"
fi
bin_major() { "$1/postgres" -V | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/'; }
old_major=$(bin_major "$old_bin")
new_major=$(bin_major "$new_bin")
[ "$old_major" -lt "$new_major" ] || bad "--old-bindir is PostgreSQL $old_major, --new-bindir" \
  "$new_major: an upgrade goes to a newer major"
kept="$data.pg$old_major"
# Done already (the marker goes last, so none and the new major means complete): nothing to do.
if [ ! -e "$marker" ] && [ "$(pg_major_of_dir "$data")" = "$new_major" ]; then
  log "$data: already PostgreSQL $new_major"
  exit 0
fi
[ -n "$work" ] || work="$parent/$base.upgrade-work"
case "$work" in /*) ;; *) work="$(pwd)/$work" ;; esac

# The private socket directory: inside the work directory unless its path is too long for a
# Unix socket; the same on every run (a rerun recognises the servers an earlier run started).
case "$data$work" in *"'"*|*'"'*|*'\'*|*' '*) bad "paths with quotes, backslashes or spaces are not supported: $data, $work" ;; esac
mkdir -p "$work"
chmod 700 "$work"
# pg_upgrade writes its scripts (delete_old_cluster.sh) into the current directory.
cd "$work"
sock="$work/s"
if [ $((${#sock} + 20)) -gt 100 ]; then
  sock="/tmp/tickstack-pgup-$(printf %s "$data" | sha1sum | cut -c1-12)"
fi
mkdir -p "$sock"
[ "$(stat -c %u "$sock")" = "$(id -u)" ] || die "$sock belongs to another user"
chmod 700 "$sock"
# Only this OS user reaches $sock (0700): trust there, nothing else.
hba="$work/pg_hba.trust.conf"
printf 'local all all trust\n' >"$hba"
private_opts="-c listen_addresses='' -c unix_socket_directories='$sock' -c unix_socket_permissions=0700 -c port=$PORT -c hba_file='$hba' -c archive_mode=off"

me=$(id -u)
step=""
step_t0=0
run_t0=$(date +%s)
begin() { step=$1; step_t0=$(date +%s); log "step: $1 ..."; }
end() { log "step: $step done in $(( $(date +%s) - step_t0 )) s"; }

phase() { if [ -e "$marker" ]; then sed -n 's/^phase=//p' "$marker"; fi; }
get() { sed -n "s/^$1=//p" "$marker"; }
set_phase() {  # the marker, replaced atomically and synced
  {
    echo "phase=$1"
    echo "old=$old_major"
    echo "new=$new_major"
    echo "mode=${chosen_mode:-}"
    echo "preload=${preload:-}"
    echo "superuser=${superuser:-$saved_superuser}"
  } >"$marker.tmp"
  sync "$marker.tmp" 2>/dev/null || true
  mv -f "$marker.tmp" "$marker"
  sync "$parent" 2>/dev/null || true
}

# --- servers: ours (on $sock) are stopped on any exit; anyone else's is refused ------------------
pid_line() { sed -n "${2}p" "$1/postmaster.pid" 2>/dev/null; }
is_running() {  # $1 bindir, $2 data dir
  [ -f "$2/postmaster.pid" ] && "$1/pg_ctl" -D "$2" status >/dev/null 2>&1
}
stop_ours() {  # $1 bindir, $2 data dir: stop it if it is a server on our private socket
  if is_running "$1" "$2" && [ "$(pid_line "$2" 5)" = "$sock" ]; then
    "$1/pg_ctl" -D "$2" -m fast -w -t 120 stop >/dev/null ||
      "$1/pg_ctl" -D "$2" -m immediate -w -t 60 stop >/dev/null
  fi
}
stop_all_ours() {
  local d b
  for d in "$data" "$newdir" "$kept"; do
    [ -d "$d" ] || continue
    for b in "$old_bin" "$new_bin"; do stop_ours "$b" "$d" || true; done
  done
}
start_private() {  # $1 bindir, $2 data dir, $3 log name, $4 extra -o options
  "$1/pg_ctl" -D "$2" -l "$work/$3.log" -o "$private_opts ${4:-}" -w -t 300 start >/dev/null 9>&- ||
    die "$2 did not start with $1 (log: $work/$3.log): $(tail -n 5 "$work/$3.log" 2>/dev/null)"
}
sql() {  # $1 bindir, $2 database, $3 statement: one fresh session; rows unaligned
  "$1/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$PORT" -U "$superuser" -d "$2" -c "$3"
}

# Crash points for the crash tests (as workers/core/crashpoint.py): TICKSTACK_CRASH_AT=point
# or point:SIGNAL sends that signal (SIGKILL unless named) to this script at that point. Unset
# in production. Points: upgrade-running (while pg_upgrade runs), upgrade-linked (pg_upgrade done,
# before the swap), swap-half (between the two renames), post-started (new cluster running).
crashpoint() {
  local spec=${TICKSTACK_CRASH_AT:-}
  [ "${spec%%:*}" = "$1" ] || return 0
  local sig=KILL
  [ "$spec" = "${spec#*:}" ] || sig=${spec#*:}
  sig=${sig#SIG}
  echo "crashpoint: SIG$sig at $1" >&2
  kill -s "$sig" $$
}

child=""
on_signal() {
  trap - INT TERM
  log "interrupted in step '${step:-start}': stopping what it started (a rerun continues)"
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  stop_all_ours
  exit 130
}
trap on_signal INT TERM
on_exit() {  # any other way out (a failed command under set -e included): our servers stop
  local rc=$?
  trap - EXIT
  if [ "$rc" != 0 ]; then
    stop_all_ours
    [ "$said" = 1 ] || [ "$rc" = 130 ] ||
      echo "$prog: FAILED in step '${step:-start}' (exit $rc); a rerun continues" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
run_child() {  # a long command in the background, so a signal is handled at once
  "$@" 9>&- &
  child=$!
  echo "$child $(basename "$1")" >"$work/child.pid"
  if [ "$(basename "$1")" = pg_upgrade ] && [[ " $* " != *" --check "* ]]; then
    crashpoint upgrade-running
  fi
  local rc=0
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

# One run at a time per data directory; its tools do not inherit the lock (fd 9), so a tool an
# earlier, killed run left behind is recognised by its pid instead.
exec 9>>"$parent/$base.upgrade-lock"
flock -n 9 || die "another $prog is running on $data"
if [ -f "$work/child.pid" ]; then
  read -r cpid cname <"$work/child.pid" || true
  # /proc, not ps: the primary image has no procps.
  if [ -n "${cpid:-}" ] && [ "$(cat "/proc/$cpid/comm" 2>/dev/null)" = "$cname" ]; then
    die "$cname (pid $cpid), started by an earlier run that was killed, is still running:" \
      "wait for it to end (or stop it), then rerun"
  fi
fi

# --- where are we? -------------------------------------------------------------------------------
if [ ! -e "$marker" ]; then
  cur=$(pg_major_of_dir "$data")
  [ -n "$cur" ] || die "$data holds no PostgreSQL cluster (no PG_VERSION)"
  [ "$cur" = "$old_major" ] || { echo "$prog: $data holds PostgreSQL $cur, but --old-bindir is" \
    "PostgreSQL $old_major" >&2; exit 2; }
  [ ! -e "$kept" ] || die "$kept exists (an earlier upgrade's old cluster?): move or delete it first"
  [ "$(stat -c %u "$data")" = "$me" ] || die "$data is owned by uid $(stat -c %u "$data"), this" \
    "runs as uid $me: run it as the cluster's OS user"
fi
superuser=""

check_old() {
  begin "check old cluster"
  local state
  if is_running "$old_bin" "$data"; then
    if [ "$(pid_line "$data" 5)" = "$sock" ]; then
      stop_ours "$old_bin" "$data"  # left by an interrupted run of this script
    else
      die "$data is in use by a running server (pid $(pid_line "$data" 1)): stop it first"
    fi
  fi
  for f in standby.signal recovery.signal backup_label; do
    [ ! -e "$data/$f" ] || die "$data/$f exists: the cluster is a standby or an unfinished" \
      "restore, not a primary to upgrade"
  done
  state=$("$old_bin/pg_controldata" "$data" | sed -n 's/^Database cluster state: *//p')
  case "$state" in
    "shut down") ;;
    "in production"|"in crash recovery"|"shutting down")
      log "$data was not shut down cleanly ($state): starting and stopping it with $old_bin"
      start_private "$old_bin" "$data" old-recovery
      "$old_bin/pg_ctl" -D "$data" -m fast -w -t 300 stop >/dev/null ||
        die "the old cluster did not stop after its crash recovery"
      state=$("$old_bin/pg_controldata" "$data" | sed -n 's/^Database cluster state: *//p')
      [ "$state" = "shut down" ] || die "$data is still '$state' after a clean stop" ;;
    *) die "$data's state is '$state': only a cleanly shut down primary can be upgraded" ;;
  esac
  # A started old cluster answers what pg_controldata cannot: superuser, locale, extensions.
  start_private "$old_bin" "$data" old-check
  local u
  for u in "$(id -un)" postgres; do
    superuser=$("$old_bin/psql" -X -At -h "$sock" -p "$PORT" -U "$u" -d template1 \
      -c "SELECT rolname FROM pg_roles WHERE oid = 10" 2>/dev/null) && break
  done
  [ -n "$superuser" ] || { stop_ours "$old_bin" "$data"
    die "cannot connect to the old cluster (as $(id -un) or postgres) to read its superuser"; }
  local vnum loc_col
  vnum=$(sql "$old_bin" template1 "SHOW server_version_num")
  if [ "$vnum" -ge 170000 ]; then loc_col=datlocale
  elif [ "$vnum" -ge 150000 ]; then loc_col=daticulocale
  else loc_col="NULL::text"; fi
  local prov_col="datlocprovider"
  [ "$vnum" -ge 150000 ] || prov_col="'c'::\"char\""
  locale_row=$(sql "$old_bin" template1 "SELECT pg_encoding_to_char(encoding), datcollate,
    datctype, $prov_col, coalesce($loc_col, '') FROM pg_database WHERE datname = 'template0'")
  preload=""
  attopts=""
  local db
  # One name a line (a database name may hold spaces); fd 3 keeps psql off the list.
  while IFS= read -r db <&3; do
    if [ "$(sql "$old_bin" "$db" "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")" != 0 ]; then
      preload=timescaledb
    fi
    # Column options (pg_attribute.attoptions) of the objects pg_upgrade carries over: key=value.
    attopts+=$(sql "$old_bin" "$db" "SELECT DISTINCT ON (k) k || '=' || v FROM pg_attribute,
      unnest(attoptions) o, split_part(o, '=', 1) k, substr(o, length(k) + 2) v
      WHERE attrelid >= 16384 ORDER BY k")$'\n'
  done 3< <(sql "$old_bin" template1 "SELECT datname FROM pg_database WHERE datallowconn")
  attopts=$(printf '%s' "$attopts" | sort -u -t= -k1,1 | sed '/^$/d')
  stop_ours "$old_bin" "$data"
  checksums=$("$old_bin/pg_controldata" "$data" | sed -n 's/^Data page checksum version: *//p')
  walseg=$("$old_bin/pg_controldata" "$data" | sed -n 's/^Bytes per WAL segment: *//p')
  log "old cluster: PostgreSQL $old_major, superuser $superuser, $(echo "$locale_row" | tr '|' ' '),"\
    "checksums ${checksums}, timescaledb $([ -n "$preload" ] && echo present || echo absent)"
  end
}

choose_mode() {
  chosen_mode=$mode
  if [ "$mode" = auto ]; then
    local probe="$parent/.$base.reflink-probe"
    head -c 4096 /dev/zero >"$probe"
    if cp --reflink=always "$probe" "$probe.clone" 2>/dev/null; then chosen_mode=clone
    else chosen_mode=link; fi
    rm -f "$probe" "$probe.clone"
  fi
}

initdb_new() {
  begin "initdb new cluster"
  rm -rf -- "$newdir"
  local enc collate ctype prov loc args
  IFS='|' read -r enc collate ctype prov loc <<<"$locale_row"
  args=(-D "$newdir" -U "$superuser" -E "$enc" --auth=trust)
  case "$prov" in
    i) args+=(--locale-provider=icu --icu-locale="$loc" --lc-collate="$collate" --lc-ctype="$ctype") ;;
    b) args+=(--locale-provider=builtin --builtin-locale="$loc" --lc-collate="$collate" --lc-ctype="$ctype") ;;
    *) args+=(--lc-collate="$collate" --lc-ctype="$ctype") ;;
  esac
  if [ "$checksums" != 0 ]; then args+=(--data-checksums)
  elif "$new_bin/initdb" --help | grep -q -- --no-data-checksums; then args+=(--no-data-checksums); fi
  [ -z "$walseg" ] || args+=(--wal-segsize=$((walseg / 1024 / 1024)))
  run_child "$new_bin/initdb" "${args[@]}" >"$work/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$work/initdb.log")"
  end
}

# pg_upgrade restores each column's options (pg_attribute.attoptions) as they are. An option the
# new major does not know fails the restore late, after --check passed: Debian's security release
# of the previous major (November 2026) gives every column a private `pg_attver`, which the new
# major's release rejects. Each
# option is tried on the new cluster; those it rejects are removed from the old cluster's columns
# (they mean nothing to the new major), in one transaction per database, before pg_upgrade.
strip_unknown_column_options() {
  [ -n "$attopts" ] || return 0
  begin "column options the new major rejects"
  local kv k rejected="" db n
  start_private "$new_bin" "$newdir" new-probe
  while IFS= read -r kv; do
    k=${kv%%=*}
    [[ "$k" =~ ^[a-z_][a-z0-9_]*$ ]] || { stop_ours "$new_bin" "$newdir"
      die "a column option of the old cluster has an unexpected name: ${k@Q}"; }
    [[ "${kv#*=}" =~ ^[A-Za-z0-9_.+-]*$ ]] || { stop_ours "$new_bin" "$newdir"
      die "column option $k has an unexpected value: ${kv#*=}"; }
    if ! sql "$new_bin" postgres "BEGIN; CREATE TEMP TABLE probe (a int);
        ALTER TABLE probe ALTER COLUMN a SET ($kv); ROLLBACK" >/dev/null 2>&1; then
      rejected+="$k "
    fi
  done <<<"$attopts"
  stop_ours "$new_bin" "$newdir"
  if [ -n "$rejected" ]; then
    start_private "$old_bin" "$data" old-strip
    # One name a line (a database name may hold spaces); fd 3 keeps psql off the list.
    while IFS= read -r db <&3; do
      for k in $rejected; do
        n=$(sql "$old_bin" "$db" "UPDATE pg_catalog.pg_attribute SET attoptions = NULLIF(ARRAY(
              SELECT o FROM unnest(attoptions) o WHERE o NOT LIKE '$k=%'), '{}')
            WHERE attrelid >= 16384 AND EXISTS (
              SELECT 1 FROM unnest(attoptions) o WHERE o LIKE '$k=%') RETURNING 1" | wc -l) ||
          { stop_ours "$old_bin" "$data"; die "database $db: removing column option $k failed"; }
        [ "$n" = 0 ] ||
          log "database $db: column option $k removed from $n columns (PostgreSQL $new_major rejects it)"
      done
    done 3< <(sql "$old_bin" template1 "SELECT datname FROM pg_database WHERE datallowconn")
    stop_ours "$old_bin" "$data"
  fi
  end
}

pg_upgrade_args() {
  local o="-c hba_file='$hba' -c archive_mode=off"
  [ -z "$preload" ] || o="$o -c shared_preload_libraries=$preload"
  up_args=(-b "$old_bin" -B "$new_bin" -d "$data" -D "$newdir" -U "$superuser"
           --socketdir="$sock" -p "$PORT" -P "$PORT" -o "$o" -O "$o")
  case "$chosen_mode" in
    clone) up_args+=(--clone) ;;
    link) up_args+=(--link) ;;
    copy) ;;
  esac
}

show_pg_upgrade_failure() {  # what pg_upgrade says went wrong, kept beside its own log
  if [ -d "$newdir/pg_upgrade_output.d" ]; then
    rm -rf "$work/pg_upgrade_output.d"
    cp -r "$newdir/pg_upgrade_output.d" "$work/" 2>/dev/null || true
  fi
  tail -n 15 "$work/$1.log" >&2 || true
  find "$work/pg_upgrade_output.d" -name '*.txt' -exec sh -c 'echo "--- $1"; head -n 40 "$1"' _ {} \; >&2 2>/dev/null || true
  # The reason of a failed schema restore is in pg_restore's own logs.
  grep -h -m 3 -E "(error|ERROR): " "$work"/pg_upgrade_output.d/*/log/*.log >&2 2>/dev/null || true
}

upgrade_check() {
  begin "pg_upgrade --check"
  pg_upgrade_args
  run_child "$new_bin/pg_upgrade" "${up_args[@]}" --check >"$work/pg_upgrade-check.log" 2>&1 || {
    show_pg_upgrade_failure pg_upgrade-check
    stop_all_ours
    rm -f "$marker"
    die "pg_upgrade --check failed (log: $work/pg_upgrade-check.log); the old cluster is untouched"
  }
  end
}

# After an interrupted or failed pg_upgrade: either its transfer was complete (its deletion script
# exists) and the new cluster is finished by starting it once, or the old cluster is put back
# (the .old suffix pg_upgrade --link gives global/pg_control removed) and the new one discarded.
recover_upgrade() {
  stop_all_ours
  if [ -e "$work/delete_old_cluster.sh" ] && [ -f "$newdir/PG_VERSION" ]; then
    log "pg_upgrade had transferred every file: finishing the new cluster"
    start_private "$new_bin" "$newdir" new-finish
    "$new_bin/pg_ctl" -D "$newdir" -m fast -w -t 300 stop >/dev/null
    return 0
  fi
  if [ -e "$data/global/pg_control.old" ] && [ ! -e "$data/global/pg_control" ]; then
    mv "$data/global/pg_control.old" "$data/global/pg_control"
    log "restored $data/global/pg_control (pg_upgrade had disabled the old cluster)"
  fi
  rm -rf -- "$newdir"
  return 1
}

upgrade() {
  begin "pg_upgrade --$chosen_mode"
  rm -f "$work/delete_old_cluster.sh"
  pg_upgrade_args
  local rc=0
  run_child "$new_bin/pg_upgrade" "${up_args[@]}" >"$work/pg_upgrade.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    show_pg_upgrade_failure pg_upgrade
    if recover_upgrade; then
      log "pg_upgrade exited $rc after transferring every file; the new cluster is complete"
    else
      set_phase initdb
      die "pg_upgrade failed (exit $rc, log: $work/pg_upgrade.log); the old cluster is back in" \
        "place and a rerun starts over"
    fi
  fi
  end
}

swap() {
  begin "swap directories"
  if [ "$(pg_major_of_dir "$data")" = "$old_major" ] && [ -d "$newdir" ]; then
    mv -- "$data" "$kept"
    crashpoint swap-half
  fi
  if [ ! -e "$data" ] && [ -d "$newdir" ] && [ -d "$kept" ]; then
    mv -- "$newdir" "$data"
  fi
  [ "$(pg_major_of_dir "$data")" = "$new_major" ] ||
    die "after the swap $data does not hold PostgreSQL $new_major (old: $kept, new: $newdir)"
  # What pg_upgrade does not carry: the old cluster's access files and its ALTER SYSTEM settings
  # (its main configuration may live outside the data directory: -c config_file=). A setting the
  # new major rejects stops the next step with the server's own message naming it.
  for f in pg_hba.conf pg_ident.conf postgresql.auto.conf; do
    [ ! -f "$kept/$f" ] || cp -p -- "$kept/$f" "$data/$f"
  done
  sync "$parent" 2>/dev/null || true
  log "$data is PostgreSQL $new_major; the old cluster is kept as $kept" \
    "$([ "$chosen_mode" = link ] && echo "(linked: it cannot be started any more)")"
  end
}

post() {
  begin "update extensions and statistics"
  stop_ours "$new_bin" "$data"
  local o=""
  [ -z "$preload" ] || o="-c shared_preload_libraries=$preload"
  start_private "$new_bin" "$data" new-post "$o"
  crashpoint post-started
  local db ext v
  # One name a line (a database name may hold spaces); fd 3 keeps psql off the list.
  while IFS= read -r db <&3; do
    for ext in timescaledb vector; do
      v=$(sql "$new_bin" "$db" "SELECT extversion FROM pg_extension WHERE extname = '$ext'") ||
        { stop_ours "$new_bin" "$data"; die "database $db: cannot read its extensions"; }
      [ -n "$v" ] || continue
      # A fresh session whose first command is the update (TimescaleDB requires it).
      sql "$new_bin" "$db" "ALTER EXTENSION $ext UPDATE" ||
        { stop_ours "$new_bin" "$data"; die "database $db: ALTER EXTENSION $ext UPDATE failed"; }
      log "database $db: $ext $v -> $(sql "$new_bin" "$db" "SELECT extversion FROM pg_extension WHERE extname = '$ext'")"
    done
  done 3< <(sql "$new_bin" template1 "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
  # Before server_version_num 160000 a CREATEROLE role could alter and grant any non-superuser
  # role; from then on only roles it holds WITH ADMIN OPTION, which it gets for the roles it
  # creates, not for those that came over from the old major. Keep what it could do (a managed
  # database's admin, the local replica's: `migrate` rotates the worker logins' passwords):
  # ADMIN OPTION, without INHERIT or SET, on every other non-superuser role it does not
  # administer yet and that is not its own member (that would be circular). Idempotent; logged.
  if [ "$old_major" -lt 16 ] && [ "$new_major" -ge 16 ]; then
    local granted
    granted=$(sql "$new_bin" postgres "DO \$\$
      DECLARE a record; r record; n int := 0;
      BEGIN
        FOR a IN SELECT oid, rolname FROM pg_roles
                 WHERE rolcreaterole AND NOT rolsuper AND rolname !~ '^pg_' LOOP
          FOR r IN SELECT oid, rolname FROM pg_roles
                   WHERE NOT rolsuper AND rolname !~ '^pg_' AND oid <> a.oid
                     AND NOT pg_has_role(a.oid, oid, 'MEMBER WITH ADMIN OPTION')
                     AND NOT pg_has_role(oid, a.oid, 'MEMBER') LOOP
            IF pg_has_role(a.oid, r.oid, 'MEMBER') THEN
              -- Already a member: add ADMIN only (naming INHERIT or SET would change the
              -- grant that made it one, when it has the same grantor).
              EXECUTE format('GRANT %I TO %I WITH ADMIN OPTION', r.rolname, a.rolname);
            ELSE
              EXECUTE format('GRANT %I TO %I WITH ADMIN OPTION, INHERIT FALSE, SET FALSE',
                             r.rolname, a.rolname);
            END IF;
            RAISE NOTICE 'tickstack-grant % administers %', a.rolname, r.rolname;
            n := n + 1;
          END LOOP;
        END LOOP;
      END \$\$" 2>&1 | sed -n 's/.*tickstack-grant //p') ||
      { stop_ours "$new_bin" "$data"; die "granting CREATEROLE roles ADMIN OPTION failed"; }
    [ -z "$granted" ] || log "CREATEROLE roles keep managing the roles they managed" \
      "(ADMIN OPTION, no SET/INHERIT): $(echo "$granted" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
  fi
  local va=(--all --analyze-in-stages -h "$sock" -p "$PORT" -U "$superuser")
  if "$new_bin/vacuumdb" --help | grep -q -- --missing-stats-only; then va+=(--missing-stats-only); fi
  run_child "$new_bin/vacuumdb" "${va[@]}" >"$work/vacuumdb.log" 2>&1 ||
    { stop_ours "$new_bin" "$data"; die "vacuumdb failed: $(tail -n 5 "$work/vacuumdb.log")"; }
  "$new_bin/pg_ctl" -D "$data" -m fast -w -t 300 stop >/dev/null || die "the new cluster did not stop"
  end
}

stanza_upgrade() {
  begin "pgbackrest stanza-upgrade"
  run_child pgbackrest --config="$pgbr_conf" --stanza="$stanza" --no-online stanza-upgrade \
    >"$work/stanza-upgrade.log" 2>&1 ||
    die "pgbackrest stanza-upgrade failed: $(tail -n 5 "$work/stanza-upgrade.log")"
  end
}

# --- the phases, from wherever the last run stopped ------------------------------------------------
chosen_mode=""
preload=""
saved_superuser=""
attopts=""
if [ -e "$marker" ]; then
  [ "$(get old)" = "$old_major" ] && [ "$(get new)" = "$new_major" ] ||
    bad "$marker records an upgrade from PostgreSQL $(get old) to $(get new), not $old_major to $new_major"
  chosen_mode=$(get mode)
  preload=$(get preload)
  saved_superuser=$(get superuser)
  log "continuing the upgrade of $data at phase '$(phase)'"
fi
while :; do
  p=$(phase)
  case "${p:-}" in
    "")
      check_old
      choose_mode
      set_phase initdb ;;
    initdb|check)
      # The old cluster's settings again (a rerun has no memory of them).
      if [ -z "$superuser" ]; then check_old; fi
      initdb_new
      strip_unknown_column_options
      upgrade_check
      set_phase upgrade ;;
    upgrade)
      if [ -z "$superuser" ]; then
        # A rerun: whatever an interrupted pg_upgrade left is settled first.
        if recover_upgrade; then set_phase swap; continue; fi
        set_phase initdb
        continue
      fi
      upgrade
      crashpoint upgrade-linked
      set_phase swap ;;
    swap)
      swap
      set_phase post ;;
    post)
      [ -n "$superuser" ] || superuser=$saved_superuser
      [ -n "$superuser" ] || die "$marker does not record the cluster's superuser"
      post
      if [ -n "$stanza" ]; then set_phase stanza; else set_phase done; fi ;;
    stanza)
      if [ -n "$stanza" ]; then stanza_upgrade; fi
      set_phase done ;;
    done)
      rm -f "$marker"
      break ;;
    *) die "$marker: unknown phase '$p'" ;;
  esac
done
how="pg_upgrade --$chosen_mode"
[ "$chosen_mode" != copy ] || how="pg_upgrade (copy)"
log "upgraded: PostgreSQL $old_major -> $new_major in $(( $(date +%s) - run_t0 )) s ($how);" \
  "old cluster kept until a full backup: $kept"
