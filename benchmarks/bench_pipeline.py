"""Whole-pipeline wall time: one preset, from nothing to reports/index.html, in a fresh folder.

    python benchmarks/bench_pipeline.py --preset params.yaml --cores 2
    python benchmarks/bench_pipeline.py --preset workflow/presets/paper.yaml --cores 16   # on a GPU node

Writes ``reports/benchmarks/pipeline-<preset>.json`` and ``.md``: total wall time, the device and
the wall time of every job (from Snakemake's ``benchmark:`` files), summed per step and method.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "benchmarks")
    args = ap.parse_args(argv)

    import yaml

    preset_name = yaml.safe_load(args.preset.read_text()).get("preset", args.preset.stem)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmid-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.preset, workdir / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "workflow/Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        str(args.cores),
        "--forceall",
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-5000:], file=sys.stderr)
        return res.returncode

    jobs = []
    for f in sorted((workdir / "data" / "benchmarks").rglob("*.tsv")):
        with f.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        jobs.append(
            {
                "job": str(f.relative_to(workdir / "data" / "benchmarks").with_suffix("")),
                "s": float(row["s"]),
                "max_rss_mb": float(row["max_rss"]) if row.get("max_rss", "NA") not in ("NA", "-") else None,
            }
        )
    per_step = defaultdict(float)
    for j in jobs:
        per_step[j["job"].split("/")[0]] += j["s"]
    result = {
        "preset": preset_name,
        "device": device_name(),
        "cores": args.cores,
        "wall_s": round(wall, 1),
        "date": time.strftime("%Y-%m-%d"),
        "jobs": jobs,
        "per_step_s": {k: round(v, 1) for k, v in sorted(per_step.items())},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"pipeline-{preset_name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Whole pipeline, {preset_name} preset",
        "",
        f"- device: {result['device']}",
        f"- cores: {args.cores}",
        f"- wall time: {wall / 60:.1f} min ({wall:.0f} s)",
        f"- date: {result['date']}",
        "",
        "| step | summed job wall time (s) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in result["per_step_s"].items()]
    lines += ["", "| job | wall (s) | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {j['job']} | {j['s']:.1f} | {j['max_rss_mb'] or ''} |" for j in jobs]
    (args.out_dir / f"pipeline-{preset_name}.md").write_text("\n".join(lines) + "\n")
    print(f"{preset_name}: {wall:.0f} s on {result['device']}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
