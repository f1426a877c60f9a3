"""Per-job wall and CPU times of a run, from Snakemake's benchmark files, as one CSV.

    python workflow/scripts/wall_times.py data/study/benchmarks reports/study/wall_times.csv \
        --commit "$(git rev-parse --short HEAD)" [--fresh]

Each rule writes DATA/benchmarks/<rule>/<wildcards>.tsv. A job that Snakemake re-runs overwrites
its file, and a training job that resumes from a finished checkpoint then records seconds, not the
training. So rows already in OUT are kept unless the job's benchmark file is newer than OUT and
records more wall time (a real re-run): the CSV accumulates the run that did the work, even when it
was split over several invocations on different machines. ``--fresh`` starts the CSV over (a new
run from an empty data folder).

Every row keeps the commit it ran on and its end time (the benchmark file's modification time;
start = end − wall). The last row, ``ELAPSED``, is the union of the job intervals: the wall time
the run took on its cores, idle gaps between invocations left out. That is the critical path as it
was actually scheduled, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timezone
from pathlib import Path

FIELDS = ["job", "wall_s", "cpu_s", "max_rss_mb", "end_utc", "commit"]
ELAPSED = "ELAPSED"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def read_benchmarks(folder: Path, commit: str) -> dict[str, dict]:
    rows = {}
    for tsv in sorted(folder.rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        head, values = lines[0].split("\t"), lines[-1].split("\t")
        rec = dict(zip(head, values))
        job = str(tsv.relative_to(folder).with_suffix(""))
        mtime = tsv.stat().st_mtime
        rows[job] = {
            "job": job,
            "wall_s": round(float(rec["s"]), 1),
            "cpu_s": round(float(rec.get("cpu_time") or "nan"), 1),
            "max_rss_mb": round(float(rec.get("max_rss") or "nan"), 1),
            "end_utc": _iso(mtime),
            "commit": commit,
            "mtime": mtime,
        }
    return rows


def elapsed_s(rows) -> float:
    """Length of the union of [end − wall, end] over the rows that know their end."""
    spans = sorted((_ts(r["end_utc"]) - float(r["wall_s"]), _ts(r["end_utc"])) for r in rows if r.get("end_utc"))
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def main(folder: Path, out: Path, commit: str, fresh: bool) -> None:
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no benchmark folder (run the workflow first)")
    old = {}
    if out.is_file() and not fresh:
        with open(out, newline="") as fh:
            old = {r["job"]: r for r in csv.DictReader(fh) if r["job"] != ELAPSED}
    since = out.stat().st_mtime if out.is_file() and not fresh else 0.0
    merged = dict(old)
    for job, rec in read_benchmarks(folder, commit).items():
        prev = old.get(job)
        if prev is None or (rec["mtime"] > since and rec["wall_s"] >= float(prev["wall_s"])):
            merged[job] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(float(r["wall_s"]) for r in merged.values())
    cpu = sum(float(r["cpu_s"]) for r in merged.values() if r["cpu_s"] not in ("", "nan"))
    span = elapsed_s(merged.values())
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for job in sorted(merged):
            w.writerow({k: merged[job].get(k, "") for k in FIELDS})
        w.writerow(
            {
                "job": ELAPSED,
                "wall_s": round(span, 1),
                "cpu_s": round(cpu, 1),
                "max_rss_mb": "",
                "end_utc": "",
                "commit": ",".join(sorted({r.get("commit", "") for r in merged.values()} - {""})),
            }
        )
    print(
        f"{out}: {len(merged)} jobs, {total:.0f} s of job wall time, {cpu:.0f} CPU-s, "
        f"{span:.0f} s elapsed ({span / 3600:.2f} h)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the run's benchmark folder, e.g. data/study/benchmarks")
    ap.add_argument("out", type=Path, help="CSV to write, e.g. reports/study/wall_times.csv")
    ap.add_argument("--commit", required=True, help="the commit the jobs ran on")
    ap.add_argument("--fresh", action="store_true", help="start over instead of merging into OUT")
    a = ap.parse_args()
    main(a.folder, a.out, a.commit, a.fresh)
