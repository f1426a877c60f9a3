"""LMIDiffusion translation: cost and quality against the number of sampler steps.

For a trained ``model.pt`` and the first ``--slices`` slices of a split, every sampler setting
``<kind>-<steps>`` (``ancestral-1000``, ``ddim-50``, ...) translates the source slices through
``lmid.methods.runner.translate_shard``, the function behind ``lmid translate`` (same seeds per
slice, same batching, same sampler code, ``--samples 1`` as the pipeline's sampler table), and is
scored against the real target slices with the pipeline's own per-slice scoring
(``lmid.evaluation.metrics.score_slice``: SSIM and PSNR over the slice, Dice of the K-Means
segmentation of the translation vs the ground-truth labels and vs the K-Means segmentation of
the real target), each with a percentile bootstrap interval of the mean over slices
(``lmid.evaluation.stats.summarise``).

Per setting it records network evaluations (NFE) per slice, wall time per slice (the time
``translate_shard`` measures around the method's ``translate``, which ends with a device-to-host
copy, so CUDA work is finished; the device is also synchronised before and after), the process
CPU time per slice (steadier than wall time on a shared CPU) and, on CUDA, the peak of
``torch.cuda.max_memory_allocated`` during the setting.

The reference is the measured setting with the most network evaluations. The script names the
smallest setting (fewest NFE) whose mean SSIM and mean Dice (vs ground truth; vs K-Means of the
real target when the split has no labels) both lie inside the reference's confidence intervals.
With a handful of slices those intervals are wide: the answer is a hint, not a verdict.

An untimed warm-up translation (``ddim-2`` on the same slices) comes first so that one-off costs
(CUDA context, cuDNN autotuning, lazy imports) are not charged to the first setting; its time per
network evaluation also feeds ``--max-setting-s``, which skips settings whose estimated time
(NFE x the last measured time per evaluation) would exceed it. Settings run in increasing NFE.

Usage::

    python benchmarks/bench_translation.py --slices 4 --threads 1 \\
        --settings ancestral-1000 ddim-50 ddim-20 ddim-10 ddim-5 --device cpu
    python benchmarks/bench_translation.py --device cuda          # defaults: 8 slices, 6 settings

Writes ``reports/benchmarks/translation-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import resource
import sys
import shlex
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTING = re.compile(r"(ancestral|ddim)-([1-9][0-9]*)")
METRICS = ("ssim", "psnr", "dice_gt_mean", "dice_km_mean")


def parse_setting(text: str) -> tuple[str, int]:
    m = SETTING.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not '<ancestral|ddim>-<steps>'")
    return m.group(1), int(m.group(2))


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(summary: dict, digits: int) -> str:
    if summary is None or summary.get("n", 0) == 0:
        return "n/a"
    return f"{summary['mean']:.{digits}f} [{summary['ci_low']:.{digits}f}, {summary['ci_high']:.{digits}f}]"


def _markdown(meta: dict, rows: list[dict], verdict: dict) -> str:
    conf = int(round(meta["confidence"] * 100))
    lines = [
        "# LMIDiffusion translation: sampler steps vs cost and quality",
        "",
        f"- device: {_device_line(meta)}; torch {meta['torch']}; "
        f"{meta['torch_threads']} torch thread(s); {meta['date']}",
        f"- model: `{meta['model']}` ({meta['model_parameters']:,} parameters, {meta['image_size'][0]} px, "
        f"LMI mode {meta['lmi_mode']}); split: `{meta['split']}`, first {meta['slices']} slices, "
        f"batch {meta['batch_size']} chains, 1 sample per slice, seeds as `lmid translate`",
        f"- quality: mean over slices [{conf} % percentile bootstrap CI, {meta['bootstrap']} resamples]; "
        "Dice = mean of CSF/GM/WM Dice of the K-Means segmentation of the translation, "
        "vs ground-truth labels (GT) and vs K-Means of the real target (KM)",
        "- wall / CPU time per slice: `translate_shard`'s timing of the method's translate call, "
        "divided by the number of slices (CPU time: all threads of the process)",
        "",
        "| setting | NFE / slice | wall / slice (s) | CPU / slice (s) | peak GPU mem (MiB) | SSIM | PSNR (dB) "
        "| Dice GT | Dice KM | in reference CI (SSIM, Dice) |",
        "|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['setting']} | {r['nfe_expected']} | {r['status']}: {r['reason']} | | | | | | | |")
            continue
        mem = f"{r['peak_gpu_mem_bytes'] / 2**20:.0f}" if r.get("peak_gpu_mem_bytes") is not None else "n/a"
        flag = (
            "reference"
            if r["setting"] == verdict.get("reference")
            else (f"{_yn(r.get('ssim_in_ref_ci'))}, {_yn(r.get('dice_in_ref_ci'))}")
        )
        q = r["quality"]
        lines.append(
            f"| {r['setting']} | {r['nfe_per_slice']} | {r['wall_s_per_slice']:.3f} | {r['cpu_s_per_slice']:.3f} "
            f"| {mem} | {_fmt(q['ssim'], 3)} | {_fmt(q['psnr'], 2)} | {_fmt(q['dice_gt_mean'], 3)} "
            f"| {_fmt(q['dice_km_mean'], 3)} | {flag} |"
        )
    lines += ["", "## Verdict", "", verdict["text"]]
    if meta.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in meta["notes"]]]
    lines += ["", "Reproduce:", "", "```", meta["command"], "```"]
    return "\n".join(lines) + "\n"


def _device_line(meta: dict) -> str:
    return meta["device_name"] if meta["device"] == "cpu" else f"{meta['device']} ({meta['device_name']})"


def _yn(value) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _verdict(rows: list[dict], requested: list[str], dice_key: str) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return {"reference": None, "smallest_within_ci": None, "text": "No setting was measured."}
    ref = max(ok, key=lambda r: (r["nfe_per_slice"], r["setting"]))
    rq, dq = ref["quality"]["ssim"], ref["quality"][dice_key]
    for r in ok:
        s, d = r["quality"]["ssim"], r["quality"][dice_key]
        r["ssim_in_ref_ci"] = bool(rq["ci_low"] <= s["mean"] <= rq["ci_high"])
        r["dice_in_ref_ci"] = bool(dq["ci_low"] <= d["mean"] <= dq["ci_high"])
        # Above the interval counts as "not worse" for the second, looser answer.
        r["not_below_ref_ci"] = bool(s["mean"] >= rq["ci_low"] and d["mean"] >= dq["ci_low"])
    by_cost = sorted(ok, key=lambda r: (r["nfe_per_slice"], r["setting"]))
    within = next((r for r in by_cost if r["ssim_in_ref_ci"] and r["dice_in_ref_ci"]), None)
    not_below = next((r for r in by_cost if r["not_below_ref_ci"]), None)
    dice_name = "Dice vs ground truth" if dice_key == "dice_gt_mean" else "Dice vs K-Means of the real target"
    text = [
        f"Reference: **{ref['setting']}** ({ref['nfe_per_slice']} NFE / slice), the measured setting with "
        f"the most network evaluations; criterion: mean SSIM and mean {dice_name} both inside its CI."
    ]
    largest_requested = max(requested, key=lambda s: (parse_setting(s)[1], s))
    if largest_requested != ref["setting"]:
        text.append(
            f"The largest requested setting, {largest_requested}, was not measured (see the table), so "
            "the reference is the largest one that was."
        )
    if within is not None and within is not ref:
        speed = ref["wall_s_per_slice"] / within["wall_s_per_slice"] if within["wall_s_per_slice"] > 0 else float("nan")
        text.append(
            f"Smallest setting within the reference's CI: **{within['setting']}** "
            f"({within['nfe_per_slice']} NFE / slice, {speed:.1f}x less wall time than the reference)."
        )
    elif within is ref:
        text.append("No smaller setting has both means inside the reference's CI.")
    if not_below is not None and not_below is not within and not_below is not ref:
        text.append(
            f"Looser reading (mean not below the CI's lower bound, i.e. not worse): **{not_below['setting']}** "
            f"({not_below['nfe_per_slice']} NFE / slice)."
        )
    n = ref["quality"]["ssim"]["n"]
    text.append(f"With {n} slice(s) the intervals are wide; treat this as a hint, not a verdict.")
    return {
        "reference": ref["setting"],
        "smallest_within_ci": within["setting"] if within else None,
        "smallest_not_below_ci": not_below["setting"] if not_below else None,
        "dice_metric": dice_key,
        "text": " ".join(text),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "data/models/lmidiffusion/model.pt")
    ap.add_argument("--split", type=Path, default=ROOT / "data/slices/val.npz", help="split file (.npz) with targets")
    ap.add_argument("--slices", type=int, default=8, help="translate the first N slices of the split")
    ap.add_argument("--segmenter", type=Path, default=ROOT / "data/models/kmeans.json")
    ap.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="params file (seed, LMIDiffusion sampler start/eta, metrics); sampler kind/steps come from --settings",
    )
    ap.add_argument(
        "--settings", nargs="+", default=["ancestral-1000", "ddim-100", "ddim-50", "ddim-25", "ddim-10", "ddim-5"]
    )
    ap.add_argument("--batch-size", type=int, default=0, help="chains per batch (0: all slices in one batch)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument(
        "--max-setting-s",
        type=float,
        default=0.0,
        help="skip a setting whose estimated wall time exceeds this many seconds (0: no limit)",
    )
    ap.add_argument("--note", action="append", default=[], help="free text added to the report's notes")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "benchmarks")
    args = ap.parse_args(argv)
    for s in args.settings:
        try:
            parse_setting(s)  # fail early on a typo
        except argparse.ArgumentTypeError as err:
            ap.error(f"--settings: {err}")
    if args.slices < 1:
        ap.error("--slices must be at least 1")

    import torch

    sys.path.insert(0, str(ROOT))
    from lmid.checkpoint import device_from_arg
    from lmid.config import load_params
    from lmid.data.slices import load_slices
    from lmid.networks import count_parameters
    from lmid.evaluation.metrics import score_slice
    from lmid.evaluation.segment import KMeansSegmenter
    from lmid.evaluation.stats import summarise
    from lmid.io import load_npz, write_json, write_text
    from lmid.methods import get_method
    from lmid.methods.lmidiffusion import sampler_plan
    from lmid.methods.runner import translate_shard

    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from_arg(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")

    split = load_slices(args.split)
    n = min(args.slices, len(split))
    segmenter = KMeansSegmenter.load(args.segmenter)
    base = load_params(args.params)
    # Loaded once on the CPU for facts and the planned NFE; translate_shard loads its own copy.
    model = get_method("lmidiffusion").load(base, args.model, torch.device("cpu"))
    has_labels = bool(split.has_label)
    batch = args.batch_size or n

    def params_for(kind: str, steps: int):
        return load_params(
            args.params,
            {"lmidiffusion": {"sampler": {"kind": kind, "steps": steps, "samples": 1, "batch_size": batch}}},
        )

    def translate(kind: str, steps: int, out: Path) -> dict:
        """One setting through ``lmid translate``'s function; returns timing and the written arrays."""
        params = params_for(kind, steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        info = translate_shard(
            params, "lmidiffusion", args.model, args.split, out, samples=1, device=str(device), limit=n
        )
        _sync(device)
        call = time.perf_counter() - t0
        cpu = time.process_time() - c0
        z = load_npz(out, ("image", "index", "nfe", "wall_s"))
        return {
            "info": info,
            "call_wall_s": call,
            "cpu_s": cpu,
            "image": z["image"],
            "index": z["index"],
            "nfe": int(z["nfe"]),
            "wall_s": float(z["wall_s"]),
            "peak_gpu_mem_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        }

    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "model": str(
            args.model.resolve().relative_to(ROOT) if args.model.resolve().is_relative_to(ROOT) else args.model
        ),
        "model_parameters": count_parameters(model.net),
        "model_unet": model.unet.model_dump(mode="json"),
        "lmi_mode": model.meta.get("lmi", {}).get("mode", "authors"),
        "split": str(
            args.split.resolve().relative_to(ROOT) if args.split.resolve().is_relative_to(ROOT) else args.split
        ),
        "image_size": list(split.shape),
        "slices": n,
        "batch_size": batch,
        "samples_per_slice": 1,
        "sampler_start": base.lmidiffusion.sampler.start,
        "ddim_eta": base.lmidiffusion.sampler.eta,
        "seed": base.seed,
        "params": str(args.params),
        "bootstrap": args.bootstrap,
        "confidence": args.confidence,
        "labels_available": has_labels,
        "command": "python benchmarks/bench_translation.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "notes": list(args.note),
    }

    plan = sorted({s: parse_setting(s) for s in args.settings}.items(), key=lambda kv: (kv[1][1], kv[0]))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lmid-bench-translation-") as tmp:
        # Warm-up: same slices and batch, 2 steps, untimed; gives the first per-NFE estimate.
        warm = translate("ddim", 2, Path(tmp) / "warmup.npz")
        per_nfe = warm["wall_s"] / max(1, warm["nfe"])
        meta["warmup"] = {
            "setting": "ddim-2",
            "wall_s": round(warm["wall_s"], 3),
            "call_wall_s": round(warm["call_wall_s"], 3),
        }
        for name, (kind, steps) in plan:
            expected = len(sampler_plan(model, params_for(kind, steps).lmidiffusion.sampler)[1])
            row = {"setting": name, "kind": kind, "steps": steps, "nfe_expected": expected}
            estimate = per_nfe * expected
            if args.max_setting_s and estimate > args.max_setting_s:
                row |= {
                    "status": "skipped",
                    "reason": f"estimated {estimate:.0f} s > --max-setting-s "
                    f"{args.max_setting_s:g} s ({per_nfe:.3f} s per NFE for "
                    f"{n} slices)",
                }
                rows.append(row)
                print(f"{name}: skipped ({row['reason']})", flush=True)
                continue
            res = translate(kind, steps, Path(tmp) / f"{name}.npz")
            per_nfe = res["wall_s"] / max(1, res["nfe"])
            scores = []
            for k, i in enumerate(res["index"]):
                scores.append(
                    score_slice(
                        res["image"][k],
                        split.target[i],
                        split.mask[i],
                        segmenter,
                        label=split.label[i] if has_labels else None,
                    )
                )
            quality = {
                m: summarise([s[m] for s in scores], args.bootstrap, args.confidence, base.seed) for m in METRICS
            }
            row |= {
                "status": "ok",
                "nfe_per_slice": res["nfe"],
                "translate_wall_s": round(res["wall_s"], 4),
                "call_wall_s": round(res["call_wall_s"], 4),
                "wall_s_per_slice": res["wall_s"] / n,
                "cpu_s_per_slice": res["cpu_s"] / n,
                "peak_gpu_mem_bytes": res["peak_gpu_mem_bytes"],
                "sampler_info": res["info"],
                "quality": quality,
                "per_slice": [
                    {"index": int(i), **{m: float(s[m]) for m in METRICS}} for i, s in zip(res["index"], scores)
                ],
            }
            rows.append(row)
            print(
                f"{name}: {res['nfe']} NFE/slice, {row['wall_s_per_slice']:.3f} s/slice, "
                f"SSIM {quality['ssim']['mean']:.3f}, PSNR {quality['psnr']['mean']:.2f}, "
                f"Dice GT {quality['dice_gt_mean']['mean']:.3f}",
                flush=True,
            )

    dice_key = "dice_gt_mean" if has_labels else "dice_km_mean"
    verdict = _verdict(rows, args.settings, dice_key)
    rows.sort(key=lambda r: (-r["nfe_expected"], r["setting"]))
    meta["load_average_at_end"] = list(os.getloadavg())
    if device.type == "cpu":
        meta["peak_rss_bytes_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        meta["notes"].append(
            f"CPU run on a shared machine (load average {meta['load_average_at_start'][0]:.1f} at start, "
            f"{meta['load_average_at_end'][0]:.1f} at end, {meta['cpu_count']} cores): CPU time is the steadier "
            "figure. The CUDA path of this script (synchronised timing, torch.cuda.max_memory_allocated) was not "
            "exercised by this run."
        )
    if any(r["status"] == "skipped" for r in rows):
        meta["notes"].append("Skipped rows give the reason (estimated time over --max-setting-s).")
    result = {"meta": meta, "verdict": verdict, "results": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"translation-{device.type}.json"
    write_json(out, result)
    write_text(out.with_suffix(".md"), _markdown(meta, rows, verdict))
    print(verdict["text"])
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
