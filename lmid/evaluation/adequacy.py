"""Has each baseline learnt its job? Its own quality bars, checked against a run's numbers.

A comparison with a baseline that never learnt says nothing, so each generator has bars of its own,
apart from the translation scores it is compared on (they are adequacy bars, not targets to beat
LMIDiffusion with):

* CycleGAN: both cycles reconstruct their input (in-brain PSNR of PD → T1 → PD and T1 → PD → T1),
  and its PD → T1 output carries T1's contrast, not PD's (WM − GM contrast as a fraction of the real
  T1's, and the fraction of slices where WM > GM > CSF holds).
* StyleGAN2-ADA: its random samples have the target's intensities (W1 of the foreground within a
  multiple of the real-vs-real floor), and its inversions saturate no more than real slices do.
* SDEdit: its DDPM's unconditional samples are within the same multiple of the floor, and the t0
  chosen on validation lies inside its grid (so the grid brackets the optimum).

The numbers come from ``baselines.json`` (``lmid check-baselines``) and ``summary.json``
(``lmid aggregate``); this module only compares. Each bar is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Random samples of a generator: W1 of their foreground intensities at most this times the floor.
W1_FLOOR_MULTIPLE = 5.0
#: CycleGAN: in-brain PSNR of each cycle at least this (dB).
CYCLE_PSNR_DB = 24.0
#: CycleGAN: WM − GM contrast of its translation at least this fraction of the real target's.
CONTRAST_FRACTION = 0.60
#: CycleGAN: WM > GM > CSF on at least this fraction of the translated slices.
TISSUE_ORDER_FRACTION = 0.90
#: StyleGAN2: saturated pixels of the inversions at most the real slices' fraction plus this.
SATURATION_MARGIN = 0.02


@dataclass(frozen=True)
class Check:
    method: str
    what: str
    measured: float | str | None
    bar: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "not measured" if self.passed is None else "met" if self.passed else "missed"


def _at_least(value, bar: float) -> bool | None:
    return None if value is None else bool(value >= bar)


def _at_most(value, bar: float) -> bool | None:
    return None if value is None else bool(value <= bar)


def _mean(summary: dict | None, experiment: str, method: str, key: str):
    try:
        return summary["experiments"][experiment]["methods"][method][key]["mean"]
    except (KeyError, TypeError):
        return None


def _ok(baselines: dict | None, method: str) -> dict:
    entry = ((baselines or {}).get("methods") or {}).get(method) or {}
    return entry if entry.get("status") == "ok" else {}


def checks(baselines: dict | None, summary: dict | None, methods: list[str]) -> list[Check]:
    """Every bar of every baseline in ``methods``, with what this run measured."""
    out: list[Check] = []
    floor = ((baselines or {}).get("floor") or {}).get("w1_to_real")
    main = (summary or {}).get("main_experiment", "pd2t1")

    def w1_ratio(method: str):
        w1 = _ok(baselines, method).get("w1_to_real")
        return None if w1 is None or not floor else w1 / floor

    if "cyclegan" in methods:
        cg = _ok(baselines, "cyclegan")
        for key, what in (
            ("psnr_mask_cycle_source", "cycle source → target → source, in-brain PSNR (dB)"),
            ("psnr_mask_cycle_target", "cycle target → source → target, in-brain PSNR (dB)"),
        ):
            out.append(
                Check("cyclegan", what, cg.get(key), f"≥ {CYCLE_PSNR_DB:g}", _at_least(cg.get(key), CYCLE_PSNR_DB))
            )
        contrast = _mean(summary, main, "cyclegan", "contrast_wm_gm")
        out.append(
            Check(
                "cyclegan",
                "WM − GM contrast of its translation (× real target)",
                contrast,
                f"≥ {CONTRAST_FRACTION:g}",
                _at_least(contrast, CONTRAST_FRACTION),
            )
        )
        order = _mean(summary, main, "cyclegan", "tissue_order")
        out.append(
            Check(
                "cyclegan",
                "WM > GM > CSF (fraction of translated slices)",
                order,
                f"≥ {TISSUE_ORDER_FRACTION:g}",
                _at_least(order, TISSUE_ORDER_FRACTION),
            )
        )
    if "stylegan2" in methods:
        ratio = w1_ratio("stylegan2")
        out.append(
            Check(
                "stylegan2",
                "random samples: W1 to real foreground (× floor)",
                ratio,
                f"≤ {W1_FLOOR_MULTIPLE:g}",
                _at_most(ratio, W1_FLOOR_MULTIPLE),
            )
        )
        curve = ((baselines or {}).get("curves") or {}).get("stylegan2") or []
        last = (curve[-1].get("checks") or {}) if curve else {}
        sat, real = last.get("inversion_saturated"), last.get("real_saturated")
        excess = None if sat is None or real is None else sat - real
        out.append(
            Check(
                "stylegan2",
                "inversions: saturated pixels (≥ 0.99) minus the real slices' (validation)",
                excess,
                f"≤ {SATURATION_MARGIN:g}",
                _at_most(excess, SATURATION_MARGIN),
            )
        )
    if "sdedit" in methods:
        ratio = w1_ratio("sdedit")
        out.append(
            Check(
                "sdedit",
                "DDPM samples: W1 to real foreground (× floor)",
                ratio,
                f"≤ {W1_FLOOR_MULTIPLE:g}",
                _at_most(ratio, W1_FLOOR_MULTIPLE),
            )
        )
        info = ((summary or {}).get("train_info") or {}).get("sdedit") or {}
        bracketed = info.get("t0_bracketed")
        out.append(
            Check(
                "sdedit",
                f"t0 chosen on validation ({info.get('t0', '—')}) inside its grid",
                None if bracketed is None else "yes" if bracketed else "no",
                "inside",
                None if bracketed is None else bool(bracketed),
            )
        )
    return out


def cpu_hours(info: dict) -> float | None:
    """Training CPU-hours from a train_info.json (the trainers name the total differently)."""
    for key in ("train_loop_cpu_s_total", "train_loop_cpu_s", "cpu_s"):
        if info.get(key) is not None:
            return float(info[key]) / 3600.0
    return None


def training_budget(infos: dict, methods: list[str]) -> list[dict]:
    """What each trained method was trained for: steps, images and CPU-hours of its training loop."""
    rows = []
    for m in methods:
        info = infos.get(m) or {}
        steps = info.get("steps")
        if isinstance(steps, dict):  # CDM: one count per stage
            images = None
            steps_text = ", ".join(f"{k} {v:,}" for k, v in steps.items())
        elif steps is None:
            continue
        else:
            images = info.get("images_seen") or (steps * info["batch_size"] if info.get("batch_size") else None)
            steps_text = f"{steps:,}"
        rows.append({"method": m, "steps": steps_text, "images": images, "cpu_hours": cpu_hours(info)})
    return rows
