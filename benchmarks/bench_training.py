"""Training throughput (images/s) of the LMIDiffusion U-Net step, with and without LMI conditioning.

Three parts are timed, each in a fresh subprocess (``--worker``) so that a failure, a slow
compilation or the memory of one measurement does not touch the others:

* ``full`` — one LMIDiffusion training step as :class:`lmid.diffusion.trainer.LmiDiffusionTrainer`
  does it: draw a batch, augment (flip, blur), antithetic t, x_t and x_{t+1} with one ε, the
  network input ``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]`` (the trainer's own ``network_input``,
  i.e. ``lmid.diffusion.conditioning.lmi_map``), forward, ε-MSE, backward, gradient clipping,
  Adam step and EMA update (the project's ``Ema``);
* ``unet`` — the U-Net alone on a fixed 3-channel input: forward, ε-MSE, backward (no LMI, no
  optimiser step);
* ``lmi`` — the step's LMI work alone (no grad; float32 whatever the variant, as in training):
  LMI(x_0, x_{t+1}) plus LMI(x_0, x_0) looked up in the trainer's per-slice cache;
* ``full_nocache`` / ``lmi_nocache`` — the same with ``train.cache_self_lmi`` off, i.e. both maps
  computed at every step;
* ``full_baseline`` / ``lmi_baseline`` — the same step with the LMI layer of an earlier commit
  (``--baseline-commit``, read with ``git show``): the layer's speed-up measured against the code it
  replaced, in one run.

The cached parts time the steady state of a long run: before timing, the cache is filled for
every training slice (at most 32 of them) and every augmentation variant.

Variants of the U-Net part of the step:

* ``fp32`` — float32, contiguous (NCHW) tensors (the trainer with ``mixed_precision: false``);
* ``bf16`` — ``torch.autocast`` bfloat16 of the U-Net (the trainer with ``mixed_precision: true`` on
  CUDA and on CPUs with AMX or AVX512-BF16);
* ``channels_last`` — float32 with the network and its input in channels-last memory format (CUDA only);
* ``bf16_channels_last`` — both (what the trainer does on CUDA with ``mixed_precision: true``);
* ``compile`` — ``torch.compile`` of the U-Net, float32 (on failure the error is recorded).

The U-Net comes from the project's ``build_unet`` with ``diffusion.unet`` of ``--preset`` and 3
input channels; the images are the prepared training slices (``--data``) resized to ``--size``
when the file exists, uniform noise otherwise. ``--warmup`` untimed steps (the first one, which
includes any compilation, is reported separately), then ``--steps`` timed steps; on CUDA the device
is synchronised before and after the timed loop and the peak of ``torch.cuda.max_memory_allocated``
is recorded; on CPU the worker's peak resident set size and its CPU time are recorded. Every
measurement compiles with an empty inductor cache (``--warm-compile-cache`` to reuse it), so the
first step of ``compile`` is a cold compilation whatever ran before.

Usage::

    python benchmarks/bench_training.py --preset params.yaml --batch 4 --steps 5 --threads 1
    python benchmarks/bench_training.py --preset workflow/presets/paper.yaml --batch 4 --steps 5 --threads 1
    python benchmarks/bench_training.py --preset workflow/presets/paper.yaml --batch 16 --steps 50 --device cuda

Writes ``reports/benchmarks/training-<device>.json`` and ``.md``; results of several presets or sizes
accumulate in the same files (a run replaces earlier rows with the same preset, size, batch and device).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16", "channels_last", "bf16_channels_last", "compile")
CUDA_ONLY = {"channels_last", "bf16_channels_last"}
#: The LMI layer the ``*_baseline`` parts time: the commit before the no-grad layer was regrouped.
BASELINE_COMMIT = "64bb1be"
PARTS = ("full", "full_nocache", "full_baseline", "unet", "lmi", "lmi_nocache", "lmi_baseline")


# --------------------------------------------------------------------------- worker


def _worker(spec: dict) -> dict:
    import resource

    import numpy as np
    import torch
    from torch.nn import functional as F

    sys.path.insert(0, str(ROOT))
    from lmid.config import load_params
    from lmid.networks import autocast
    from lmid.diffusion.trainer import Ema, LmiDiffusionTrainer, gaussian_blur
    from lmid.diffusion.unet import build_unet, check_image_size
    from lmid.networks import count_parameters

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    params = load_params(spec["preset"], spec.get("overrides") or None)
    dp, size, batch = params.diffusion, spec["size"], spec["batch"]
    check_image_size(dp.unet, size, size)
    variant, part = spec["variant"], spec["part"]
    amp = variant in ("bf16", "bf16_channels_last")
    channels_last = variant in ("channels_last", "bf16_channels_last")

    # Images: the prepared training slices resized to the benchmark size, or noise.
    data_path = Path(spec["data"]) if spec.get("data") else None
    if data_path is not None and data_path.is_file():
        from lmid.data.slices import load_slices

        images = torch.as_tensor(load_slices(data_path).target[:32])[:, None]
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp(0.0, 1.0)
    else:
        images = torch.rand((32, 1, size, size), generator=torch.Generator().manual_seed(0))
    data = images.to(device)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # The trainer supplies the schedule, augmentation, timesteps and the LMI network input.
        trainer = LmiDiffusionTrainer(dp, params.lmi, seed=0, out_dir=Path(tmp), device=device)
    schedule = trainer.schedule
    net = build_unet(dp.unet, in_channels=LmiDiffusionTrainer.in_channels).to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if variant == "compile" else net
    opt = torch.optim.Adam(net.parameters(), lr=dp.train.lr)
    ema = Ema(net, dp.train.ema_decay)

    trainer.prepare_data(data)
    if part.endswith("_baseline"):
        # The earlier commit's layer, loaded from git, in place of the current one.
        import importlib.util

        import lmid.diffusion.conditioning as conditioning

        source = subprocess.run(
            ["git", "show", f"{spec['baseline_commit']}:lmid/lmi.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        path = Path(tempfile.mkdtemp()) / "lmi_baseline.py"
        path.write_text(source)
        module_spec = importlib.util.spec_from_file_location("lmi_baseline", path)
        old = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(old)
        conditioning.local_mutual_information = old.local_mutual_information
    if part.endswith("_nocache"):
        trainer._self_cache = None
    if part in ("full", "lmi", "full_baseline", "lmi_baseline") and trainer._self_cache is not None:
        # Steady state of a long run: every (slice, variant) map already cached.
        levels = trainer.blur_sigmas()
        n_aug = (len(levels) if levels is not None else 0) + 1
        for v in range(trainer._self_cache.shape[1]):
            flip, level = divmod(v, n_aug)
            x = data.flip(-1) if flip else data
            if level:
                radius = max(1, int(np.ceil(3.0 * max(dp.train.blur_sigma))))
                x = gaussian_blur(x, levels[level - 1].expand(len(x)).to(device), radius)
            idx = torch.arange(len(data), device=device)
            trainer.self_lmi(x, idx, torch.full_like(idx, v))

    def draw():
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x0, variant = trainer._augment(data[idx.to(device)], gen)
        t = trainer._timesteps(batch, gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        x_t = schedule.add_noise(x0, eps, t)
        x_next = schedule.add_noise(x0, eps, (t + 1).clamp_max(schedule.T - 1))
        return x0, x_t, x_next, t, eps, idx, variant

    def forward_backward(inp, t, eps):
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, cpu=True):
            pred = model(inp, t)
        loss = F.mse_loss(pred.float(), eps)
        loss.backward()
        return loss

    if part.startswith("full"):

        def step():
            x0, x_t, x_next, t, eps, idx, variant = draw()
            inp = trainer.network_input(x0, x_t, x_next, idx, variant)
            opt.zero_grad(set_to_none=True)
            forward_backward(inp, t, eps)
            torch.nn.utils.clip_grad_norm_(net.parameters(), dp.train.grad_clip)
            opt.step()
            ema.update(net)
    elif part == "unet":
        x0, x_t, x_next, t_fixed, eps_fixed, _, _ = draw()
        inp_fixed = trainer.network_input(x0, x_t, x_next)

        def step():
            net.zero_grad(set_to_none=True)
            forward_backward(inp_fixed, t_fixed, eps_fixed)
    else:
        x0, x_t, x_next, _, _, idx, variant = draw()

        def step():
            trainer.network_input(x0, x_t, x_next, idx, variant)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    first = None
    for i in range(max(1, spec["warmup"])):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i == 0:
            first = time.perf_counter() - t0
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec["steps"]):
        step()
    sync()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    from lmid.networks import cpu_has_bf16, uses_bf16

    out = {
        "bf16_active": uses_bf16(device, amp, cpu=True),
        "cpu_has_bf16": cpu_has_bf16(),
        "first_step_s": first,
        "timed_steps": spec["steps"],
        "wall_s": wall,
        "s_per_step": wall / spec["steps"],
        "cpu_s_per_step": cpu / spec["steps"],
        "images_per_s": batch * spec["steps"] / wall,
        "parameters": count_parameters(net),
        "torch_threads": torch.get_num_threads(),
        "inputs": f"{data_path} resized to {size} px"
        if data_path is not None and data_path.is_file()
        else "uniform noise",
    }
    if device.type == "cuda":
        out["peak_gpu_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        out["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out["rss_before_steps_bytes"] = int(rss_before)
    if not np.isfinite(out["wall_s"]):
        raise RuntimeError("non-finite timing")
    return out


# --------------------------------------------------------------------------- driver


def _run(spec: dict, timeout: float, warm_cache: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="lmid-inductor-") as cache:
        if not warm_cache:  # a cold compilation per measurement, so the first step's time is comparable
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
        # The exception line is the informative one; keep a little context before it.
        err = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else "")
        return {"status": "failed", "reason": f"exit {res.returncode}: {err.strip()[:500]}"}
    return {"status": "ok", **json.loads(res.stdout.strip().splitlines()[-1])}


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def _speedup_lines(rows: list[dict]) -> list[str]:
    """Throughput of the whole step against the step before the speed-ups, and LMI's share of it."""
    by = {(r["preset"], r["size"], r["batch"], r["part"], r["variant"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for (preset, size, batch, part, variant), r in sorted(by.items()):
        base = by.get((preset, size, batch, "full_baseline", variant))
        if part != "full" or base is None:
            continue
        lmi = by.get((preset, size, batch, "lmi", "fp32"))
        share = f"; LMI is {100 * lmi['s_per_step'] / r['s_per_step']:.0f} % of the step" if lmi else ""
        out.append(
            f"- {preset} {size} px, batch {batch}, {variant}: {r['images_per_s'] / base['images_per_s']:.2f}x "
            f"the images/s of the step before the speed-ups ({base['s_per_step']:.3f} -> "
            f"{r['s_per_step']:.3f} s){share}"
        )
    return (["## Speed-up", ""] + out) if out else []


def _target_lines(rows: list[dict]) -> list[str]:
    """The CPU targets: LMI per map, the step against the old one, a wider U-Net against the old step."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("device") == "cpu"]
    by = {(r["preset"], r["part"], r["variant"]): r for r in ok}
    out = []
    for preset in sorted({r["preset"] for r in ok}):
        new, old = by.get((preset, "lmi", "fp32")), by.get((preset, "lmi_baseline", "fp32"))
        if new:
            ms = 1000 * new["cpu_s_per_step"] / new["batch"]
            was = f" (the earlier layer: {1000 * old['cpu_s_per_step'] / old['batch']:.1f} ms)" if old else ""
            out.append(
                f"- {preset}: LMI(x_0, x_t+1) {ms:.1f} CPU-ms per {new['size']} x {new['size']} map{was}; "
                f"target <= 20 ms"
            )
        step, base = by.get((preset, "full", "bf16")), by.get((preset, "full_baseline", "fp32"))
        if step and base:
            gain = base["cpu_s_per_step"] / step["cpu_s_per_step"]
            out.append(
                f"- {preset}: training step {step['cpu_s_per_step']:.3f} CPU-s (bf16, current LMI) against "
                f"{base['cpu_s_per_step']:.3f} (fp32, earlier LMI): {gain:.2f}x the images per CPU-second; "
                f"target >= 2x"
            )
    # The widest configuration timed in bf16 against the narrowest one's earlier fp32 step.
    wides = sorted((r["parameters"], r["preset"]) for r in ok if r["part"] == "full" and r["variant"] == "bf16")
    bases = sorted(
        (r["parameters"], r["preset"]) for r in ok if r["part"] == "full_baseline" and r["variant"] == "fp32"
    )
    if wides and bases and wides[-1][0] > bases[0][0]:
        (p_small, small), (p_big, big) = bases[0], wides[-1]
        wide, base = by[(big, "full", "bf16")], by[(small, "full_baseline", "fp32")]
        if wide and base:
            out.append(
                f"- {big} ({p_big:,} parameters, bf16) {wide['cpu_s_per_step']:.3f} CPU-s per step against "
                f"{small} ({p_small:,} parameters, fp32, earlier LMI) {base['cpu_s_per_step']:.3f}: "
                f"target no more"
            )
    return (["## Targets", ""] + out) if out else []


def _markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# LMIDiffusion training throughput",
        "",
        f"- device: {meta['device_name'] if meta['device'] == 'cpu' else meta['device'] + ' (' + meta['device_name'] + ')'}; "
        f"torch {meta['torch']}; "
        f"{meta['torch_threads']} torch thread(s) per worker; last run {meta['date']}",
        "- `full`: one whole LMIDiffusion training step (augment, noise, LMI(x0, x_t+1) and the cached "
        "LMI(x0, x0), U-Net forward + backward, clip, Adam, EMA); `full_nocache`: the same with both maps "
        "computed every step; `full_baseline`: the same step with the LMI layer of an earlier commit (see the "
        "notes); `unet`: U-Net forward + ε-MSE + backward on a fixed "
        "input; `lmi` / `lmi_nocache` / `lmi_baseline`: the step's LMI work alone, likewise",
        "- images/s = batch x timed steps / wall time of the timed loop (after the warm-up steps; "
        "device synchronised on CUDA); first step = the first warm-up step (includes compilation)",
        "",
        "| preset | size | batch | U-Net params | threads (busy cores) | part | variant | images/s | s / step "
        "| CPU s / step | first step (s) | peak mem (MiB) |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        params_cell = r.get("parameters", "") and format(r["parameters"], ",")
        threads = f"{r.get('threads') or 'default'} ({r.get('busy_cores', 0)})"
        head = (
            f"| {r['preset']} | {r['size']} | {r['batch']} | {params_cell} | {threads} | {r['part']} | {r['variant']} |"
        )
        if r["status"] == "n/a":
            lines.append(f"{head} n/a ({r['reason']}) | | | | |")
            continue
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason']} | | | | |")
            continue
        if r.get("peak_gpu_mem_bytes") is not None:
            mem = f"{r['peak_gpu_mem_bytes'] / 2**20:.0f}"
        else:
            grow = (r["peak_rss_bytes"] - r.get("rss_before_steps_bytes", r["peak_rss_bytes"])) / 2**20
            mem = f"{r['peak_rss_bytes'] / 2**20:.0f} (+{grow:.0f})"
        lines.append(
            f"{head} {r['images_per_s']:.2f} | {r['s_per_step']:.3f} | {r['cpu_s_per_step']:.3f} "
            f"| {r['first_step_s']:.2f} | {mem} |"
        )
    lines += [
        "",
        "Peak memory: " + meta["memory_metric"],
        "",
        *_target_lines(result["results"]),
        "",
        *_speedup_lines(result["results"]),
    ]
    if meta.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in meta["notes"]]]
    lines += ["", "Commands:", "", "```", *meta["commands"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--preset", type=Path, default=ROOT / "params.yaml", help="params file (diffusion.unet, lmi, train)"
    )
    ap.add_argument("--size", type=int, default=0, help="image size in pixels (0: the preset's prepare.size)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's diffusion.train.batch_size)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (at least 1)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads per worker (0: torch's default)")
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data/slices/train.npz",
        help="training slices used as images (resized to --size); noise when missing",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement (compilation included)")
    ap.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="let torch.compile reuse its on-disk cache (default: a fresh cache per measurement)",
    )
    ap.add_argument("--note", action="append", default=[], help="free text added to the report's notes")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "benchmarks")
    ap.add_argument("--fresh", action="store_true", help="discard earlier rows in the output files")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of --preset, e.g. diffusion.unet.channels=[32,32,64] (repeatable)",
    )
    ap.add_argument("--label", default="", help="name of this configuration in the report (default: the preset's)")
    ap.add_argument(
        "--baseline-commit",
        default=BASELINE_COMMIT,
        help="commit whose LMI layer the *_baseline parts time (default %(default)s)",
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="keep this many other cores busy (spinning processes) while measuring: a shared machine",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    import torch

    sys.path.insert(0, str(ROOT))
    from lmid.config import load_params
    from lmid.io import read_json, write_json, write_text

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    from lmid.cli import parse_overrides

    overrides = parse_overrides(args.overrides) if args.overrides else {}
    params = load_params(args.preset, overrides or None, "--set")
    size = args.size or params.prepare.size
    batch = args.batch or params.diffusion.train.batch_size
    preset = args.label or params.preset
    out = args.out_dir / f"training-{device}.json"

    plan = []
    for part in args.parts:
        for variant in ["fp32"] if part.startswith("lmi") else args.variants:
            plan.append((part, variant))
    rows = []
    # Spinning processes stand for the other jobs of a parallel Snakemake run on the same cores.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        for part, variant in plan:
            row = {
                "busy_cores": args.busy,
                "threads": args.threads,
                "preset": preset,
                "preset_file": str(args.preset),
                "size": size,
                "batch": batch,
                "device": device,
                "part": part,
                "variant": variant,
                "unet": params.diffusion.unet.model_dump(mode="json"),
                "lmi_mode": params.lmi.mode,
                "date": _dt.datetime.now().isoformat(timespec="seconds"),
            }
            if variant in CUDA_ONLY and device != "cuda":
                row |= {"status": "n/a", "reason": "CUDA only"}
            else:
                spec = {
                    "preset": str(args.preset),
                    "size": size,
                    "batch": batch,
                    "device": device,
                    "variant": variant,
                    "part": part,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "threads": args.threads,
                    "data": str(args.data),
                    "overrides": overrides,
                    "baseline_commit": args.baseline_commit,
                }
                t0 = time.perf_counter()
                row |= _run(spec, args.timeout, args.warm_compile_cache)
                row["wall_s_including_startup"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            brief = {
                k: row.get(k)
                for k in (
                    "preset",
                    "size",
                    "part",
                    "variant",
                    "status",
                    "reason",
                    "images_per_s",
                    "s_per_step",
                    "first_step_s",
                )
                if row.get(k) is not None
            }
            print(json.dumps(brief), flush=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    n_params = next((r["parameters"] for r in rows if "parameters" in r), None)
    for r in rows:
        r.setdefault("parameters", n_params)

    # Keep earlier rows of other presets / sizes / batches in the same device's file.
    previous = read_json(out) if out.is_file() and not args.fresh else {"results": [], "meta": {}}
    key = (preset, size, batch, device)
    kept = [r for r in previous.get("results", []) if (r["preset"], r["size"], r["batch"], r["device"]) != key]
    command = "python benchmarks/bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands = [c for c in previous.get("meta", {}).get("commands", []) if c != command] + [command]
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": device,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "steps": args.steps,
        "warmup": args.warmup,
        "memory_metric": (
            "torch.cuda.max_memory_allocated over warm-up and timed steps"
            if device == "cuda"
            else "peak resident set size of the worker process (ru_maxrss; includes Python, torch, MONAI "
            "and the data), in brackets its growth during the warm-up and timed steps"
        ),
        "commands": commands,
        "notes": [n for n in previous.get("meta", {}).get("notes", []) if n not in args.note] + list(args.note),
    }
    if device == "cpu":
        note = (
            "CPU runs on a shared machine: CPU time per step is the steadier figure. The CUDA-only variants "
            "(bf16, channels_last) were not run; the CUDA code path (synchronised timing, "
            "torch.cuda.max_memory_allocated) was not exercised here."
        )
        if note not in meta["notes"]:
            meta["notes"].append(note)
    result = {"meta": meta, "results": kept + rows}
    write_json(out, result)
    write_text(out.with_suffix(".md"), _markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
