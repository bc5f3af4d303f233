#!/usr/bin/env bash
# Installs the database stack of scripts/versions.env (and, for the local environment, its other
# Debian packages): PostgreSQL PG_MAJOR, pgBackRest, pgvector, and TimescaleDB with its TSL part
# (compression, job policies) built from the verified upstream source.
#
#   Debian 12: PostgreSQL is the Debian package.
#   Debian 13: it has no postgresql-PG_MAJOR, so it is built from Debian 12's *source* package
#              (a private apt configuration adds a bookworm deb-src line; the machine's own apt
#              sources are never changed) and installed as .debs.
#   Both:      pgBackRest is Debian trixie's binary package of the table's version (private apt
#              configuration; on Debian 12 its t64-renamed dependencies are mapped back, see
#              install_pgbackrest); pgvector from Debian trixie's source package;
#              TimescaleDB from ../shared/vendor or a download of the same release, checked by
#              scripts/timescaledb_source.sh against the table's hashes.
#
# Idempotent and quick when done: every part is checked first (PostgreSQL's major, pgBackRest's
# version, each extension's version AND for TimescaleDB its TSL library) and skipped when right.
# Installing TimescaleDB over an older build keeps the older timescaledb-<old>.so, so clusters
# created with it still start; `python -m infra.local up` updates them in place.
#
# usage: install_system.sh [--dry-run] [--assume-fresh] [--os-release FILE] [--profile P]
#   --dry-run        print what would be fetched, built and installed; change nothing (no root)
#   --assume-fresh   with --dry-run: plan for a machine with nothing installed
#   --os-release F   read the Debian release from F instead of /etc/os-release
#   --profile P      local (default): everything `make up`/`make test` need;
#                    image: the database server only, build tools removed afterwards (the
#                    primary's image, infra/images/primary/Dockerfile);
#                    pgbackrest: pgBackRest only (the workers' image, workers/Dockerfile)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "install_system: $*"; }
die() { echo "install_system: ERROR: $*" >&2; exit 1; }
usage() { sed -n '/^# usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DRY=0 FRESH=0 OS_RELEASE=/etc/os-release PROFILE=local
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --assume-fresh) FRESH=1 ;;
    --os-release) [ $# -ge 2 ] || usage; OS_RELEASE=$2; shift ;;
    --profile) [ $# -ge 2 ] || usage; PROFILE=$2; shift ;;
    -h|--help) usage ;;
    *) echo "install_system: unknown option $1" >&2; usage ;;
  esac
  shift
done
case $PROFILE in local|image|pgbackrest) ;;
  *) echo "install_system: --profile local|image|pgbackrest" >&2; exit 2 ;; esac
[ $FRESH = 0 ] || [ $DRY = 1 ] || { echo "install_system: --assume-fresh needs --dry-run" >&2; exit 2; }

set -a; . "$ROOT/scripts/versions.env"; set +a
[ "$RDS_ENGINE_MAJOR" = "$PG_MAJOR" ] || die "the local replica runs PostgreSQL $PG_MAJOR but \
RDS_ENGINE_MAJOR is $RDS_ENGINE_MAJOR: a split major upgrade is not supported locally \
(docs/upgrading.md)"

[ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE"
DEBIAN=$( . "$OS_RELEASE"; [ "${ID:-}" = debian ] && echo "${VERSION_ID:-}" || true)
case $DEBIAN in
  12) PG_FROM=debian-package ;;
  13) PG_FROM=bookworm-source ;;
  *) die "$OS_RELEASE: not Debian 12 or 13 (ID/VERSION_ID); tickstack installs on those only" ;;
esac
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
BUILD_ROOT="${TICKSTACK_BUILD_DIR:-/var/cache/tickstack-build}"
JOBS=$(nproc)
[ $DRY = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages); \
--dry-run shows the plan without root"
export DEBIAN_FRONTEND=noninteractive
[ $DRY = 1 ] && say "DRY RUN: nothing is fetched, built or installed"
if [ $PROFILE = pgbackrest ]; then say "Debian $DEBIAN, profile $PROFILE: pgBackRest $PGBACKREST_VERSION"
else say "Debian $DEBIAN, profile $PROFILE: PostgreSQL $PG_MAJOR ($PG_FROM), pgBackRest \
$PGBACKREST_VERSION, pgvector $PGVECTOR_VERSION, TimescaleDB $TIMESCALEDB_VERSION (TSL)"; fi

LOG="$BUILD_ROOT/build.log"
run() {  # run NAME CMD... : run and log (dry run: print); on failure show the log's tail
  local name=$1; shift
  if [ $DRY = 1 ]; then echo "  would run: $*"; return 0; fi
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install_system: ERROR: step '$name' failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}
if [ $DRY = 0 ]; then mkdir -p "$BUILD_ROOT"; : > "$LOG"; fi

