#!/usr/bin/env bash
# Regenerate requirements.lock: exact versions of lmid's dependencies and of its `workflow` and
# `test` extras, resolved by pip-compile (pip-tools) from pyproject.toml for Python 3.11 on Linux.
#   bash workflow/scripts/lock.sh
# torch is written without its build label (2.13.0, not 2.13.0+cpu): `torch==2.13.0` is met by the
# CPU and the CUDA builds alike, so one lock serves laptops and GPU nodes (LMID_TORCH picks the build).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install --quiet pip-tools
"$tools/bin/pip-compile" --quiet --extra workflow --extra test --strip-extras --no-emit-find-links \
  --no-emit-index-url --output-file requirements.lock pyproject.toml
sed -i -E 's/^(torch==[0-9.]+)\+[A-Za-z0-9.]+/\1/' requirements.lock
# The test extra names lmid[workflow]; lmid itself is installed from the checkout, not the lock.
sed -i -E '/^lmid @ /,/^[^ ]/{/^lmid @ /d;/^    /d}' requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
