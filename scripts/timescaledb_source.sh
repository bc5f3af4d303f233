#!/usr/bin/env bash
# timescaledb_source.sh DEST: unpack the verified TimescaleDB source (with tsl/) into DEST and
# print the source directory. The version and hashes come from scripts/versions.env.
#
#   1. The vendored copy, ../shared/vendor/timescaledb-<version>.tar.gz (relative to the
#      repository root; TICKSTACK_VENDOR_DIR overrides the directory), is used when present: its
#      sha256 must be TIMESCALEDB_SHA256 (the vendor MANIFEST's value), else it is refused.
#   2. Without it, the same release is downloaded from upstream (TICKSTACK_TIMESCALEDB_URL
#      overrides the URL). A download's archive bytes may differ from the vendored file, so it
#      is checked by TIMESCALEDB_TREE_SHA256 instead: the hash of the unpacked tree
#      (scripts/tree_sha256.sh), computed offline from the vendored copy.
#   Either way the unpacked tree must have TIMESCALEDB_TREE_SHA256 and contain tsl/.
# Exit 0 with the directory on stdout; 1 (with the reason on stderr) when nothing verified.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -eq 1 ] || { echo "usage: timescaledb_source.sh DEST" >&2; exit 2; }
DEST=$1
set -a; . "$ROOT/scripts/versions.env"; set +a
V=$TIMESCALEDB_VERSION
VENDOR_DIR="${TICKSTACK_VENDOR_DIR:-$ROOT/../shared/vendor}"
URL="${TICKSTACK_TIMESCALEDB_URL:-https://github.com/timescale/timescaledb/archive/refs/tags/$V.tar.gz}"
say() { echo "timescaledb_source: $*" >&2; }
die() { echo "timescaledb_source: ERROR: $*" >&2; exit 1; }

mkdir -p "$DEST"
archive="$VENDOR_DIR/timescaledb-$V.tar.gz"
if [ -f "$archive" ]; then
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  [ "$got" = "$TIMESCALEDB_SHA256" ] || die "$archive: sha256 $got, expected $TIMESCALEDB_SHA256 \
(TIMESCALEDB_SHA256 in scripts/versions.env, as in the vendor MANIFEST.md): refusing it"
  say "using the vendored $archive (sha256 $got matches)"
else
  say "no vendored copy at $archive: downloading $URL"
  archive="$DEST/timescaledb-$V.tar.gz"
  curl -fsSL --retry 3 -o "$archive" "$URL" || die "download failed: $URL"
fi
tar -xzf "$archive" -C "$DEST" || die "$archive: not a readable .tar.gz"
src="$DEST/timescaledb-$V"
[ -d "$src" ] || die "$archive: has no top directory timescaledb-$V"
[ -d "$src/tsl/src" ] || die "$src: no tsl/ (an Apache-only tree); the licensed build needs it"
tree=$(bash "$ROOT/scripts/tree_sha256.sh" "$src")
[ "$tree" = "$TIMESCALEDB_TREE_SHA256" ] || die "$src: tree sha256 $tree, expected \
$TIMESCALEDB_TREE_SHA256 (TIMESCALEDB_TREE_SHA256 in scripts/versions.env): refusing it"
say "source tree verified (tree sha256 $tree)"
echo "$src"
