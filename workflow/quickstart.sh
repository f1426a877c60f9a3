#!/usr/bin/env bash
# Quick start: set up ./.venv, run the whole pipeline (every method) on the embedded simulated
# data with the demo preset, and print where the report is. Extra arguments go to Snakemake,
# e.g. `bash workflow/quickstart.sh --configfile workflow/presets/paper.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --cores all "$@"
echo
echo "Report: $PWD/reports/index.html"
