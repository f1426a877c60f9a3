"""Choose the baselines' free settings on validation slices, never on test, and write down why.

Two settings are chosen this way in the study preset:

* CycleGAN's identity weight (``cyclegan.lambda_identity``): short trainings at each value, scored
  on the diagnostic validation slices (Dice, tissue contrast, both cycles).
* StyleGAN2-ADA's inversion loss (``stylegan2.invert_loss``): the faithful NMI + MIND beside the
  named variant with a target-histogram term, both inverting the same validation slices with the
  same trained generator (Dice, and saturated pixels against the real slices').

    python benchmarks/tune_baselines.py --params data/study/params.resolved.yaml \\
        --train data/study/slices/train.npz --val data/study/slices/val.npz \\
        --segmenter data/study/models/kmeans.json --work /tmp/tune \\
        --stylegan2 data/study/models/stylegan2/model.pt --out reports/study/baseline_tuning.md

Every number comes from the same scoring as the snapshot curves (lmid.evaluation.snapshot_curves).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lmid.checkpoint import device_from_arg
from lmid.config import load_params
from lmid.data.slices import load_slices, spread_indices
from lmid.evaluation.segment import KMeansSegmenter
from lmid.evaluation.snapshot_curves import snapshot_entry
from lmid.methods.runner import train_method


def _fmt(x, d=3) -> str:
    return "—" if x is None else f"{x:.{d}f}"


def score(params, method, model, val, val_path, idx, seg, seg_path, device) -> dict:
    return snapshot_entry(params, method, model, val, val_path, idx, seg, seg_path, params.seed, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--segmenter", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the short trainings")
    ap.add_argument("--cyclegan-steps", type=int, default=2000)
    ap.add_argument("--lambda-identity", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--stylegan2", type=Path, default=None, help="a trained StyleGAN2 model.pt")
    ap.add_argument("--invert-loss", nargs="+", default=["nmi_mind", "nmi_mind_hist"])
    ap.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores slows it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    device = device_from_arg("cpu")
    base = load_params(args.params)
    val = load_slices(args.val)
    idx = spread_indices(len(val), base.evaluate.diagnostic_slices)
    seg = KMeansSegmenter.load(args.segmenter)
    lines = [
        "# Baseline settings chosen on validation",
        "",
        f"Validation slices: {len(idx)} of {args.val} (spread over every subject), scored as the snapshot "
        "curves are. Written by `benchmarks/tune_baselines.py`.",
        "",
    ]

    rows = []
    for lam in args.lambda_identity:
        over = {
            "cyclegan": {
                "lambda_identity": lam,
                "train": {"steps": args.cyclegan_steps, "snapshot_every": args.cyclegan_steps},
            }
        }
        params = load_params(args.params, over)
        out = args.work / f"cyclegan-identity-{lam:g}"
        t = time.perf_counter()
        train_method(params, "cyclegan", args.train, args.val, out, "cpu")
        entry = score(params, "cyclegan", out / "model.pt", val, args.val, idx, seg, args.segmenter, device)
        s, c = entry["scores"], entry.get("checks", {})
        rows.append(
            f"| {lam:g} | {_fmt(s['dice_gt_mean']['mean'])} | {_fmt(s.get('contrast_wm_gm', {}).get('mean'), 2)} "
            f"| {_fmt(s.get('tissue_order', {}).get('mean'), 2)} | {_fmt(c.get('psnr_mask_cycle_source'), 1)} "
            f"| {_fmt(c.get('psnr_mask_cycle_target'), 1)} | {time.perf_counter() - t:.0f} |"
        )
    if rows:
        lines += [
            f"## CycleGAN identity weight ({args.cyclegan_steps:,} steps each)",
            "",
            "| lambda_identity | Dice | WM−GM contrast (× real) | WM > GM > CSF | cycle PD→T1→PD (dB) "
            "| cycle T1→PD→T1 (dB) | wall s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]

    if args.stylegan2 is not None:
        rows = []
        for loss in args.invert_loss:
            params = load_params(args.params, {"stylegan2": {"invert_loss": loss}})
            entry = score(params, "stylegan2", args.stylegan2, val, args.val, idx, seg, args.segmenter, device)
            s, c = entry["scores"], entry.get("checks", {})
            rows.append(
                f"| {loss} | {_fmt(s['dice_gt_mean']['mean'])} | {_fmt(s.get('ssim_mask', {}).get('mean'))} "
                f"| {_fmt(c.get('inversion_saturated'))} | {_fmt(c.get('real_saturated'))} |"
            )
        lines += [
            f"## StyleGAN2-ADA inversion loss ({args.stylegan2})",
            "",
            "| invert_loss | Dice | SSIM in brain | saturated (≥ 0.99), inversions | saturated, real slices |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
