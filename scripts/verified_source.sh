#!/usr/bin/env bash
# verified_source.sh NAME DEST: unpack one verified upstream source of the version table into
# DEST and print its directory. NAME: postgresql | timescaledb | timescaledb-previous | pgvector;
# its version and hashes are the table's <NAME>_VERSION, _SHA256, _TREE_SHA256 rows
# (scripts/versions.env; NAME upper-cased, - as _).
#
#   1. The vendored copy in ../shared/vendor (relative to the repository root; TICKSTACK_VENDOR_DIR
#      overrides the directory) is used when present: its sha256 must be the table's (the vendor
#      MANIFEST's value), else it is refused.
#   2. Without it, the same release is downloaded from upstream (TICKSTACK_SOURCE_URL overrides
#      the URL). A GitHub tag archive's bytes may differ from the vendored file, so where the table
#      has a _TREE_SHA256 the unpacked tree is checked by it (scripts/tree_sha256.sh, computed
#      offline from the vendored copy); a PostgreSQL release tarball is the same file on every
#      mirror and is checked by its sha256.
# Exit 0 with the directory on stdout; 1 (with the reason on stderr) when nothing verified.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -eq 2 ] || { echo "usage: verified_source.sh NAME DEST" >&2; exit 2; }
NAME=$1 DEST=$2
set -a; . "$ROOT/scripts/versions.env"; set +a
say() { echo "verified_source: $*" >&2; }
die() { echo "verified_source: ERROR: $*" >&2; exit 1; }
KEY=$(echo "$NAME" | tr 'a-z-' 'A-Z_')
V=$(eval "echo \${${KEY}_VERSION:-}")
SHA=$(eval "echo \${${KEY}_SHA256:-}")
TREE=$(eval "echo \${${KEY}_TREE_SHA256:-}")
case $NAME in
  postgresql) file="postgresql-$V.tar.bz2" top="postgresql-$V"
              url="https://ftp.postgresql.org/pub/source/v$V/$file" ;;
  timescaledb|timescaledb-previous)
              file="timescaledb-$V.tar.gz" top="timescaledb-$V"
              url="https://github.com/timescale/timescaledb/archive/refs/tags/$V.tar.gz" ;;
  pgvector)   file="pgvector-$V.tar.gz" top="pgvector-$V"
              url="https://github.com/pgvector/pgvector/archive/refs/tags/v$V.tar.gz" ;;
  *) die "unknown source $NAME (postgresql, timescaledb, timescaledb-previous, pgvector)" ;;
esac
[ -n "$V" ] && [ -n "$SHA" ] || die "scripts/versions.env has no ${KEY}_VERSION / ${KEY}_SHA256"
VENDOR_DIR="${TICKSTACK_VENDOR_DIR:-$ROOT/../shared/vendor}"
url="${TICKSTACK_SOURCE_URL:-$url}"

mkdir -p "$DEST"
archive="$VENDOR_DIR/$file"
if [ -f "$archive" ]; then
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  [ "$got" = "$SHA" ] || die "$archive: sha256 $got, expected $SHA (${KEY}_SHA256 in \
scripts/versions.env, as in the vendor MANIFEST.md): refusing it"
  say "using the vendored $archive (sha256 $got matches)"
else
  say "no vendored copy at $archive: downloading $url"
  archive="$DEST/$file"
  curl -fsSL --retry 3 -o "$archive" "$url" || die "download failed: $url"
  if [ -z "$TREE" ]; then
    got=$(sha256sum "$archive" | cut -d' ' -f1)
    [ "$got" = "$SHA" ] || die "$url: sha256 $got, expected $SHA (${KEY}_SHA256 in \
scripts/versions.env): refusing it"
  fi
fi
rm -rf "${DEST:?}/$top"
tar -xf "$archive" -C "$DEST" || die "$archive: not a readable archive"
src="$DEST/$top"
[ -d "$src" ] || die "$archive: has no top directory $top"
case $NAME in timescaledb*)
  [ -d "$src/tsl/src" ] || die "$src: no tsl/ (an Apache-only tree); the licensed build needs it" ;;
esac
if [ -n "$TREE" ]; then
  tree=$(bash "$ROOT/scripts/tree_sha256.sh" "$src")
  [ "$tree" = "$TREE" ] || die "$src: tree sha256 $tree, expected $TREE (${KEY}_TREE_SHA256 in \
scripts/versions.env): refusing it"
  say "source tree verified (tree sha256 $tree)"
fi
echo "$src"