# --- what is there ----------------------------------------------------------------------------
installed() {  # installed PKG: the Debian package is installed
  [ $FRESH = 0 ] && [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
ext_version() {  # ext_version NAME: default_version of the installed extension, or nothing
  [ $FRESH = 0 ] && [ -x "$PG_CONFIG" ] || return 0
  sed -n "s/^default_version = '\(.*\)'$/\1/p" \
    "$("$PG_CONFIG" --sharedir)/extension/$1.control" 2>/dev/null || true
}
have_lib() { [ $FRESH = 0 ] && [ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/$1" ]; }
have_pg() { [ $FRESH = 0 ] && [ -x "$PG_CONFIG" ] && "$PG_CONFIG" --version | grep -q " ${PG_MAJOR}\."; }
pgbackrest_version() {
  [ $FRESH = 0 ] && command -v pgbackrest >/dev/null || return 0
  pgbackrest version 2>/dev/null | sed -n 's/^pgBackRest \([0-9.]*\)$/\1/p'
}
have_timescaledb() {  # the table's version, its library AND its TSL library
  [ "$(ext_version timescaledb)" = "$TIMESCALEDB_VERSION" ] &&
    have_lib "timescaledb-$TIMESCALEDB_VERSION.so" &&
    have_lib "timescaledb-tsl-$TIMESCALEDB_VERSION.so"
}

# --- Debian packages --------------------------------------------------------------------------
if [ $PROFILE = pgbackrest ]; then DEB_PACKAGES=(ca-certificates)
else DEB_PACKAGES=(cmake build-essential dpkg-dev ca-certificates curl); fi
[ $PROFILE = local ] && DEB_PACKAGES+=(
  stunnel4 openssl iproute2
  zstd  # bench/backup.py's floor; `workers restore` reads archived WAL (compress-type=zst)
  chromium  # headless browser: the report test opens the HTML report
)
if [ $PROFILE = pgbackrest ]; then :
elif [ $PG_FROM = debian-package ]; then
  DEB_PACKAGES+=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR")
else
  # Debian 13's postgresql-common serves every major; the server itself is built below.
  DEB_PACKAGES+=(postgresql-common libpq-dev)
fi
missing=()
for p in "${DEB_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  [ $PROFILE = image ] && run "no default cluster" \
    sh -c 'mkdir -p /etc/postgresql-common/createcluster.d &&
           echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/tickstack.conf'
  run "apt-get update" apt-get update -qq
  run "apt-get install" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- private apt configurations (deb-src of another Debian release) ----------------------------
mirror() {  # the machine's Debian mirror: the URIs: line of the deb822 file, not a snapshot URL
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "cannot find the machine's Debian mirror in /etc/apt/sources.list.d/debian.sources"
  echo "$m"
}
declare -A APT_READY=()
apt_src() {  # apt_src SUITE ARGS...: apt-get with only SUITE's deb-src, in private directories
  apt_private deb-src "$@"
}
apt_bin() {  # apt_bin SUITE ARGS...: apt-get with only SUITE's binary index, in private directories
  apt_private deb "$@"
}
apt_private() {  # apt_private deb|deb-src SUITE ARGS...
  local kind=$1 suite=$2; shift 2
  local dir="$BUILD_ROOT/apt-$suite-$kind"
  local opts=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o "Dir::Etc::sourceparts=$dir/sources.list.d"
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "APT::Sandbox::User=root")
  if [ -z "${APT_READY[$suite-$kind]:-}" ]; then
    local line="$kind [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(mirror) $suite main"
    if [ $DRY = 1 ]; then
      echo "  would configure private apt in $dir: $line"
    else
      mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
      echo "$line" > "$dir/sources.list"
    fi
    run "apt-get update ($suite $kind)" apt-get "${opts[@]}" update
    APT_READY[$suite-$kind]=1
  fi
  run "apt-get $* ($suite)" apt-get "${opts[@]}" "$@"
}
# One scratch directory for every source build, removed at exit.
if [ $DRY = 1 ]; then WORK="$BUILD_ROOT/src.XXXXXX"; else
  WORK=$(mktemp -d "$BUILD_ROOT/src.XXXXXX"); trap 'rm -rf "$WORK"' EXIT; fi
unpacked() {  # unpacked GLOB: the directory dpkg-source made (dry run: the glob)
  local d
  if [ $DRY = 1 ]; then echo "$WORK/$1"; return; fi
  d=$(find "$WORK" -maxdepth 1 -type d -name "$1" | head -n1)
  [ -n "$d" ] || die "no source directory $1 in $WORK"
  echo "$d"
}
fetch_source() {  # fetch_source SUITE PKG: download and unpack a Debian source package
  local suite=$1 pkg=$2
  say "fetching $suite source package $pkg"
  if [ $DRY = 1 ]; then
    apt_src "$suite" source --download-only "$pkg"
    echo "  would run: dpkg-source -x ${pkg}_*.dsc (in $WORK)"
    return
  fi
  cd "$WORK"
  apt_src "$suite" source --download-only "$pkg"
  local dsc
  dsc=$(ls "$WORK/${pkg}"_*.dsc | head -n1)
  run "dpkg-source -x $dsc" dpkg-source --no-check -x "$dsc"
  cd /
}
build_debs() {  # build_debs SUITE SRCPKG DIRGLOB BINPKG...: build Debian packages, install some
  local suite=$1 src=$2 glob=$3; shift 3
  fetch_source "$suite" "$src"
  local dir; dir=$(unpacked "$glob")
  say "building $src from Debian $suite's source (tests and docs skipped)"
  run "build-dep $src" apt-get build-dep -y -qq "$dir"
  run "dpkg-buildpackage $src" env DEB_BUILD_OPTIONS="nocheck nodoc parallel=$JOBS" \
    sh -c "cd '$dir' && dpkg-buildpackage -b -uc -us"
  local debs=() p
  for p in "$@"; do
    if [ $DRY = 1 ]; then debs+=("$WORK/${p}_*.deb"); else
      debs+=("$(ls "$WORK/${p}"_*.deb | head -n1)"); fi
  done
  say "installing ${*}"
  run "install $src packages" apt-get install -y -qq --no-install-recommends "${debs[@]}"
}

# --- PostgreSQL on Debian 13 (from Debian 12's source package) --------------------------------
if [ $PG_FROM = bookworm-source ] && [ $PROFILE != pgbackrest ]; then
  if have_pg; then say "PostgreSQL $PG_MAJOR: installed"
  else build_debs bookworm "postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-*" \
         "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
  fi
fi

# --- pgBackRest: Debian trixie's binary package, on both releases -----------------------------
# Older releases (Debian 12 ships one) poll every query to PostgreSQL with a 100 ms sleep, which
# made a backup's fixed cost ~2 s of waiting (bench/backup.py), and lack block incremental.
# trixie's package of the table's version is the one build for both: its library dependencies
# were renamed for the 64-bit time_t transition (libssl3t64, libssh2-1t64), a rename that on
# 64-bit architectures changed no ABI, so on Debian 12 the package's control file is rewritten
# to the old names and installed like any .deb; the binary is then checked to load and to
# report the table's version. Its source package is not fetchable here, so it is not rebuilt.
install_pgbackrest() {
  if [ "$(pgbackrest_version)" = "$PGBACKREST_VERSION" ]; then
    say "pgBackRest $PGBACKREST_VERSION: installed"; return; fi
  say "installing pgBackRest $PGBACKREST_VERSION (Debian trixie's binary package)"
  local arch deb
  arch=$(dpkg --print-architecture)
  case $arch in amd64|arm64) ;; *) die "pgBackRest from trixie: $arch is not a 64-bit \
architecture this install maps the t64 packages on" ;; esac
  if [ $DRY = 1 ]; then
    apt_bin trixie download "pgbackrest=$PGBACKREST_VERSION-*"
    [ "$DEBIAN" = 12 ] && echo "  would rewrite its Depends for Debian 12 (libssl3t64 -> libssl3," \
      "libssh2-1t64 -> libssh2-1, libzstd1 without the trixie minimum)"
    echo "  would run: apt-get install $WORK/pgbackrest_$PGBACKREST_VERSION-*_$arch.deb"
    return
  fi
  cd "$WORK"
  apt_bin trixie download "pgbackrest=$PGBACKREST_VERSION-*"
  deb=$(ls "$WORK"/pgbackrest_"$PGBACKREST_VERSION"-*_"$arch".deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "Debian trixie has no pgbackrest $PGBACKREST_VERSION for $arch"
  if [ "$DEBIAN" = 12 ]; then
    run "unpack $deb" dpkg-deb -R "$deb" "$WORK/pgbackrest-deb"
    sed -i -e '/^Depends:/{s/libssl3t64/libssl3/; s/libssh2-1t64/libssh2-1/;' \
           -e 's/libzstd1 ([^)]*)/libzstd1/; }' \
           -e 's/^Version: \(.*\)$/Version: \1+tickstack.deb12/' "$WORK/pgbackrest-deb/DEBIAN/control"
    deb="$WORK/pgbackrest_deb12.deb"
    run "repack for Debian 12" dpkg-deb -b "$WORK/pgbackrest-deb" "$deb"
  fi
  cd /
  run "install pgbackrest" apt-get install -y -qq --no-install-recommends --allow-downgrades "$deb"
  if ldd "$(command -v pgbackrest)" | grep -q "not found"; then
    die "pgBackRest $PGBACKREST_VERSION does not load on Debian $DEBIAN: $(ldd \
"$(command -v pgbackrest)" | grep "not found" | tr -s ' \n' ' ')"
  fi
}
install_pgbackrest
if [ $DRY = 0 ]; then
  [ $PROFILE = pgbackrest ] || have_pg || die "PostgreSQL $PG_MAJOR is not installed ($PG_CONFIG)"
  got=$(pgbackrest_version)
  [ "$got" = "$PGBACKREST_VERSION" ] || die "pgBackRest is ${got:-missing}, the version table \
says $PGBACKREST_VERSION (PGBACKREST_VERSION in scripts/versions.env)"
fi
if [ $PROFILE = pgbackrest ]; then
  [ $DRY = 1 ] || run "apt clean" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* "$0"' "$BUILD_ROOT"
  [ $DRY = 1 ] || say "pgBackRest $PGBACKREST_VERSION ready"
  exit 0
fi

# --- pgvector (Debian trixie's source package) ------------------------------------------------
if [ "$(ext_version vector)" = "$PGVECTOR_VERSION" ] && have_lib vector.so; then
  say "pgvector $PGVECTOR_VERSION: installed"
else
  fetch_source trixie pgvector
  dir=$(unpacked "pgvector-*")
  if [ $DRY = 0 ]; then
    got=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$dir/vector.control")
    [ "$got" = "$PGVECTOR_VERSION" ] || die "Debian trixie's pgvector source is $got, the version \
table says $PGVECTOR_VERSION: update PGVECTOR_VERSION in scripts/versions.env (and test it)"
  fi
  say "building pgvector $PGVECTOR_VERSION"
  # OPTFLAGS="" : no -march=native, so the build runs on any machine of this kind.
  run "pgvector make" make -C "$dir" -j"$JOBS" PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
  run "pgvector install" make -C "$dir" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" install
fi

# --- TimescaleDB with TSL (verified upstream source) ------------------------------------------
if have_timescaledb; then
  say "TimescaleDB $TIMESCALEDB_VERSION with TSL: installed"
else
  old=$(ext_version timescaledb)
  say "building TimescaleDB $TIMESCALEDB_VERSION with its TSL part (about 5 minutes on 2" \
      "cores)${old:+; it replaces $old as the default, whose library stays so clusters start}"
  if [ $DRY = 1 ]; then
    vend="$ROOT/../shared/vendor/timescaledb-$TIMESCALEDB_VERSION.tar.gz"
    if [ -f "$vend" ] && [ "$(sha256sum "$vend" | cut -d' ' -f1)" = "$TIMESCALEDB_SHA256" ]; then
      echo "  would use the vendored ../shared/vendor/timescaledb-$TIMESCALEDB_VERSION.tar.gz (sha256 matches)"
    else
      echo "  would download release $TIMESCALEDB_VERSION and check tree sha256 $TIMESCALEDB_TREE_SHA256"
    fi
    dir="$WORK/timescaledb-$TIMESCALEDB_VERSION"
  else
    dir=$(bash "$ROOT/scripts/timescaledb_source.sh" "$WORK" 2>>"$LOG") ||
      { tail -n 5 "$LOG" >&2; die "no verified TimescaleDB source (see above)"; }
  fi
  # No -DAPACHE_ONLY: the TSL part is built (timescaledb-tsl-<version>.so).
  run "timescaledb cmake" cmake -S "$dir" -B "$dir/build" -DPG_CONFIG="$PG_CONFIG" \
    -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
    -DUSE_TELEMETRY=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  run "timescaledb make" make -C "$dir/build" -j"$JOBS"
  run "timescaledb install" make -C "$dir/build" install
  if [ $DRY = 0 ]; then
    have_timescaledb || die "TimescaleDB $TIMESCALEDB_VERSION with TSL is still missing after the build (see $LOG)"
    say "TimescaleDB $TIMESCALEDB_VERSION (TSL) installed${old:+ over $old}: clusters made with" \
        "an older version still start and are updated in place (ALTER EXTENSION timescaledb" \
        "UPDATE) by \`python -m infra.local up\`"
  fi
fi

# --- the image keeps the server only ----------------------------------------------------------
if [ $PROFILE = image ]; then
  say "removing build tools from the image"
  run "purge build tools" apt-get purge -y -qq --auto-remove cmake build-essential dpkg-dev \
    "postgresql-server-dev-$PG_MAJOR"
  run "apt clean" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* "$0"' "$BUILD_ROOT"
fi
[ $DRY = 1 ] || say "PostgreSQL $PG_MAJOR, pgBackRest $PGBACKREST_VERSION, pgvector" \
  "$PGVECTOR_VERSION, TimescaleDB $TIMESCALEDB_VERSION (TSL) ready"
