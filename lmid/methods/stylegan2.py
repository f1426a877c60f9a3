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
from lmid.methods.stylegan2_distances import INVERSION_LOSS_TEXT, reference_histogram
from lmid.methods.stylegan2_projector import INVERT_BATCH, project, w_statistics
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
        """The steps of the module docstring, ``stylegan2.train.steps`` of them, resumed from
        ``out_dir/checkpoint.pt`` when there is one; writes ``model.pt`` (G_ema and the target
        histogram the inversion compares with) and the loss log."""
        cfg = params.stylegan2.train
        out_dir = Path(out_dir)
        if data.target is None or len(data.target) == 0:
            raise LmidError("stylegan2: no target training slices")
        h, w = data.target.shape[1:]
        if h != w or h < 8 or 2 ** int(round(math.log2(h))) != h:
            raise ParamsError(
                f"stylegan2: slices must be square with a power-of-two side >= 8, got {h}×{w} (prepare.size)"
            )
        run = TrainingRun(params, self.arch(params, h), device)
        ckpt_path = out_dir / "checkpoint.pt"
        state = run.resume(ckpt_path) if ckpt_path.exists() else None
        clock = TrainClock.resumed(state)
        # What the histogram term of the inversion compares with (stylegan2.invert_loss = nmi_mind_hist).
        target_histogram = reference_histogram(data.target)

        def model_state() -> dict:
            return {
                "method": self.name,
                "arch": run.arch,
                "g_ema": run.g_ema.state_dict(),
                "target_histogram": target_histogram,
            }

        reals = to_signed(data.target, device)
        bar = tqdm(
            range(run.start, cfg.steps),
            initial=run.start,
            total=cfg.steps,
            desc="stylegan2",
            disable=progress_disabled(),
        )
        for step in bar:
            real = reals[torch.randint(len(reals), (cfg.batch_size,), generator=run.gen).to(device)]
            losses = run.step(real, step)
            done = step + 1
            if not all(math.isfinite(v) for v in losses[:2]):
                raise LmidError(f"stylegan2: loss is not finite at step {done}: {losses}")
            run.window.append(losses)
            if done % cfg.log_every == 0 or done == cfg.steps:
                run.log_row(done, out_dir / "train_log.csv")
                bar.set_postfix(g=f"{run.rows[-1][1]:.3f}", d=f"{run.rows[-1][2]:.3f}", p=f"{run.ada.p:.3f}")
            if cfg.snapshot_every and done % cfg.snapshot_every == 0:
                save_snapshot(out_dir, done, model_state(), clock)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save_checkpoint(ckpt_path, {"method": self.name, **run.checkpoint(done), **clock.state()})
        wall = clock.this_run()
        # A run resumed at its last step makes no new rows; the log (which the workflow deletes
        # before rerunning the job) is written again from the rows the checkpoint kept.
        write_train_log(out_dir / "train_log.csv", LOG_COLUMNS, run.rows)
        save_checkpoint(out_dir / "model.pt", model_state())
        return run.info(wall, clock, len(data.target))

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


# ------------------------------------------------------------------------------- training
#: Columns of train_log.csv: the step, then means over the steps since the last row, then ADA's state.
LOG_COLUMNS = ["step", "loss_g", "loss_d", "r1", "d_real", "d_fake", "ada_p", "ada_rt"]


