#!/usr/bin/env bash
# The demo preset run twice on CPU must give byte-identical reports/metrics.json: once through
# Slurm (.ci/slurm-demo.sh, just before) and once more here, from scratch, on the workstation path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
first=$(mktemp)
cp reports/metrics.json "$first"
# Training resumes from data/models/*/checkpoint.pt, which --forceall keeps: remove everything
# produced so far so that every network really trains again.
rm -rf data
snakemake --cores all --forceall --quiet rules
if cmp -s reports/metrics.json "$first"; then
  echo "determinism: two demo runs gave byte-identical reports/metrics.json"
else
  echo "determinism: reports/metrics.json differs between two runs of the demo preset"
  diff <(python -m json.tool "$first") <(python -m json.tool reports/metrics.json) | head -40
  exit 1
fi
