#!/usr/bin/env bash
# Create ./.venv and install lmid with the exact versions of requirements.lock (idempotent:
# re-running is quick). The lock pins torch==2.13.0 without a build label; LMID_TORCH installs a
# chosen build first, e.g. LMID_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lmid needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.lmid-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up .venv (first run: a few minutes) ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  [ -z "${LMID_TORCH:-}" ] || .venv/bin/python -m pip install --quiet $LMID_TORCH
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install -qq --no-deps -e .  # -qq: hide setuptools' editable-install notice
  echo "$want" > "$stamp"
fi
