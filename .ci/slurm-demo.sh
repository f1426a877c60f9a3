#!/usr/bin/env bash
# Run the whole pipeline through the Slurm profile on the CI cluster (.ci/slurm-up.sh) and check,
# from Slurm's own accounting, that the cluster jobs really went through sbatch. It runs the tiny
# test preset (every step and method, sharded translations) in its own folders: the full demo is
# the quick start's, and through Slurm its 130 jobs would take most of CI's time budget.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export LMID_GPUS=0   # the CI node has no GPU: documented override, the rules stay as they are
work=data/ci-slurm
preset=$(mktemp --suffix=.yaml)
python - "$preset" "$work" <<'PY'
import sys
import yaml

out, work = sys.argv[1], sys.argv[2]
tree = yaml.safe_load(open("tests/presets/tiny.yaml"))
tree["paths"] = {"data": work, "reports": "reports/ci-slurm"}
tree["data"]["root"] = f"{work}/raw"
yaml.safe_dump(tree, open(out, "w"), sort_keys=False)
PY
rm -rf "$work" reports/ci-slurm

# Jobs Snakemake will submit = all jobs minus the local rules and the `all` target.
# (The dry run goes to a file first: an early-exiting reader would SIGPIPE it under pipefail.)
plan=$(mktemp)
snakemake --cores 1 --dry-run --forceall --nocolor --configfile "$preset" > "$plan" 2>&1
expected=$(awk '/^job +count/ && !seen {t=1;next} t&&/^total/{t=0;seen=1} t&&NF==2&&$1!~/^-/{print}' "$plan" \
  | grep -vE '^(all|gather|evaluate|aggregate|report|fit_segmenter) ' | awk '{s+=$2} END{print s}')
rm -f "$plan"
[ "${expected:-0}" -gt 0 ] || { echo "could not count the planned jobs"; exit 1; }
echo "expecting $expected Slurm jobs"
since=$(date +%Y-%m-%dT%H:%M:%S)
t0=$(date +%s)
snakemake --cores all --profile slurm --configfile "$preset"
echo "tiny preset through Slurm: $(( $(date +%s) - t0 )) s"
completed=$(sacct -n -X -S "$since" -o JobID,State | awk '$2=="COMPLETED"' | wc -l)
echo "sacct: $completed completed jobs since $since"
sacct -X -S "$since" -o JobID,JobName%36,Partition,AllocCPUS,State,Elapsed > "${TMPDIR:-/tmp}/lmid-sacct.txt"
head -80 "${TMPDIR:-/tmp}/lmid-sacct.txt"
[ "$completed" -ge "$expected" ] || { echo "expected at least $expected completed Slurm jobs"; exit 1; }
[ -s reports/ci-slurm/index.html ] || { echo "reports/ci-slurm/index.html was not produced"; exit 1; }
echo "report: $PWD/reports/ci-slurm/index.html"
rm -rf "$work" reports/ci-slurm "$preset"
