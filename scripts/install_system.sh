#!/usr/bin/env bash
# Installs the database stack of scripts/versions.env (and, for the local environment, its other
# Debian packages): PostgreSQL, pgBackRest, pgvector, and TimescaleDB with its TSL part
# (compression, job policies), each built from its verified upstream source.
#
#   PostgreSQL POSTGRESQL_VERSION: built from the release tarball (scripts/verified_source.sh:
#              ../shared/vendor, else a download checked against the table's sha256) into
#              /usr/lib/postgresql/PG_MAJOR, on Debian 12 and 13 alike (no Debian package of it
#              installs on Debian 12). TimescaleDB and pgvector likewise, against it.
#   pgBackRest: Debian trixie's binary package of the table's version (private apt configuration;
#              on Debian 12 its t64-renamed dependencies are mapped back, see install_pgbackrest).
#   --with-previous (always in the primary's image): the build an in-place upgrade comes from,
#              PostgreSQL PG_PREVIOUS_MAJOR (Debian 12's package; on Debian 13 built from Debian
#              12's source package) with TimescaleDB TIMESCALEDB_PREVIOUS_VERSION and pgvector
#              PGVECTOR_PREVIOUS_VERSION (Debian trixie's source), plus TimescaleDB
#              TIMESCALEDB_PREVIOUS_VERSION for PG_MAJOR: pg_upgrade needs the same TimescaleDB
#              on both sides (docs/upgrading.md).
#
# Builds are cached by version in TICKSTACK_BUILD_DIR (default /var/cache/tickstack-build/trees,
# machine-wide): a second checkout, or a reinstall after the previous TimescaleDB was added,
# reuses the built tree. Idempotent and quick when done: every part is checked first
# (PostgreSQL's version, pgBackRest's, each extension's default version AND its libraries) and
# skipped when right. Installing TimescaleDB over an older build keeps the older
# timescaledb-<old>.so, so clusters created with it still start; `python -m infra.local up`
# updates them in place (ALTER EXTENSION timescaledb UPDATE).
#
# usage: install_system.sh [--dry-run] [--assume-fresh] [--os-release FILE] [--profile P] [--with-previous] [--rebuild]
#   --dry-run        print what would be fetched, built and installed; change nothing (no root)
#   --assume-fresh   with --dry-run: plan for a machine with nothing installed
#   --os-release F   read the Debian release from F instead of /etc/os-release
#   --profile P      local (default): everything `make up`/`make test` need;
#                    image: the database server only (with the previous build), build tools
#                    removed afterwards (the primary's image, infra/images/primary/Dockerfile);
#                    pgbackrest: pgBackRest only (the workers' image, workers/Dockerfile)
#   --with-previous  also the build an in-place major upgrade starts from (see above)
#   --rebuild        build PostgreSQL, pgvector and TimescaleDB again even when installed (the
#                    same versions; bench/install.py times a fresh machine's builds with it)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "install_system: $*"; }
die() { echo "install_system: ERROR: $*" >&2; exit 1; }
usage() { sed -n '/^# usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DRY=0 FRESH=0 OS_RELEASE=/etc/os-release PROFILE=local PREVIOUS=0 REBUILD=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --assume-fresh) FRESH=1 ;;
    --os-release) [ $# -ge 2 ] || usage; OS_RELEASE=$2; shift ;;
    --profile) [ $# -ge 2 ] || usage; PROFILE=$2; shift ;;
    --with-previous) PREVIOUS=1 ;;
    --rebuild) REBUILD=1 ;;
    -h|--help) usage ;;
    *) echo "install_system: unknown option $1" >&2; usage ;;
  esac
  shift
done
case $PROFILE in local|image|pgbackrest) ;;
  *) echo "install_system: --profile local|image|pgbackrest" >&2; exit 2 ;; esac
[ $FRESH = 0 ] || [ $DRY = 1 ] || { echo "install_system: --assume-fresh needs --dry-run" >&2; exit 2; }
# The image always carries the previous build: the cloud's upgrade Job runs pg_upgrade in it.
[ $PROFILE = image ] && PREVIOUS=1
[ $PROFILE = pgbackrest ] && PREVIOUS=0