class TrainingRun:
    """The networks, optimisers, ADA state, random generator and loss log of one training run."""

    def __init__(self, params: Params, arch: dict, device: torch.device):
        p = params.stylegan2
        self.p, self.arch, self.device = p, arch, device
        seed = params.seed + SEED_OFFSET
        init_gen = torch.Generator().manual_seed(seed)
        self.g = Generator(**arch)
        self.d = Discriminator(arch["resolution"], p.channels, p.channel_base, MBSTD_GROUP)
        init_stylegan(self.g, init_gen)
        init_stylegan(self.d, init_gen)
        self.g.to(device).train()
        self.d.to(device).train()
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        c = p.r1_every / (p.r1_every + 1.0)  # lazy-regularisation correction of D's Adam
        lr = p.train.lr
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr * c, betas=(0.0, 0.99**c), eps=1e-8)
        self.ada = AdaController(p.ada_target, p.ada_interval, p.ada_kimg, p.train.batch_size)
        self.augment = AugmentPipe()
        self.gen = torch.Generator().manual_seed(seed + 1)  # batches, z, noise, mixing, augmentation
        self.rows: list[list[float]] = []
        self.window: list[list[float]] = []
        self.start = 0
        self.last_r1 = float("nan")

    # ------------------------------------------------------------------------- checkpoint
    def resume(self, path: Path) -> dict:
        """Continue from the checkpoint at ``path``; returns its contents (the clock reads them)."""
        state = load_checkpoint(path, required=("g", "d", "g_ema", "opt_g", "opt_d", "ada", "gen", "step"))
        load_module_state(self.g, state["g"], path, "stylegan2 generator")
        load_module_state(self.d, state["d"], path, "stylegan2 discriminator")
        load_module_state(self.g_ema, state["g_ema"], path, "stylegan2 EMA generator")
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ada.load_state_dict(state["ada"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.rows, self.window = state["log_rows"], state["log_window"]
        self.start, self.last_r1 = int(state["step"]), state["last_r1"]
        return state

    def checkpoint(self, step: int) -> dict:
        """Everything :meth:`resume` needs to continue after ``step``."""
        return {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "g_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ada": self.ada.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "log_rows": self.rows,
            "log_window": self.window,
            "last_r1": self.last_r1,
            "arch": self.arch,
        }

    # ------------------------------------------------------------------------------ steps
    def step(self, real: torch.Tensor, step: int) -> list[float]:
        """One training step (0-based ``step``) on the batch ``real``; its losses for the log."""
        loss_g = self.generator_step(len(real))
        loss_d, logit_r, logit_f = self.discriminator_step(real)
        if step % self.p.r1_every == 0:
            self.r1_step(real)
        self.update_ema(steps_done=step + 1)
        self.ada.step()
        return [
            float(loss_g.detach()),
            float(loss_d.detach()),
            self.last_r1,
            float(logit_r.detach().mean()),
            float(logit_f.detach().mean()),
        ]

    def styles(self, batch: int) -> torch.Tensor:
        """ws (B, num_ws, w_dim) with style mixing: layers from a cut-off on use a second z."""
        g, gen = self.g, self.gen
        z = torch.randn(batch, g.z_dim, generator=gen).to(self.device)
        ws = g.mapping(z)[:, None].repeat(1, g.num_ws, 1)
        if torch.rand((), generator=gen).item() < STYLE_MIXING_PROB:
            cutoff = int(torch.randint(1, g.num_ws, (), generator=gen))
            z2 = torch.randn(batch, g.z_dim, generator=gen).to(self.device)
            ws[:, cutoff:] = g.mapping(z2)[:, None]
        return ws

    def _fakes(self, batch: int) -> torch.Tensor:
        return self.g.synthesis(self.styles(batch), self.g.synthesis.make_noise(batch, self.gen, self.device))

    def generator_step(self, batch: int) -> torch.Tensor:
        """1. Non-saturating loss of G through the augmentations."""
        self.d.requires_grad_(False)
        with autocast(self.device):
            fake = self._fakes(batch)
            loss_g = F.softplus(-self.d(self.augment(fake, self.ada.p, self.gen)).float()).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return loss_g

    def discriminator_step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """2. Logistic loss of D on augmented fakes and reals; the reals' logits feed ADA."""
        d, augment, gen = self.d, self.augment, self.gen
        d.requires_grad_(True)
        with torch.no_grad(), autocast(self.device):
            fake = self._fakes(len(real))
        with autocast(self.device):
            logit_f = d(augment(fake.float(), self.ada.p, gen)).float()
            logit_r = d(augment(real, self.ada.p, gen)).float()
            loss_d = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
        self.ada.accumulate(logit_r)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return loss_d, logit_r, logit_f

    def r1_step(self, real: torch.Tensor) -> None:
        """3. Lazy R1 on reals (float32: a gradient penalty needs the precision)."""
        # Penalised at D's input (the augmented real): torch's grid_sample has no double
        # backward, which the reference's custom op provides for a penalty before it.
        x = self.augment(real, self.ada.p, self.gen).detach().requires_grad_(True)
        logits = self.d(x)
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3))
        loss_r1 = (r1 * (self.p.r1_gamma / 2)).mean() * self.p.r1_every
        self.opt_d.zero_grad(set_to_none=True)
        loss_r1.backward()
        self.opt_d.step()
        self.last_r1 = float(r1.mean().detach())

    def update_ema(self, steps_done: int) -> None:
        """4. EMA with ramp-up: the average spans at most EMA_RAMPUP of the images seen."""
        beta = min(self.p.ema_decay, 0.5 ** (1.0 / max(EMA_RAMPUP * steps_done, 1e-8)))
        with torch.no_grad():
            for pe, pg in zip(self.g_ema.parameters(), self.g.parameters()):
                pe.lerp_(pg, 1.0 - beta)

    # ------------------------------------------------------------------------------ report
    def log_row(self, done: int, path: Path) -> None:
        """A row of the loss log: the mean of the steps since the last row, and ADA's state."""
        self.rows.append([done] + np.nanmean(np.asarray(self.window), axis=0).tolist() + [self.ada.p, self.ada.rt])
        self.window = []
        write_train_log(path, LOG_COLUMNS, self.rows)

    def info(self, wall: float, clock: TrainClock, target_slices: int) -> dict:
        """``train_info.json``: the run's length, time, network sizes and final losses."""
        p, cfg, bs = self.p, self.p.train, self.p.train.batch_size
        info = {
            "steps": cfg.steps,
            "steps_this_run": cfg.steps - self.start,
            "train_loop_s": round(wall, 3),
            "s_per_step": round(wall / max(1, cfg.steps - self.start), 4),
            "kimg": round(cfg.steps * bs / 1000, 3),
            "train_loop_cpu_s_total": round(clock.cpu(), 3),
            "images_seen": cfg.steps * bs,
            "generator_params": count_parameters(self.g_ema),
            "discriminator_params": count_parameters(self.d),
            "ada_p_final": round(self.ada.p, 4),
            "target_slices_seen": int(target_slices),
            "nfe_per_slice": p.invert_steps,
            "inversion_loss": INVERSION_LOSS_TEXT[p.invert_loss],
        }
        if self.rows:
            info["final_losses"] = dict(zip(LOG_COLUMNS[1:], [round(v, 5) for v in self.rows[-1][1:]]))
        return info
