#!/usr/bin/env bash
# Creates .venv and installs tickstack with all extras, pinned by constraints.txt.
# Idempotent: a stamp holds the hash of what was installed; unchanged inputs return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.tickstack-installed"
PYTHON="${PYTHON:-python3}"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

echo "install_python: installing Python dependencies into $VENV (pinned by constraints.txt)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e '.[workers,infra,dev]'
echo "$want" > "$STAMP"
echo "install_python: done"