set -a; . "$ROOT/scripts/versions.env"; set +a
[ "$RDS_ENGINE_MAJOR" = "$PG_MAJOR" ] || die "the local replica runs PostgreSQL $PG_MAJOR but \
RDS_ENGINE_MAJOR is $RDS_ENGINE_MAJOR: a split major upgrade is not supported locally \
(docs/upgrading.md)"
case $POSTGRESQL_VERSION in "$PG_MAJOR".*) ;;
  *) die "POSTGRESQL_VERSION $POSTGRESQL_VERSION is not a release of PG_MAJOR $PG_MAJOR" ;; esac

[ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE"
DEBIAN=$( . "$OS_RELEASE"; [ "${ID:-}" = debian ] && echo "${VERSION_ID:-}" || true)
case $DEBIAN in
  12) PREV_FROM=debian-package ;;
  13) PREV_FROM=bookworm-source ;;
  *) die "$OS_RELEASE: not Debian 12 or 13 (ID/VERSION_ID); tickstack installs on those only" ;;
esac
PG_PREFIX="/usr/lib/postgresql/${PG_MAJOR}"
PG_CONFIG="$PG_PREFIX/bin/pg_config"
PREV_PG_CONFIG="/usr/lib/postgresql/${PG_PREVIOUS_MAJOR}/bin/pg_config"
BUILD_ROOT="${TICKSTACK_BUILD_DIR:-/var/cache/tickstack-build}"
TREES="$BUILD_ROOT/trees"
JOBS=$(nproc)
[ $DRY = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages); \
--dry-run shows the plan without root"
export DEBIAN_FRONTEND=noninteractive
[ $DRY = 1 ] && say "DRY RUN: nothing is fetched, built or installed"
if [ $PROFILE = pgbackrest ]; then say "Debian $DEBIAN, profile $PROFILE: pgBackRest $PGBACKREST_VERSION"
else say "Debian $DEBIAN, profile $PROFILE: PostgreSQL $POSTGRESQL_VERSION (from source), pgBackRest \
$PGBACKREST_VERSION, pgvector $PGVECTOR_VERSION, TimescaleDB $TIMESCALEDB_VERSION (TSL)"
  [ $PREVIOUS = 0 ] || say "with the previous build: PostgreSQL $PG_PREVIOUS_MAJOR ($PREV_FROM), \
TimescaleDB $TIMESCALEDB_PREVIOUS_VERSION (for $PG_PREVIOUS_MAJOR and $PG_MAJOR), pgvector $PGVECTOR_PREVIOUS_VERSION"
fi

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
if [ $DRY = 0 ]; then mkdir -p "$BUILD_ROOT" "$TREES"; : > "$LOG"; fi

