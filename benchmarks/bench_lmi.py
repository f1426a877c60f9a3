"""Benchmark of the LMI layer (lmid.lmi) against two references written here.

* ``vectorised``: the straightforward vectorised layer in the style of the released code: unfold
  every source patch and every candidate target patch, materialise the kernel matrices and the
  joint histograms of all pixels x candidates at once, one batched matmul, max over candidates.
  For ``authors`` mode the folded candidates come from the released construction (a 3x3 mosaic
  of every pixel's patch, unfolded again); for ``exact`` mode from true shifted windows.
* ``vectorised_floor``: the same plus the subnormal floor lmid.lmi applies to kernel values;
  it separates the gain of chunking/sharing from the gain of avoiding subnormal arithmetic
  (x86 CPUs process subnormal floats ~100x slower; the released layer hits many).
* ``loop``: a per-pixel Python loop (torch ops per patch pair), only at small sizes.

Every measurement runs in a fresh subprocess (``--worker``) so that its peak memory is its own:

* CPU: growth of the process's peak resident set size (``ru_maxrss``) during the first call,
  over the value after imports and input allocation.  It counts every byte the allocator took
  from the OS for the call (tensors, temporaries, library workspaces); it can under-count
  memory the allocator reused from earlier frees, which is why the first call is measured.
* CUDA: ``torch.cuda.max_memory_allocated`` during the first call minus the memory allocated
  before it (tensors only, not the caching allocator's reserve).

Times: median of ``--reps`` calls after the first (which is reported separately), wall clock,
with ``torch.cuda.synchronize`` on CUDA; on CPU also the process CPU time of a call (all
threads), steadier than wall time on a shared machine.  ``--threads`` (default 1) sets torch's
intra-op threads in every worker: on a shared 2-core machine two threads waiting on each other's
barriers were measured 3-10x slower than one.  Each worker saves its output; the parent reports the
max abs difference of every reference to our layer on the same inputs.

Usage::

    python benchmarks/bench_lmi.py --sizes 64 128 256 --batch 2 --device cpu
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-10
IMPLS = ("ours", "vectorised", "vectorised_floor", "loop")


# --------------------------------------------------------------------------- references


def _kernels(values, centres, std, floor):
    import torch

    k = torch.exp(-0.5 * ((values.unsqueeze(-1) - centres) / std) ** 2)
    if floor:
        k = torch.where(k < 2.0 * torch.finfo(k.dtype).tiny ** 0.5, torch.zeros((), dtype=k.dtype), k)
    return k


def _nmi_batch(src, tgt, bins=27, sigma=2.0, floor=False):
    """NMI of patch pairs: src, tgt (N, n_pixels) intensities in grey levels -> (N,)."""
    import torch

    centres = torch.linspace(0, 255, bins, dtype=src.dtype, device=src.device)
    std = 2.0 * sigma**2
    ks = _kernels(src, centres, std, floor)  # (N, n, bins)
    kt = _kernels(tgt, centres, std, floor)
    p_s = ks.mean(1)
    p_s = p_s / (p_s.sum(1, keepdim=True) + EPS)
    p_t = kt.mean(1)
    p_t = p_t / (p_t.sum(1, keepdim=True) + EPS)
    joint = torch.bmm(ks.transpose(1, 2), kt)  # every joint histogram at once
    joint = joint / (joint.sum((1, 2), keepdim=True) + EPS)
    h_s = -(p_s * torch.log2(p_s + EPS)).sum(1)
    h_t = -(p_t * torch.log2(p_t + EPS)).sum(1)
    h_st = -(joint * torch.log2(joint + EPS)).sum((1, 2))
    return 2 * (h_s + h_t - h_st + EPS) / (h_s + h_t + EPS)


def vectorised_reference(source, target, mode="authors", floor=False, window=3):
    """All pixels x candidates at once, as the released layer does."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = source.shape
    u, v = source * 255, target * 255
    if mode == "authors":
        u, v = torch.trunc(u), torch.trunc(v)
        # Mosaic of every pixel's 3x3 target patch (3H x 3W), re-unfolded at every mosaic
        # position: the candidate (a, b) of pixel (i, j) is the window at (3i + a, 3j + b).
        patches = F.pad(v, (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1)  # (B,1,H,W,3,3)
        mosaic = patches.permute(0, 1, 2, 4, 3, 5).reshape(b, 1, 3 * h, 3 * w)
        cand = F.pad(mosaic, (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1)  # (B,1,3H,3W,3,3)
        cand = cand.reshape(b, h, 3, w, 3, 9).permute(0, 1, 3, 2, 4, 5)  # (B,H,W,a,b,9)
        r = 1
    else:
        r = window // 2
        ext = F.pad(v, (2 * r,) * 4).unfold(2, 2 * window - 1, 1).unfold(3, 2 * window - 1, 1)
        cand = ext.unfold(4, window, 1).unfold(5, window, 1)  # (B,1,H,W,a,b,c,d)
        cand = cand.reshape(b, h, w, window, window, window * window)
    src = F.pad(u, (r,) * 4).unfold(2, window, 1).unfold(3, window, 1)
    src = src.reshape(b, h, w, 1, 1, window * window).expand_as(cand)  # tiled per candidate
    npx = window * window
    nmi = _nmi_batch(src.reshape(-1, npx), cand.reshape(-1, npx), floor=floor)
    return nmi.view(b, h * w, npx).amax(-1).view(b, 1, h, w)


def loop_reference(source, target, mode="authors", window=3):
    """One patch pair at a time, in Python loops (the slow baseline)."""
    import torch

    b, _, h, w = source.shape
    u, v = source[:, 0] * 255, target[:, 0] * 255
    if mode == "authors":
        u, v = torch.trunc(u), torch.trunc(v)
    r = window // 2

    def at(img, row, col):
        return img[row, col] if row is not None and col is not None and 0 <= row < h and 0 <= col < w else 0.0

    def fold(i, k, n):  # R(i, k), the folded rows of docs/method.md §3
        if k == -1:
            return i if i > 0 else None
        if k == 3:
            return i if i < n - 1 else None
        return i + k - 1

    out = torch.zeros_like(source)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                src = torch.tensor(
                    [float(at(u[bi], i + c - r, j + d - r)) for c in range(window) for d in range(window)]
                )
                best = -math.inf
                for a in range(window):
                    for bb in range(window):
                        if mode == "authors":
                            tgt = [
                                at(v[bi], fold(i, a + c - 1, h), fold(j, bb + d - 1, w))
                                for c in range(3)
                                for d in range(3)
                            ]
                        else:
                            tgt = [
                                at(v[bi], i + a + c - 2 * r, j + bb + d - 2 * r)
                                for c in range(window)
                                for d in range(window)
                            ]
                        tgt = torch.tensor([float(t) for t in tgt])
                        best = max(best, float(_nmi_batch(src[None], tgt[None])[0]))
                out[bi, 0, i, j] = best
    return out


# --------------------------------------------------------------------------- worker


def _worker(spec: dict) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from lmid.lmi import local_mutual_information

    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    g = torch.Generator().manual_seed(0)
    shape = (spec["batch"], 1, spec["size"], spec["size"])
    source = torch.rand(shape, generator=g).to(device)
    target = torch.rand(shape, generator=g).to(device)
    mode, impl = spec["mode"], spec["impl"]

    if impl == "ours":

        def call():
            return local_mutual_information(source, target, mode=mode)
    elif impl == "vectorised":

        def call():
            return vectorised_reference(source, target, mode=mode)
    elif impl == "vectorised_floor":

        def call():
            return vectorised_reference(source, target, mode=mode, floor=True)
    else:

        def call():
            return loop_reference(source, target, mode=mode)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        t0 = time.perf_counter()
        out = call()
        sync()
        first = time.perf_counter() - t0
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        times, cpu_times = [], []
        for _ in range(spec["reps"]):
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    torch.save(out.cpu(), spec["out"])
    times = times or [first]
    cpu_times = cpu_times or [float("nan")]
    return {
        "first_call_s": first,
        "times_s": times,
        "time_s": sorted(times)[len(times) // 2],
        "cpu_time_s": sorted(cpu_times)[len(cpu_times) // 2],
        "peak_mem_bytes": int(peak),
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- driver


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _vectorised_bytes(batch: int, size: int, bins: int = 27, cand: int = 9) -> int:
    """Rough peak of the vectorised reference: ~4 joint-sized float32 tensors live at once."""
    return 4 * batch * size * size * cand * bins * bins * 4


def _run(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "reason": f"exit {res.returncode}: {' | '.join(tail)}"}
    return {"status": "ok", **json.loads(res.stdout.strip().splitlines()[-1])}


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# LMI layer benchmark",
        "",
        f"Device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
        f"{meta['torch_threads']} threads, float32, no grad; {meta['date']}.",
        f"Time: median of {meta['reps']} calls after the first. Memory: {meta['memory_metric']}",
        "",
        "| size | batch | mode | implementation | time / batch (s) | CPU time / batch (s) | first call (s) "
        "| peak mem (MiB) | max abs diff vs ours | ours x faster (wall) | ours x faster (CPU) |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['size']} | {r['batch']} | {r['mode']} | {r['impl']} | {r['status']}: {r['reason']} | | | | | | |"
            )
            continue
        diff = "" if r.get("max_abs_diff_vs_ours") is None else f"{r['max_abs_diff_vs_ours']:.1e}"
        speed = "" if r.get("speedup_of_ours") is None else f"{r['speedup_of_ours']:.1f}"
        cspeed = "" if r.get("cpu_speedup_of_ours") is None else f"{r['cpu_speedup_of_ours']:.1f}"
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['mode']} | {r['impl']} | {r['time_s']:.3f} | "
            f"{r['cpu_time_s']:.3f} | {r['first_call_s']:.3f} | {r['peak_mem_bytes'] / 2**20:.0f} | "
            f"{diff} | {speed} | {cspeed} |"
        )
    notes = meta.get("notes") or []
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--modes", nargs="+", choices=["authors", "exact"], default=["authors", "exact"])
    ap.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS[:3],
        default=list(IMPLS[:3]),
        help="implementations timed at --sizes (the loop runs at --loop-sizes only)",
    )
    ap.add_argument("--loop-sizes", type=int, nargs="*", default=[16, 32])
    ap.add_argument("--loop-batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker (0: torch default)")
    ap.add_argument(
        "--ref-mem-limit-gb",
        type=float,
        default=8.0,
        help="skip the vectorised references when their estimated peak exceeds this",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "lmi.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name(0)
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "dtype": "float32",
        "batch": args.batch,
        "reps": args.reps,
        "inputs": "uniform random source and target in [0, 1], seed 0",
        "memory_metric": (
            "torch.cuda.max_memory_allocated during the first call minus memory allocated before it"
            if device == "cuda"
            else "growth of the subprocess's peak RSS (ru_maxrss) during the first call"
        ),
        "notes": [],
    }

    plan = []
    for size in args.sizes:
        for mode in args.modes:
            for impl in args.impls:
                plan.append((size, args.batch, mode, impl))
    for size in args.loop_sizes:
        for mode in args.modes:
            plan.append((size, args.loop_batch, mode, "ours"))
            plan.append((size, args.loop_batch, mode, "loop"))
    seen, ordered = set(), []
    for p in plan:  # keep "ours" first in each group so references can be compared to it
        if p not in seen:
            seen.add(p)
            ordered.append(p)
    ordered.sort(key=lambda p: (p[0], p[1], p[2], IMPLS.index(p[3])))

    rows: list[dict] = []
    limit = args.ref_mem_limit_gb * 2**30
    with tempfile.TemporaryDirectory() as tmp:
        for size, batch, mode, impl in ordered:
            row = {"size": size, "batch": batch, "mode": mode, "impl": impl, "device": device}
            est = _vectorised_bytes(batch, size)
            if impl.startswith("vectorised") and est > limit:
                row |= {
                    "status": "skipped",
                    "reason": f"estimated peak {est / 2**30:.1f} GiB > limit {args.ref_mem_limit_gb:g} GiB",
                }
            else:
                out = Path(tmp) / f"{size}_{batch}_{mode}_{impl}.pt"
                spec = {
                    "size": size,
                    "batch": batch,
                    "mode": mode,
                    "impl": impl,
                    "device": device,
                    "reps": 1 if impl == "loop" else args.reps,
                    "out": str(out),
                    "threads": args.threads,
                }
                t0 = time.perf_counter()
                row |= _run(spec, args.timeout)
                row["wall_s_including_startup"] = round(time.perf_counter() - t0, 2)
                if row["status"] == "ok":
                    row["output"] = str(out)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("output", "times_s")}), flush=True)

        for row in rows:  # agreement and speed-up against our layer on the same inputs
            ours = next(
                (
                    r
                    for r in rows
                    if r["impl"] == "ours"
                    and r["status"] == "ok"
                    and (r["size"], r["batch"], r["mode"]) == (row["size"], row["batch"], row["mode"])
                ),
                None,
            )
            if row["impl"] != "ours" and row["status"] == "ok" and ours is not None:
                ref = torch.load(row["output"])
                mine = torch.load(ours["output"])
                row["max_abs_diff_vs_ours"] = float((ref - mine).abs().max())
                row["speedup_of_ours"] = row["time_s"] / ours["time_s"]
                row["cpu_speedup_of_ours"] = row["cpu_time_s"] / ours["cpu_time_s"]
                row["memory_ratio_vs_ours"] = row["peak_mem_bytes"] / max(ours["peak_mem_bytes"], 1)
        for row in rows:
            row.pop("output", None)

    meta["load_average_at_end"] = list(os.getloadavg())
    meta["notes"].append(
        "Timings on a shared machine (load average at start "
        f"{meta['load_average_at_start'][0]:.1f}, at end {meta['load_average_at_end'][0]:.1f}, "
        f"{meta['cpu_count']} cores): CPU time is the steadier figure."
    )
    if any(r["status"] == "skipped" for r in rows):
        meta["notes"].append("Skipped rows give the reason (estimated memory or time limit).")
    result = {"meta": meta, "results": rows}
    _atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    _atomic_write(args.out.with_suffix(".md"), _markdown(meta, rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
