"""StyleGAN2-ADA baseline: a GAN trained on target (T1) slices only, then GAN inversion of the source.

Training (StyleGAN2-ADA, Karras et al. 2020, with the compact networks of
:mod:`lmid.networks.stylegan2`). Per step, on a batch of B real slices x (in [-1, 1]):

1. G step: non-saturating logistic loss ``softplus(−D(A(G(z))))`` with style mixing (probability
   0.9, as the reference) and random noise inputs; A is the augmentation pipe below.
2. D step: ``softplus(D(A(G(z)))) + softplus(−D(A(x)))``; the signs of D(A(x)) feed the ADA
   controller.
3. Every ``r1_every`` (16) steps, lazy R1: ``(γ/2)·|∇_y D(y)|² × r1_every`` at y = A(x)
   (γ = ``r1_gamma``), with D's Adam lr and β scaled by c = r1_every/(r1_every + 1) as in the
   reference. (The reference differentiates through A to x with a custom grid-sample op; torch's
   own has no double backward, so the penalty sits at D's input, as in StyleGAN2 without ADA.)
4. EMA generator: ``G_ema ← β G_ema + (1 − β) G`` with β = min(``ema_decay``, β_rampup), where the
   ramp-up (the reference's ``ema_rampup = 0.05``) makes the average span at most 5 % of the
   images seen so far.
5. Adaptive augmentation (ADA): :class:`AdaController` keeps r_t = E[sign(D(A(x)))] over the last
   ``ada_interval`` steps and moves p by ``sign(r_t − ada_target) · B · ada_interval / (ada_kimg ·
   1000)`` (so p can cross [0, 1] in ``ada_kimg`` thousand images), clamped to [0, 1].
   :class:`AugmentPipe` applies, each with probability p per sample, the geometric and colour
   augmentations that make sense for grey MRI: x-flip, 90° rotations, integer translation
   (≤ 12.5 % of the side), isotropic scaling (log2-normal, σ = 0.2), a small rotation (uniform
   ±15°; the reference draws any angle), brightness (+N(0, 0.2²)) and contrast (×2^N(0, 0.5²)).
   Geometric ones are one bilinear resampling with reflection padding, so the pipe is
   differentiable for the fakes.

Not included: path-length regularisation (the reference's ``auto`` config has it; it regularises
smoothness, not fidelity) and mixed-precision layers.

GAN inversion (translation), after the reference projector, with ``G_ema`` and, for each slice,
its own w (one vector broadcast to every layer, i.e. W space) and its own noise maps:

* w starts at the mean w̄ of ``invert_w_samples`` mapped z; σ_w = sqrt(E|w − w̄|²).
* Adam (β = 0.9, 0.999) on w and all noise maps, lr = ``invert_lr`` × ramp(t): a linear warm-up
  over the first 5 % of the steps and a cosine decay over the last 25 %.
* Gaussian noise of std σ_w · 0.05 · max(0, 1 − t/0.75)² added to w at every step.
* Noise regularisation: for every noise map and its 2×2-average-pooled pyramid down to 8×8, the
  squared mean of its product with itself shifted by one pixel along x and along y, weighted by
  ``invert_noise_weight``; after every step each map is renormalised to zero mean, unit variance.
* Distance between the source slice s (PD) and the generated slice g (T1-like): LPIPS-VGG is
  not available (no pretrained weights can be downloaded), and an intensity distance would be
  meaningless across modalities. ``invert_loss = "nmi_mind"`` (default) uses
  ``(1 − NMI(s, g)) + MIND(s, g)``:

  - NMI: normalised mutual information ``2 I(s; g) / (H(s) + H(g))`` of the whole slice, from a
    differentiable Parzen joint histogram (32 bins on [0, 1], cubic B-spline window). It
    is invariant to any one-to-one remapping of intensities, so it asks for the same tissue
    *layout*, not the same contrast.
  - MIND (modality independent neighbourhood descriptor, Heinrich et al. 2012): per pixel, the
    3×3-patch distances to the 4 neighbouring patches, divided by their mean (local variance)
    and mapped through exp(−·); the mean absolute difference of the descriptors of s and g. It
    is a local structural (edge) term that is the same for PD and T1 wherever both have an edge.

  ``"lmi_mind"`` replaces the global NMI with the project's differentiable local MI
  (``lmid.lmi.local_mutual_information(mode="exact")`` with the ``lmi`` section's window, bins
  and sigma), normalised by LMI(s, s): ``1 − mean LMI(s, g) / mean LMI(s, s)``. It is closer to
  the method under test but ~100× slower (21 s per forward+backward of four 64×64 slices on the
  shared 2-core test machine, 27 bins), so the default is the global NMI.

nfe = ``invert_steps`` synthesis forward passes (each with a backward pass) per slice.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmid.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import InputFileError, LmidError, ParamsError
from lmid.clock import TrainClock
from lmid.methods.base import Method, TrainingData, Translation
from lmid.methods.gan_common import save_snapshot, to_signed, write_train_log
from lmid.methods.stylegan2_ada import AdaController, AugmentPipe
from lmid.methods.stylegan2_projector import (
    INVERSION_LOSS_TEXT,
    INVERT_BATCH,
    project,
    reference_histogram,
    w_statistics,
)
from lmid.networks import autocast, count_parameters
from lmid.networks.stylegan2 import Discriminator, Generator, init_stylegan
from lmid.progress import progress_disabled

#: Added to ``params.seed`` for this method's generators.
SEED_OFFSET = 4001
STYLE_MIXING_PROB = 0.9
EMA_RAMPUP = 0.05
MBSTD_GROUP = 4


# ------------------------------------------------------------------------------------- method
class StyleGan2(Method):
    name = "stylegan2"
    description = (
        "StyleGAN2-ADA trained on target slices only; source slices GAN-inverted (projector with a "
        "cross-modal NMI + MIND distance)"
    )

    @staticmethod
    def arch(params: Params, resolution: int) -> dict:
        p = params.stylegan2
        return {
            "z_dim": p.z_dim,
            "w_dim": p.w_dim,
            "mapping_layers": p.mapping_layers,
            "resolution": resolution,
            "channels": p.channels,
            "channel_base": p.channel_base,
        }

    # ------------------------------------------------------------------------------- train
    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:

        p = params.stylegan2
        cfg = p.train
        out_dir = Path(out_dir)
        if data.target is None or len(data.target) == 0:
            raise LmidError("stylegan2: no target training slices")
        h, w = data.target.shape[1:]
        if h != w or h < 8 or 2 ** int(round(math.log2(h))) != h:
            raise ParamsError(
                f"stylegan2: slices must be square with a power-of-two side >= 8, got {h}×{w} (prepare.size)"
            )
        arch = self.arch(params, h)
        seed = params.seed + SEED_OFFSET
        init_gen = torch.Generator().manual_seed(seed)
        g = Generator(**arch)
        d = Discriminator(h, p.channels, p.channel_base, MBSTD_GROUP)
        init_stylegan(g, init_gen)
        init_stylegan(d, init_gen)
        g.to(device).train()
        d.to(device).train()
        g_ema = copy.deepcopy(g).eval().requires_grad_(False)
        c = p.r1_every / (p.r1_every + 1.0)  # lazy-regularisation correction of D's Adam
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr * c, betas=(0.0, 0.99**c), eps=1e-8)
        ada = AdaController(p.ada_target, p.ada_interval, p.ada_kimg, cfg.batch_size)
        augment = AugmentPipe()
        gen = torch.Generator().manual_seed(seed + 1)  # batches, z, noise, mixing, augmentation
        columns = ["step", "loss_g", "loss_d", "r1", "d_real", "d_fake", "ada_p", "ada_rt"]
        rows: list[list[float]] = []
        window: list[list[float]] = []
        start = 0
        last_r1 = float("nan")

        ckpt_path = out_dir / "checkpoint.pt"
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path, required=("g", "d", "g_ema", "opt_g", "opt_d", "ada", "gen", "step"))
            load_module_state(g, state["g"], ckpt_path, "stylegan2 generator")
            load_module_state(d, state["d"], ckpt_path, "stylegan2 discriminator")
            load_module_state(g_ema, state["g_ema"], ckpt_path, "stylegan2 EMA generator")
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            ada.load_state_dict(state["ada"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            rows, window, start, last_r1 = state["log_rows"], state["log_window"], int(state["step"]), state["last_r1"]
        clock = TrainClock.resumed(state if ckpt_path.exists() else None)
        # What the histogram term of the inversion compares with (stylegan2.invert_loss = nmi_mind_hist).
        target_histogram = reference_histogram(data.target)

        def model_state() -> dict:
            return {
                "method": self.name,
                "arch": arch,
                "g_ema": g_ema.state_dict(),
                "target_histogram": target_histogram,
            }

        def save(step: int) -> None:
            save_checkpoint(
                ckpt_path,
                {
                    "method": self.name,  # whose folder this is (lmid train refuses another method's)
                    "g": g.state_dict(),
                    "d": d.state_dict(),
                    "g_ema": g_ema.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "ada": ada.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "log_rows": rows,
                    "log_window": window,
                    "last_r1": last_r1,
                    "arch": arch,
                    **clock.state(),
                },
            )

        reals = to_signed(data.target, device)
        bs = cfg.batch_size

        def styles(batch: int) -> torch.Tensor:
            """ws (B, num_ws, w_dim) with style mixing: layers from a cut-off on use a second z."""
            z = torch.randn(batch, g.z_dim, generator=gen).to(device)
            ws = g.mapping(z)[:, None].repeat(1, g.num_ws, 1)
            if torch.rand((), generator=gen).item() < STYLE_MIXING_PROB:
                cutoff = int(torch.randint(1, g.num_ws, (), generator=gen))
                z2 = torch.randn(batch, g.z_dim, generator=gen).to(device)
                ws[:, cutoff:] = g.mapping(z2)[:, None]
            return ws

        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="stylegan2", disable=progress_disabled()
        )
        for step in bar:
            real = reals[torch.randint(len(reals), (bs,), generator=gen).to(device)]
            # 1. Generator: non-saturating loss through the augmentations.
            d.requires_grad_(False)
            with autocast(device):
                fake = g.synthesis(styles(bs), g.synthesis.make_noise(bs, gen, device))
                loss_g = F.softplus(-d(augment(fake, ada.p, gen)).float()).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            # 2. Discriminator: logistic loss on augmented fakes and reals.
            d.requires_grad_(True)
            with torch.no_grad(), autocast(device):
                fake = g.synthesis(styles(bs), g.synthesis.make_noise(bs, gen, device))
            with autocast(device):
                logit_f = d(augment(fake.float(), ada.p, gen)).float()
                logit_r = d(augment(real, ada.p, gen)).float()
                loss_d = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
            ada.accumulate(logit_r)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # 3. Lazy R1 on reals (float32: a gradient penalty needs the precision).
            if step % p.r1_every == 0:
                # Penalised at D's input (the augmented real): torch's grid_sample has no double
                # backward, which the reference's custom op provides for a penalty before it.
                x = augment(real, ada.p, gen).detach().requires_grad_(True)
                logits = d(x)
                (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
                r1 = grad.square().sum(dim=(1, 2, 3))
                loss_r1 = (r1 * (p.r1_gamma / 2)).mean() * p.r1_every
                opt_d.zero_grad(set_to_none=True)
                loss_r1.backward()
                opt_d.step()
                last_r1 = float(r1.mean().detach())
            # 4. EMA with ramp-up: the average spans at most EMA_RAMPUP of the images seen.
            done = step + 1
            beta = min(p.ema_decay, 0.5 ** (1.0 / max(EMA_RAMPUP * done, 1e-8)))
            with torch.no_grad():
                for pe, pg in zip(g_ema.parameters(), g.parameters()):
                    pe.lerp_(pg, 1.0 - beta)
            # 5. ADA.
            ada.step()

            losses = [
                float(loss_g.detach()),
                float(loss_d.detach()),
                last_r1,
                float(logit_r.detach().mean()),
                float(logit_f.detach().mean()),
            ]
            if not all(math.isfinite(v) for v in losses[:2]):
                raise LmidError(f"stylegan2: loss is not finite at step {done}: {losses}")
            window.append(losses)
            if done % cfg.log_every == 0 or done == cfg.steps:
                rows.append([done] + np.nanmean(np.asarray(window), axis=0).tolist() + [ada.p, ada.rt])
                window = []
                write_train_log(out_dir / "train_log.csv", columns, rows)
                bar.set_postfix(g=f"{rows[-1][1]:.3f}", d=f"{rows[-1][2]:.3f}", p=f"{ada.p:.3f}")
            if cfg.snapshot_every and done % cfg.snapshot_every == 0:
                save_snapshot(out_dir, done, model_state(), clock)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        wall = clock.this_run()
        # A run resumed at its last step makes no new rows; the log (which the workflow deletes
        # before rerunning the job) is written again from the rows the checkpoint kept.
        write_train_log(out_dir / "train_log.csv", columns, rows)

        save_checkpoint(out_dir / "model.pt", model_state())
        info = {
            "steps": cfg.steps,
            "steps_this_run": cfg.steps - start,
            "train_loop_s": round(wall, 3),
            "s_per_step": round(wall / max(1, cfg.steps - start), 4),
            "kimg": round(cfg.steps * bs / 1000, 3),
            "train_loop_cpu_s_total": round(clock.cpu(), 3),
            "images_seen": cfg.steps * bs,
            "generator_params": count_parameters(g_ema),
            "discriminator_params": count_parameters(d),
            "ada_p_final": round(ada.p, 4),
            "target_slices_seen": int(len(data.target)),
            "nfe_per_slice": p.invert_steps,
            "inversion_loss": INVERSION_LOSS_TEXT[p.invert_loss],
        }
        if rows:
            info["final_losses"] = dict(zip(columns[1:], [round(v, 5) for v in rows[-1][1:]]))
        return info

    # --------------------------------------------------------------------------- translate
    def load(self, params: Params, model_path: Path, device: torch.device):
        if model_path is None:
            raise LmidError("stylegan2: translate needs --model (the model.pt written by 'lmid train')")
        state = load_checkpoint(model_path, required=("arch", "g_ema"))
        g = Generator(**state["arch"])
        load_module_state(g, state["g_ema"], model_path, what="stylegan2 EMA generator")
        g = g.to(device).eval().requires_grad_(False)
        hist = state.get("target_histogram")
        if hist is not None and not (isinstance(hist, torch.Tensor) and hist.ndim == 1):
            raise InputFileError(model_path, "target_histogram must be a 1-D tensor")
        g.target_histogram = hist  # None in a model trained before it was stored
        return g

    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        p = params.stylegan2
        n, h, w = source.shape
        if (h, w) != (model.synthesis.resolution,) * 2:
            raise LmidError(f"stylegan2: model makes {model.synthesis.resolution}² slices, source slices are {h}×{w}")
        # The same w̄ for every slice and shard: drawn from a fixed generator.
        w_avg, w_std = w_statistics(model, p.invert_w_samples, params.seed + SEED_OFFSET + 2, device)
        seeds = np.asarray(seeds, dtype=np.int64)
        images, losses, traces = [], [], []
        for k in range(samples):
            out = np.empty((n, h, w), np.float32)
            for i in range(0, n, INVERT_BATCH):
                src = torch.as_tensor(np.asarray(source[i : i + INVERT_BATCH], np.float32))[:, None].to(device)
                # Sample k of a slice uses a seed derived from the slice's seed.
                img, dist, trace = project(
                    model,
                    src,
                    seeds[i : i + INVERT_BATCH] + 1_000_003 * k,
                    params,
                    w_avg,
                    w_std,
                    progress=True,
                    target_histogram=getattr(model, "target_histogram", None),
                )
                out[i : i + INVERT_BATCH] = img[:, 0].cpu().numpy()
                losses.append(dist.cpu().numpy())
                traces.append(np.asarray(trace) * len(src))
            images.append(out)
        stack = np.stack(images)
        # Mean distance over all slices at ~10 points of the optimisation (for the report).
        trace = np.sum(traces, axis=0) / (n * samples)
        marks = sorted({int(round(x)) for x in np.linspace(0, len(trace) - 1, 11)})
        info = {
            "inversion_loss": INVERSION_LOSS_TEXT[p.invert_loss],
            "inversion_steps": p.invert_steps,
            "inversion_final_distance_mean": round(float(np.mean(np.concatenate(losses))), 5),
            "w_samples": p.invert_w_samples,
            "inversion_distance_trace": {int(k): round(float(trace[k]), 5) for k in marks},
        }
        # Inversion 0 is scored; the mean and spread over inversions are the uncertainty product.
        return Translation(
            image=stack[0],
            mean=stack.mean(0) if samples > 1 else None,
            std=stack.std(0) if samples > 1 else None,
            nfe=p.invert_steps * samples,
            info=info,
        )
