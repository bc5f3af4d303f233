#!/usr/bin/env bash
# Installs what the local environment needs from Debian, and builds TimescaleDB + pgvector for
# the installed PostgreSQL 15 from Debian trixie *source* packages (bookworm has neither).
#
# Idempotent and quick when done: nothing is fetched when the packages and both extensions are
# already installed. The machine's own apt sources are never changed: trixie is reached through a
# private apt configuration under $BUILD_ROOT.
set -euo pipefail

PG_MAJOR=15
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
BUILD_ROOT="${TICKSTACK_BUILD_DIR:-/var/cache/tickstack-build}"
DEB_PACKAGES=(
  "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" pgbackrest stunnel4 openssl
  cmake build-essential dpkg-dev ca-certificates iproute2
  zstd  # `workers restore` reads archived WAL (pgBackRest compress-type=zst) before it starts
  chromium  # headless browser: the report test opens the HTML report
)
say() { echo "install_system: $*"; }
die() { echo "install_system: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages)"
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages ------------------------------------------------------------------------
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- extensions -----------------------------------------------------------------------------
[ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found (postgresql-server-dev-${PG_MAJOR})"
SHAREDIR=$("$PG_CONFIG" --sharedir)
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
have_ext() { [ -f "$SHAREDIR/extension/$1.control" ] && ls "$PKGLIBDIR/$2"*.so >/dev/null 2>&1; }

need=()
have_ext vector vector || need+=(pgvector)
have_ext timescaledb timescaledb || need+=(timescaledb)
[ ${#need[@]} -eq 0 ] && exit 0

# Private apt configuration for trixie sources, on the same mirror as the machine's own Debian
# sources (the URIs: line of the deb822 file, not a commented snapshot URL).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || die "cannot find the machine's Debian mirror in /etc/apt/sources.list.d/debian.sources"

APT_DIR="$BUILD_ROOT/apt"
mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
cat > "$APT_DIR/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
EOF
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
  -o "Dir::Etc::sourceparts=$APT_DIR/sources.list.d"
  -o "Dir::State::Lists=$APT_DIR/lists"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "APT::Sandbox::User=root"
)

LOG="$BUILD_ROOT/build.log"
: > "$LOG"
step() {  # step NAME CMD... : run, log, and on failure show the tail of the log
  local name=$1; shift
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install_system: ERROR: step '$name' failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

say "fetching trixie sources for: ${need[*]} (private apt config in $APT_DIR)"
step "apt-get update (trixie sources)" apt-get "${APT_OPTS[@]}" update
WORK=$(mktemp -d "$BUILD_ROOT/src.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
for src in "${need[@]}"; do
  step "apt-get source $src" apt-get "${APT_OPTS[@]}" source --download-only "$src"
done
for dsc in ./*.dsc; do
  step "dpkg-source -x $dsc" dpkg-source --no-check -x "$dsc"
done

JOBS=$(nproc)
if [[ " ${need[*]} " == *" pgvector "* ]]; then
  say "building pgvector"
  dir=$(find . -maxdepth 1 -type d -name 'pgvector-*' | head -n1)
  [ -n "$dir" ] || die "pgvector source did not unpack"
  # OPTFLAGS="" : no -march=native, so the build runs on any machine of this kind.
  step "pgvector make" make -C "$dir" -j"$JOBS" PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
  step "pgvector install" make -C "$dir" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" install
fi
if [[ " ${need[*]} " == *" timescaledb "* ]]; then
  say "building timescaledb (Apache-only: Debian's source has the TSL part removed)"
  dir=$(find . -maxdepth 1 -type d -name 'timescaledb-*' | head -n1)
  [ -n "$dir" ] || die "timescaledb source did not unpack"
  step "timescaledb cmake" cmake -S "$dir" -B "$dir/build" -DPG_CONFIG="$PG_CONFIG" \
    -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DLINTER=OFF -DUSE_TELEMETRY=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  step "timescaledb make" make -C "$dir/build" -j"$JOBS"
  step "timescaledb install" make -C "$dir/build" install
fi

have_ext vector vector || die "pgvector is still missing after the build (see $LOG)"
have_ext timescaledb timescaledb || die "timescaledb is still missing after the build (see $LOG)"
say "TimescaleDB and pgvector installed for PostgreSQL ${PG_MAJOR}"
