#!/usr/bin/env bash
# Run the test suite in ./.venv (set up first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
