"""CycleGAN baseline: unpaired PD ↔ T1 translation (not zero-shot: it sees some source slices).

Access: unpaired target training slices plus ``cyclegan.source_fraction`` (11 % in the paper) of
the training subjects' source slices, chosen and shuffled by :meth:`Method.training_data`. The
source set is much smaller than the target set, so every step draws ``batch_size`` slices of each
domain independently and with replacement (an "epoch" has no meaning here).

Training (the reference implementation's defaults; domain A = source/PD, B = target/T1):

1. ``fake_B = G_AB(a)``, ``rec_A = G_BA(fake_B)``, ``fake_A = G_BA(b)``, ``rec_B = G_AB(fake_A)``.
2. Generator loss (least-squares GAN, cycle weight λ_cyc = ``lambda_cycle`` = 10, identity
   weight λ_cyc·λ_id with λ_id = ``lambda_identity`` = 0.5):
   ``(D_B(fake_B) − 1)² + (D_A(fake_A) − 1)² + λ_cyc (|rec_A − a|₁ + |rec_B − b|₁)
   + λ_cyc λ_id (|G_AB(b) − b|₁ + |G_BA(a) − a|₁)``.
3. Discriminator loss, halved: ``½[(D(real) − 1)² + D(pool(fake))²]`` per domain, where the pool
   returns generated images from a 50-image history half of the time.
4. Adam (lr 2e-4, β = (0.5, 0.999)); lr constant for ``constant_fraction`` of the steps, then
   linearly decayed towards 0. Random horizontal flips (the reference's only augmentation that
   applies to pre-registered, fixed-size slices).

Translation: ``G_AB`` on the source slice, one network evaluation per slice (nfe = 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmid.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import LmidError, ParamsError
from lmid.clock import TrainClock
from lmid.methods.gan_common import save_snapshot, to_signed, write_train_log
from lmid.networks import autocast, count_parameters
from lmid.methods.base import Method, TrainingData, Translation
from lmid.networks.cyclegan import ImagePool, PatchDiscriminator, ResnetGenerator, init_weights
from lmid.progress import progress_disabled

#: Added to ``params.seed`` for this method's generators.
SEED_OFFSET = 3001


# ---------------------------------------------------------------------- small trainer helpers


def _set_requires_grad(modules, flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def lr_factor(step: int, total: int, constant_fraction: float) -> float:
    """Constant for the first ``constant_fraction`` of the steps, then linear towards 0."""
    constant = int(round(constant_fraction * total))
    return 1.0 - max(0, step - constant + 1) / float(total - constant + 1)


# ------------------------------------------------------------------------------------- method
class CycleGan(Method):
    name = "cyclegan"
    description = (
        "CycleGAN (ResNet generators, 70×70 PatchGAN, LSGAN, cycle 10, identity 5) on unpaired "
        "target slices plus a fraction of the training subjects' source slices"
    )

    @staticmethod
    def arch(params: Params) -> dict:
        p = params.cyclegan
        return {"in_ch": 1, "out_ch": 1, "ngf": p.base_filters, "n_blocks": p.res_blocks}

    @staticmethod
    def build(params: Params, gen: torch.Generator) -> dict[str, torch.nn.Module]:
        p = params.cyclegan
        arch = CycleGan.arch(params)
        nets = {
            "g_ab": ResnetGenerator(**arch),
            "g_ba": ResnetGenerator(**arch),
            "d_a": PatchDiscriminator(1, p.disc_filters, p.disc_layers),
            "d_b": PatchDiscriminator(1, p.disc_filters, p.disc_layers),
        }
        for net in nets.values():
            init_weights(net, gen)
        return nets

    # ------------------------------------------------------------------------------- train
    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:

        p = params.cyclegan
        cfg = p.train
        out_dir = Path(out_dir)
        if data.source is None or len(data.source) == 0 or data.target is None or len(data.target) == 0:
            raise LmidError("cyclegan: needs target slices and a non-empty fraction of source slices")
        h, w = data.target.shape[1:]
        min_side = 2 ** (p.disc_layers + 2)
        if min(h, w) < min_side:
            raise ParamsError(
                f"cyclegan.disc_layers: {p.disc_layers} layers need slices of at least "
                f"{min_side}×{min_side} pixels, got {h}×{w}"
            )
        if h % 4 or w % 4:
            raise ParamsError(f"cyclegan: slice size {h}×{w} must be a multiple of 4 (two stride-2 levels)")

        seed = params.seed + SEED_OFFSET
        nets = self.build(params, torch.Generator().manual_seed(seed))
        for net in nets.values():
            net.to(device).train()
        gens, discs = [nets["g_ab"], nets["g_ba"]], [nets["d_a"], nets["d_b"]]
        betas = (p.beta1, 0.999)
        opt_g = torch.optim.Adam([q for g in gens for q in g.parameters()], lr=cfg.lr, betas=betas)
        opt_d = torch.optim.Adam([q for d in discs for q in d.parameters()], lr=cfg.lr, betas=betas)
        pool_a, pool_b = ImagePool(p.pool_size), ImagePool(p.pool_size)
        gen = torch.Generator().manual_seed(seed + 1)  # batches, flips, pool
        columns = ["step", "lr", "g_gan", "cycle", "identity", "d_a", "d_b"]
        rows: list[list[float]] = []
        window: list[list[float]] = []  # per-step losses since the last log row
        start = 0

        ckpt_path = out_dir / "checkpoint.pt"
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path, required=("nets", "opt_g", "opt_d", "step", "gen"))
            for k, net in nets.items():
                load_module_state(net, state["nets"][k], ckpt_path, what=f"cyclegan {k}")
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            pool_a.load_state_dict(state["pool_a"], device)
            pool_b.load_state_dict(state["pool_b"], device)
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            rows, window, start = state["log_rows"], state["log_window"], int(state["step"])
        clock = TrainClock.resumed(state if ckpt_path.exists() else None)

        def model_state() -> dict:
            # G_BA travels along only for the cycle checks (target → source); translate uses G_AB.
            return {
                "method": self.name,
                "arch": self.arch(params),
                "generator": nets["g_ab"].state_dict(),
                "generator_ba": nets["g_ba"].state_dict(),
            }

        def save(step: int) -> None:
            save_checkpoint(
                ckpt_path,
                {
                    "method": self.name,  # whose folder this is (lmid train refuses another method's)
                    "nets": {k: n.state_dict() for k, n in nets.items()},
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "pool_a": pool_a.state_dict(),
                    "pool_b": pool_b.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "log_rows": rows,
                    "log_window": window,
                    **clock.state(),
                },
            )

        source = to_signed(data.source, device)
        target = to_signed(data.target, device)
        bs = cfg.batch_size
        lam_c, lam_i = p.lambda_cycle, p.lambda_cycle * p.lambda_identity
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="cyclegan", disable=progress_disabled()
        )
        for step in bar:
            lr = cfg.lr * lr_factor(step, cfg.steps, p.constant_fraction)
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = lr
            # Unpaired draws with replacement from each domain, each flipped with probability 1/2.
            ia = torch.randint(len(source), (bs,), generator=gen)
            ib = torch.randint(len(target), (bs,), generator=gen)
            flips = (torch.rand(2, bs, generator=gen) < 0.5).to(device)
            a = torch.where(flips[0, :, None, None, None], source[ia.to(device)].flip(-1), source[ia.to(device)])
            b = torch.where(flips[1, :, None, None, None], target[ib.to(device)].flip(-1), target[ib.to(device)])

            # Generators (discriminators frozen).
            _set_requires_grad(discs, False)
            with autocast(device):
                fake_b = nets["g_ab"](a)
                rec_a = nets["g_ba"](fake_b)
                fake_a = nets["g_ba"](b)
                rec_b = nets["g_ab"](fake_a)
                pred_b, pred_a = nets["d_b"](fake_b), nets["d_a"](fake_a)
                g_gan = F.mse_loss(pred_b.float(), torch.ones_like(pred_b, dtype=torch.float32)) + F.mse_loss(
                    pred_a.float(), torch.ones_like(pred_a, dtype=torch.float32)
                )
                cycle = F.l1_loss(rec_a.float(), a) + F.l1_loss(rec_b.float(), b)
                if lam_i > 0:
                    identity = F.l1_loss(nets["g_ab"](b).float(), b) + F.l1_loss(nets["g_ba"](a).float(), a)
                else:
                    identity = torch.zeros((), device=device)
                loss_g = g_gan + lam_c * cycle + lam_i * identity
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

            # Discriminators on real images and on fakes from the history pool.
            _set_requires_grad(discs, True)
            hist_b = pool_b.query(fake_b.detach().float(), gen)
            hist_a = pool_a.query(fake_a.detach().float(), gen)
            with autocast(device):
                d_losses = []
                for d, real, fake in ((nets["d_a"], a, hist_a), (nets["d_b"], b, hist_b)):
                    pr, pf = d(real).float(), d(fake).float()
                    d_losses.append(0.5 * (F.mse_loss(pr, torch.ones_like(pr)) + F.mse_loss(pf, torch.zeros_like(pf))))
            opt_d.zero_grad(set_to_none=True)
            (d_losses[0] + d_losses[1]).backward()
            opt_d.step()

            losses = [float(v.detach()) for v in (g_gan, cycle, identity, d_losses[0], d_losses[1])]
            if not all(math.isfinite(v) for v in losses):
                raise LmidError(f"cyclegan: loss is not finite at step {step + 1}: {losses}")
            window.append(losses)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rows.append([done, lr] + np.mean(np.asarray(window), axis=0).tolist())
                window = []
                write_train_log(out_dir / "train_log.csv", columns, rows)
                bar.set_postfix(cycle=f"{rows[-1][3]:.3f}", g=f"{rows[-1][2]:.3f}")
            if cfg.snapshot_every and done % cfg.snapshot_every == 0:
                save_snapshot(out_dir, done, model_state(), clock)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        wall = clock.this_run()
        if start >= cfg.steps and not (out_dir / "train_log.csv").exists():
            write_train_log(out_dir / "train_log.csv", columns, rows)

        g_ab = nets["g_ab"].eval()
        nets["g_ba"].eval()
        save_checkpoint(out_dir / "model.pt", model_state())
        info = {
            "steps": cfg.steps,
            "steps_this_run": cfg.steps - start,
            "train_loop_s": round(wall, 3),
            "train_loop_cpu_s_total": round(clock.cpu(), 3),
            "images_seen": cfg.steps * cfg.batch_size,
            "s_per_step": round(wall / max(1, cfg.steps - start), 4),
            "generator_params": count_parameters(g_ab),
            "discriminator_params": count_parameters(nets["d_b"]),
            "source_slices_seen": int(len(data.source)),
            "target_slices_seen": int(len(data.target)),
            "source_fraction": p.source_fraction,
            "nfe_per_slice": 1,
        }
        if rows:
            info["final_losses"] = dict(zip(columns[2:], [round(v, 5) for v in rows[-1][2:]]))
        if val is not None and len(val):
            # Reported only, never used for model selection.
            out = self.translate(params, g_ab, val.source, np.zeros(len(val), np.int64), device).image
            mse = float(np.mean((out - val.target) ** 2))
            info["val_psnr_db"] = round(10 * math.log10(1.0 / max(mse, 1e-12)), 3)
        return info

    # --------------------------------------------------------------------------- translate
    def load(self, params: Params, model_path: Path, device: torch.device):
        if model_path is None:
            raise LmidError("cyclegan: translate needs --model (the model.pt written by 'lmid train')")
        state = load_checkpoint(model_path, required=("arch", "generator"))
        net = ResnetGenerator(**state["arch"])
        load_module_state(net, state["generator"], model_path, what="cyclegan generator")
        return net.to(device).eval()

    def load_reverse(self, model_path: Path, device: torch.device):
        """G_BA (target → source), stored beside G_AB; ``None`` in a model.pt written without it."""
        state = load_checkpoint(model_path, required=("arch", "generator"))
        if "generator_ba" not in state:
            return None
        net = ResnetGenerator(**state["arch"])
        load_module_state(net, state["generator_ba"], model_path, what="cyclegan reverse generator")
        return net.to(device).eval()

    @torch.no_grad()
    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        # Deterministic: seeds and samples > 1 change nothing (std = 0).
        model.eval()
        n, h, w = source.shape
        ph, pw = (-h) % 4, (-w) % 4
        out = np.empty((n, h, w), np.float32)
        for i in range(0, n, 32):
            x = to_signed(source[i : i + 32], device)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect")
            with autocast(device):
                y = model(x).float()[:, 0, :h, :w]
            out[i : i + 32] = ((y + 1.0) / 2.0).clamp(0, 1).cpu().numpy()
        std = np.zeros_like(out) if samples > 1 else None
        return Translation(image=out, std=std, nfe=1, info={"generator": "G_AB (source → target)"})
