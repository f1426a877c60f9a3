#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside the new environment, right after creating it from
# environment.yml. Snakemake copies that file under .snakemake/conda/ first, so a relative
# "-e ." in it would point there; lmid is installed from the folder Snakemake runs in instead,
# which is the project root (the folder with workflow/ and params.yaml).
set -euo pipefail
if ! grep -qs '^name = "lmid"' pyproject.toml; then
  echo "environment.post-deploy.sh: run snakemake from the lmid project folder (found no lmid pyproject.toml in $PWD)" >&2
  exit 1
fi
python -m pip install --no-deps -e .
