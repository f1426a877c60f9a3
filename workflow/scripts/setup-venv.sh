#!/usr/bin/env bash
# Create ./.venv and install lmid with its dependencies (idempotent: re-running is quick).
# torch is pinned first so that no other package pulls a different build; override with
# LMID_TORCH (e.g. LMID_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lmid needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.lmid-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up .venv (first run: a few minutes) ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install --quiet ${LMID_TORCH:-torch==2.13.0}
  .venv/bin/python -m pip install -qq -e .  # -qq: hide setuptools' editable-install notice; errors still show
  echo "$want" > "$stamp"
fi
