#!/usr/bin/env bash
# Two runs of the whole pipeline from scratch must give byte-identical metrics.json. The tiny
# test preset runs every step and every method in a couple of minutes, so CI checks determinism
# on it twice over instead of on a third run of the twenty-minute demo. Its outputs go to their own
# folders (data/ci-determinism, reports/ci-determinism), leaving the demo's untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
work=data/ci-determinism
preset=$(mktemp --suffix=.yaml)
python - "$preset" "$work" <<'PY'
import sys
import yaml

out, work = sys.argv[1], sys.argv[2]
tree = yaml.safe_load(open("tests/presets/tiny.yaml"))
tree["paths"] = {"data": work, "reports": f"reports/ci-determinism"}
tree["data"]["root"] = f"{work}/raw"
yaml.safe_dump(tree, open(out, "w"), sort_keys=False)
PY
first=$(mktemp)
for run in 1 2; do
  # Training resumes from checkpoints, so every network retrains only if its folder is gone.
  rm -rf "$work" reports/ci-determinism
  snakemake --cores all --quiet rules --configfile "$preset"
  [ "$run" = 1 ] && cp reports/ci-determinism/metrics.json "$first"
done
status=0
if cmp -s reports/ci-determinism/metrics.json "$first"; then
  echo "determinism: two runs from scratch gave byte-identical metrics.json"
else
  echo "determinism: metrics.json differs between two runs from scratch"
  diff <(python -m json.tool "$first") <(python -m json.tool reports/ci-determinism/metrics.json) | head -40
  status=1
fi
rm -rf "$work" reports/ci-determinism "$preset" "$first"
exit $status
