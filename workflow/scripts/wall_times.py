"""Per-job wall and CPU times of a run, from Snakemake's benchmark files, as one CSV.

    python workflow/scripts/wall_times.py data/study/benchmarks reports/study/wall_times.csv

Each rule writes DATA/benchmarks/<rule>/<wildcards>.tsv. A job that Snakemake re-runs overwrites
its file, and a training job that resumes from a finished checkpoint then records seconds, not the
training. So rows already in OUT are kept unless the job's benchmark file is newer than OUT and
records more wall time (a real re-run): the CSV accumulates the run that did the work.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_benchmarks(folder: Path) -> dict[str, dict]:
    rows = {}
    for tsv in sorted(folder.rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        head, values = lines[0].split("\t"), lines[-1].split("\t")
        rec = dict(zip(head, values))
        job = str(tsv.relative_to(folder).with_suffix(""))
        rows[job] = {"job": job, "wall_s": round(float(rec["s"]), 1),
                     "cpu_s": round(float(rec.get("cpu_time") or "nan"), 1),
                     "max_rss_mb": round(float(rec.get("max_rss") or "nan"), 1), "mtime": tsv.stat().st_mtime}
    return rows


def main(folder: str, out: str) -> None:
    folder_p, out_p = Path(folder), Path(out)
    if not folder_p.is_dir():
        sys.exit(f"{folder}: no benchmark folder (run the workflow first)")
    old = {}
    if out_p.is_file():
        with open(out_p, newline="") as fh:
            old = {r["job"]: r for r in csv.DictReader(fh)}
    since = out_p.stat().st_mtime if out_p.is_file() else 0.0
    merged = dict(old)
    for job, rec in read_benchmarks(folder_p).items():
        prev = old.get(job)
        if prev is None or (rec["mtime"] > since and rec["wall_s"] >= float(prev["wall_s"])):
            merged[job] = rec
    fields = ["job", "wall_s", "cpu_s", "max_rss_mb"]
    out_p.parent.mkdir(parents=True, exist_ok=True)
    with open(out_p, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for job in sorted(merged):
            w.writerow({k: merged[job].get(k, "") for k in fields})
    total = sum(float(r["wall_s"]) for r in merged.values())
    print(f"{out}: {len(merged)} jobs, {total:.0f} s of job wall time in all")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