# --- what is there ----------------------------------------------------------------------------
installed() {  # installed PKG: the Debian package is installed
  [ $FRESH = 0 ] && [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
ext_version() {  # ext_version PG_CONFIG NAME: default_version of the installed extension, or nothing
  [ $FRESH = 0 ] && [ -x "$1" ] || return 0
  sed -n "s/^default_version = '\(.*\)'$/\1/p" \
    "$("$1" --sharedir)/extension/$2.control" 2>/dev/null || true
}
have_lib() { [ $FRESH = 0 ] && [ -x "$1" ] && [ -f "$("$1" --pkglibdir)/$2" ]; }
pg_version() { [ $FRESH = 0 ] && [ -x "$1" ] && "$1" --version | sed -n 's/^PostgreSQL \([0-9.]*\).*$/\1/p'; }
have_pg() { [ "$(pg_version "$PG_CONFIG")" = "$POSTGRESQL_VERSION" ]; }
have_prev_pg() { [ $FRESH = 0 ] && [ -x "$PREV_PG_CONFIG" ] && "$PREV_PG_CONFIG" --version | grep -q " ${PG_PREVIOUS_MAJOR}\."; }
pgbackrest_version() {
  [ $FRESH = 0 ] && command -v pgbackrest >/dev/null || return 0
  pgbackrest version 2>/dev/null | sed -n 's/^pgBackRest \([0-9.]*\)$/\1/p'
}
have_ts_libs() {  # have_ts_libs PG_CONFIG VERSION: its library AND its TSL library
  have_lib "$1" "timescaledb-$2.so" && have_lib "$1" "timescaledb-tsl-$2.so"
}

# --- Debian packages --------------------------------------------------------------------------
# PostgreSQL's build needs bison and flex (release tarballs no longer carry the generated
# parser) and the -dev packages of what it is configured with; postgresql-common makes the
# `postgres` system user the servers run as.
if [ $PROFILE = pgbackrest ]; then DEB_PACKAGES=(ca-certificates)
else DEB_PACKAGES=(cmake build-essential dpkg-dev ca-certificates curl bzip2 pkg-config bison flex
  libreadline-dev zlib1g-dev libssl-dev libicu-dev liblz4-dev libzstd-dev tzdata postgresql-common)
fi
[ $PROFILE = local ] && DEB_PACKAGES+=(
  stunnel4 openssl iproute2
  zstd  # bench/backup.py's floor; `workers restore` reads archived WAL (compress-type=zst)
  chromium  # headless browser: the report test opens the HTML report
)
if [ $PREVIOUS = 1 ] && [ $PREV_FROM = debian-package ]; then
  DEB_PACKAGES+=("postgresql-$PG_PREVIOUS_MAJOR" "postgresql-server-dev-$PG_PREVIOUS_MAJOR")
fi
missing=()
for p in "${DEB_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  # postgresql-common must not make (and start) a default cluster: tickstack runs its own.
  [ $PROFILE = pgbackrest ] || run "no default cluster" \
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

# --- PostgreSQL (the table's release, from source) ---------------------------------------------
# A built tree is kept in $TREES/<name>-<version>[-pg<version>] with a stamp: reinstalling (a
# second checkout, the current TimescaleDB after the previous one) is `make install` from it.
tree_of() {  # tree_of NAME KEY: unpack the verified source once into its cached tree; print its dir
  local name=$1 key=$2 dest="$TREES/$2"
  if [ $DRY = 1 ]; then
    echo "  would unpack the verified $name source (scripts/verified_source.sh) into $dest" >&2
    echo "$dest/src"; return; fi
  if [ -f "$dest/.tickstack-built" ]; then cat "$dest/.tickstack-built"; return; fi
  rm -rf "$dest"; mkdir -p "$dest"
  bash "$ROOT/scripts/verified_source.sh" "$name" "$dest" 2>>"$LOG" ||
    { tail -n 5 "$LOG" >&2; die "no verified $name source (see above)"; }
}
built() {  # built KEY DIR: stamp a finished build tree
  [ $DRY = 1 ] || echo "$2" > "$TREES/$1/.tickstack-built"
}
if [ $PROFILE != pgbackrest ]; then
  if [ $REBUILD = 0 ] && have_pg; then say "PostgreSQL $POSTGRESQL_VERSION: installed"
  else
    key="postgresql-$POSTGRESQL_VERSION"
    dir=$(tree_of postgresql "$key")
    if [ $DRY = 0 ] && [ -f "$TREES/$key/.tickstack-built" ]; then
      say "installing PostgreSQL $POSTGRESQL_VERSION from the cached build in $TREES/$key"
    else
      say "building PostgreSQL $POSTGRESQL_VERSION into $PG_PREFIX (about 8 minutes on 2 cores)"
      run "postgresql configure" sh -c "cd '$dir' && ./configure --prefix='$PG_PREFIX' \
        --with-openssl --with-icu --with-lz4 --with-zstd --with-system-tzdata=/usr/share/zoneinfo"
      run "postgresql make" make -C "$dir" -j"$JOBS" world-bin
      built "$key" "$dir"
    fi
    run "postgresql install" make -C "$dir" install-world-bin
    [ $DRY = 1 ] || have_pg || die "PostgreSQL $POSTGRESQL_VERSION is still missing after the build (see $LOG)"
  fi
fi

# --- the previous major (the build an in-place upgrade comes from) ----------------------------
if [ $PREVIOUS = 1 ] && [ $PREV_FROM = bookworm-source ]; then
  if have_prev_pg; then say "PostgreSQL $PG_PREVIOUS_MAJOR: installed"
  else build_debs bookworm "postgresql-$PG_PREVIOUS_MAJOR" "postgresql-$PG_PREVIOUS_MAJOR-*" \
         "postgresql-$PG_PREVIOUS_MAJOR" "postgresql-client-$PG_PREVIOUS_MAJOR" \
         "postgresql-server-dev-$PG_PREVIOUS_MAJOR"
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
  got=$(pgbackrest_version)
  [ "$got" = "$PGBACKREST_VERSION" ] || die "pgBackRest is ${got:-missing}, the version table \
says $PGBACKREST_VERSION (PGBACKREST_VERSION in scripts/versions.env)"
fi
if [ $PROFILE = pgbackrest ]; then
  [ $DRY = 1 ] || run "apt clean" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* "$0"' "$BUILD_ROOT"
  [ $DRY = 1 ] || say "pgBackRest $PGBACKREST_VERSION ready"
  exit 0
fi

# --- pgvector ---------------------------------------------------------------------------------
# OPTFLAGS="" : no -march=native, so the build runs on any machine of this kind.
if [ $REBUILD = 0 ] && [ "$(ext_version "$PG_CONFIG" vector)" = "$PGVECTOR_VERSION" ] &&
   have_lib "$PG_CONFIG" vector.so; then
  say "pgvector $PGVECTOR_VERSION: installed"
else
  say "building pgvector $PGVECTOR_VERSION for PostgreSQL $PG_MAJOR"
  key="pgvector-$PGVECTOR_VERSION-pg$PG_MAJOR"
  dir=$(tree_of pgvector "$key")
  run "pgvector make" make -C "$dir" -j"$JOBS" PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
  built "$key" "$dir"
  run "pgvector install" make -C "$dir" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" install
fi
if [ $PREVIOUS = 1 ]; then
  if [ $REBUILD = 0 ] && [ "$(ext_version "$PREV_PG_CONFIG" vector)" = "$PGVECTOR_PREVIOUS_VERSION" ] &&
     have_lib "$PREV_PG_CONFIG" vector.so; then
    say "pgvector $PGVECTOR_PREVIOUS_VERSION for PostgreSQL $PG_PREVIOUS_MAJOR: installed"
  else
    fetch_source trixie pgvector
    dir=$(unpacked "pgvector-*")
    if [ $DRY = 0 ]; then
      got=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$dir/vector.control")
      [ "$got" = "$PGVECTOR_PREVIOUS_VERSION" ] || die "Debian trixie's pgvector source is $got, \
the version table says PGVECTOR_PREVIOUS_VERSION=$PGVECTOR_PREVIOUS_VERSION"
    fi
    say "building pgvector $PGVECTOR_PREVIOUS_VERSION for PostgreSQL $PG_PREVIOUS_MAJOR"
    run "pgvector (previous) make" make -C "$dir" -j"$JOBS" PG_CONFIG="$PREV_PG_CONFIG" OPTFLAGS=""
    run "pgvector (previous) install" make -C "$dir" PG_CONFIG="$PREV_PG_CONFIG" OPTFLAGS="" install
  fi
fi

# --- TimescaleDB with TSL (verified upstream source) ------------------------------------------
ts_install() {  # ts_install NAME VERSION PG_CONFIG MAJOR: build (or reuse the cached build), install
  local name=$1 v=$2 pgc=$3 key dir
  key="timescaledb-$v-pg$4"  # extensions keep their ABI across a major's minor releases
  dir=$(tree_of "$name" "$key")
  if [ $DRY = 0 ] && [ -f "$TREES/$key/.tickstack-built" ]; then
    say "installing TimescaleDB $v for PostgreSQL $4 from the cached build in $TREES/$key"
  else
    say "building TimescaleDB $v with its TSL part for PostgreSQL $4 (about 5 minutes on 2 cores)"
    # No -DAPACHE_ONLY: the TSL part is built (timescaledb-tsl-<version>.so).
    run "timescaledb $v cmake" cmake -S "$dir" -B "$dir/build" -DPG_CONFIG="$pgc" \
      -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
      -DUSE_TELEMETRY=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
    run "timescaledb $v make" make -C "$dir/build" -j"$JOBS"
    built "$key" "$dir"
  fi
  run "timescaledb $v install" make -C "$dir/build" install
  [ $DRY = 1 ] || have_ts_libs "$pgc" "$v" || die "TimescaleDB $v with TSL is still missing for \
$pgc after the build (see $LOG)"
}
if [ $PREVIOUS = 1 ]; then
  if [ $REBUILD = 0 ] && have_ts_libs "$PREV_PG_CONFIG" "$TIMESCALEDB_PREVIOUS_VERSION"; then
    say "TimescaleDB $TIMESCALEDB_PREVIOUS_VERSION for PostgreSQL $PG_PREVIOUS_MAJOR: installed"
  else ts_install timescaledb-previous "$TIMESCALEDB_PREVIOUS_VERSION" "$PREV_PG_CONFIG" "$PG_PREVIOUS_MAJOR"; fi
fi
# For PG_MAJOR the previous version goes in first and the table's last: `make install` writes
# the extension's control file (its default version) and the loader, which must be the newest.
reinstall=0
if [ $PREVIOUS = 1 ] && { [ $REBUILD = 1 ] || ! have_ts_libs "$PG_CONFIG" "$TIMESCALEDB_PREVIOUS_VERSION"; }; then
  ts_install timescaledb-previous "$TIMESCALEDB_PREVIOUS_VERSION" "$PG_CONFIG" "$PG_MAJOR"
  reinstall=1
fi
if [ $reinstall = 0 ] && [ $REBUILD = 0 ] &&
   [ "$(ext_version "$PG_CONFIG" timescaledb)" = "$TIMESCALEDB_VERSION" ] &&
   have_ts_libs "$PG_CONFIG" "$TIMESCALEDB_VERSION"; then
  say "TimescaleDB $TIMESCALEDB_VERSION with TSL: installed"
else
  old=$(ext_version "$PG_CONFIG" timescaledb)
  ts_install timescaledb "$TIMESCALEDB_VERSION" "$PG_CONFIG" "$PG_MAJOR"
  if [ $DRY = 0 ]; then
    [ "$(ext_version "$PG_CONFIG" timescaledb)" = "$TIMESCALEDB_VERSION" ] ||
      die "TimescaleDB's default version is not $TIMESCALEDB_VERSION after the install (see $LOG)"
    say "TimescaleDB $TIMESCALEDB_VERSION (TSL) installed${old:+ over $old}: clusters made with" \
        "an older version still start and are updated in place (ALTER EXTENSION timescaledb" \
        "UPDATE) at every start of the primary"
  fi
fi

# --- the image keeps the servers only ---------------------------------------------------------
if [ $PROFILE = image ]; then
  say "keeping the built servers' runtime libraries, removing build tools from the image"
  # The source builds are not Debian packages: the libraries they load are marked as wanted
  # before the -dev packages (and with them anything automatic) are purged.
  mark_runtime_libs() {
    local lib pkgs=()
    for lib in $(ldd /usr/lib/postgresql/*/bin/* /usr/lib/postgresql/*/lib/*.so 2>/dev/null |
                 awk '/=> \// {print $3}' | sort -u); do
      # usrmerge: ldd says /lib/..., dpkg may know it as /usr/lib/...
      pkgs+=("$( (dpkg -S "$lib" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null) | head -n1 | cut -d: -f1)")
    done
    printf '%s\n' "${pkgs[@]}" | sed '/^$/d' | sort -u | xargs -r apt-mark manual
  }
  run "mark runtime libraries" mark_runtime_libs
  run "purge build tools" apt-get purge -y -qq --auto-remove cmake build-essential dpkg-dev \
    bison flex pkg-config libreadline-dev zlib1g-dev libssl-dev libicu-dev liblz4-dev libzstd-dev \
    "postgresql-server-dev-$PG_PREVIOUS_MAJOR"
  run "apt clean" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* "$0"' "$BUILD_ROOT"
fi
[ $DRY = 1 ] || say "PostgreSQL $POSTGRESQL_VERSION, pgBackRest $PGBACKREST_VERSION, pgvector" \
  "$PGVECTOR_VERSION, TimescaleDB $TIMESCALEDB_VERSION (TSL) ready$([ $PREVIOUS = 0 ] ||
  echo ", with the previous build for upgrades")"
