#!/usr/bin/env bash
# tree_sha256.sh DIR: one sha256 for a source tree's content, independent of how it was archived.
#
# The release archive's own sha256 depends on the archiver (a GitHub download of a tag and a
# vendored copy of the same tag may differ byte for byte); the unpacked tree does not. The hash
# is sha256 over: `sha256sum` lines of every regular file (paths relative to DIR, `./`-prefixed,
# sorted bytewise), then one `symlink PATH -> TARGET` line per symbolic link (same order).
# Modes and timestamps are not part of it. scripts/versions.env pins it as TIMESCALEDB_TREE_SHA256.
set -euo pipefail
[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: tree_sha256.sh DIR" >&2; exit 2; }
cd "$1"
{
  find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  find . -type l -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' l; do
    printf 'symlink %s -> %s\n' "$l" "$(readlink "$l")"
  done
} | sha256sum | cut -d' ' -f1
