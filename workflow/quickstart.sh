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
if [ $# -eq 0 ]; then
  echo "This was the demo preset, a wiring check (networks trained for minutes). The converged results"
  echo "are the study's: $PWD/reports/study/index.html (workflow/presets/study.yaml, hours on a CPU)."
fi
