"""CDM: the Cross-conditioned Diffusion Model (Xing et al., MICCAI 2024), a SUPERVISED upper bound.

CDM sees paired source/target training slices, which no zero-shot method here may see, so its
numbers are an upper bound, not a competitor. Training has three stages, run one after the other
and each resumable from ``checkpoint.pt`` (which records the stage and the step inside it):

1. ``mrm``  — MRM, a masked autoencoder of target slices y (L2 on the masked patches).
2. ``mdn``  — MDN, a DDPM (x0-prediction) over the MRM vectors z₀ = MRM(y) of the training targets.
3. ``unet`` — C-UNet, ŷ = U(x, z) trained with MSE against the paired target, where z is the MRM
   vector of *that* target (the cross-conditioning: the source goes in as the image, the target's
   distribution as the condition).

At translation one vector z is sampled from the MDN (DDIM, ``mdn_ddim_steps`` steps) from noise
drawn with the slice's own seed, and the C-UNet runs once on the source slice.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmid.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import LmidError, ParamsError
from lmid.io import write_text
from lmid.methods.base import Method, TrainingData, Translation
from lmid.networks import autocast, count_parameters
from lmid.networks.cdm import (
    ConditionalUNet,
    MaskedAutoencoder,
    VectorDenoiser,
    VectorDiffusion,
    masked_l2,
    random_patch_mask,
)
from lmid.progress import progress_disabled

log = logging.getLogger(__name__)

STAGES = ("mrm", "mdn", "unet")
#: Added to ``params.seed`` so CDM's random streams differ from the other methods'.
SEED_OFFSET = 4_000
LOG_COLUMNS = ("stage", "step", "loss")


def architecture(params: Params, image_size: int) -> dict:
    """The values that define the networks' shapes (stored in model.pt)."""
    p = params.cdm
    return {
        "vector_dim": p.vector_dim,
        "mrm_channels": list(p.mrm_channels),
        "unet_channels": list(p.unet_channels),
        "mdn_blocks": p.mdn_blocks,
        "mdn_hidden": p.mdn_hidden,
        "mdn_timesteps": p.mdn_timesteps,
        "image_size": int(image_size),
    }


def build_networks(arch: dict) -> dict[str, torch.nn.Module]:
    return {
        "mrm": MaskedAutoencoder(tuple(arch["mrm_channels"]), arch["vector_dim"]),
        "mdn": VectorDenoiser(arch["vector_dim"], arch["mdn_hidden"], arch["mdn_blocks"]),
        "unet": ConditionalUNet(tuple(arch["unet_channels"]), arch["vector_dim"]),
    }


def check_sizes(params: Params, height: int, width: int) -> None:
    p = params.cdm
    mrm_div = 2 ** len(p.mrm_channels)
    unet_div = 2 ** (len(p.unet_channels) - 1)
    for key, div in (("cdm.mrm_channels", mrm_div), ("cdm.unet_channels", unet_div)):
        if height % div or width % div:
            raise ParamsError(
                f"{key}: {height}×{width} slices are not divisible by {div} "
                f"(one halving per level); use fewer levels or another prepare.size"
            )
    if p.patch > min(height, width):
        raise ParamsError(f"cdm.patch: {p.patch} is larger than the {height}×{width} slices")


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for stage, step, loss in rows:
        writer.writerow([stage, int(step), f"{float(loss):.6g}"])
    return buf.getvalue()


@torch.no_grad()
def mrm_vectors(mrm: MaskedAutoencoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """z₀ = MRM(y) for a stack of target slices (N, 1, H, W) → (N, vector_dim)."""
    mrm.eval()
    out = [mrm.vector(images[i : i + batch]).float() for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, mrm.to_vector[-1].out_channels)


class _Trainer:
    """The three stages with one checkpoint: {stage, step, weights, optimiser, generator, log}."""

    def __init__(self, params: Params, data: TrainingData, out_dir: Path, device: torch.device):
        self.params, self.p, self.device = params, params.cdm, device
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        n, h, w = data.target.shape
        self.arch = architecture(params, h)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed + SEED_OFFSET)
            self.nets = build_networks(self.arch)
        for net in self.nets.values():
            net.to(device)
        self.target = torch.from_numpy(np.ascontiguousarray(data.target, dtype=np.float32))[:, None].to(device)
        self.source = torch.from_numpy(np.ascontiguousarray(data.source, dtype=np.float32))[:, None].to(device)
        self.diffusion = VectorDiffusion(self.p.mdn_timesteps)
        self.rows: list[list] = []
        self.walls = {s: 0.0 for s in STAGES}
        self.stage, self.step = STAGES[0], 0
        self.opt_state = None
        self.gen_state = None
        self.acc = [0.0, 0]

    # ------------------------------------------------------------------ checkpoint
    def _resume(self) -> None:
        if not self.ckpt_path.exists():
            return
        ck = load_checkpoint(self.ckpt_path, required=("method", "arch", "stage", "step", "nets"))
        if ck["method"] != "cdm" or ck["arch"] != self.arch:
            raise LmidError(
                f"{self.ckpt_path}: checkpoint of another CDM architecture ({ck['arch']}); "
                f"delete it or use the parameters it was made with"
            )
        for name, net in self.nets.items():
            load_module_state(net, ck["nets"][name], self.ckpt_path, f"cdm {name}")
        self.stage, self.step = ck["stage"], int(ck["step"])
        self.opt_state, self.gen_state = ck.get("opt"), ck.get("gen")
        self.rows = [list(r) for r in ck.get("log", [])]
        self.walls.update(ck.get("walls", {}))
        self.acc = list(ck.get("acc", [0.0, 0]))
        if "torch_rng" in ck:
            torch.set_rng_state(ck["torch_rng"])
        log.info("cdm: resuming at stage %s, step %d", self.stage, self.step)

    def _save(self, opt, gen) -> None:
        save_checkpoint(
            self.ckpt_path,
            {
                "method": "cdm",
                "arch": self.arch,
                "stage": self.stage,
                "step": self.step,
                "nets": {k: v.state_dict() for k, v in self.nets.items()},
                "opt": opt.state_dict() if opt is not None else None,
                "gen": gen.get_state() if gen is not None else None,
                "torch_rng": torch.get_rng_state(),
                "log": self.rows,
                "walls": self.walls,
                "acc": self.acc,
            },
        )
        write_text(self.out_dir / "train_log.csv", _csv(self.rows))

    # ------------------------------------------------------------------ one step per stage
    def _flip(self, gen: torch.Generator, *images: torch.Tensor) -> list[torch.Tensor]:
        flips = (torch.rand(images[0].shape[0], generator=gen) < self.p.flip_prob).to(self.device)
        f = flips[:, None, None, None]
        return [torch.where(f, x.flip(-1), x) for x in images]

    def _loss(self, stage: str, gen: torch.Generator, bs: int, vectors: torch.Tensor | None) -> torch.Tensor:
        n = self.target.shape[0]
        idx = torch.randint(n, (bs,), generator=gen).to(self.device)
        if stage == "mrm":
            (y,) = self._flip(gen, self.target[idx])
            m = random_patch_mask(bs, y.shape[2], y.shape[3], self.p.patch, self.p.mask_ratio, gen).to(self.device)
            with autocast(self.device):
                recon = self.nets["mrm"](y * (1 - m))
            return masked_l2(recon.float(), y, m)
        if stage == "mdn":
            z0 = vectors[idx]
            t = torch.randint(self.diffusion.timesteps, (bs,), generator=gen).to(self.device)
            eps = torch.randn(z0.shape, generator=gen).to(self.device)
            z_t = self.diffusion.q_sample(z0, t, eps)
            return F.mse_loss(self.nets["mdn"](z_t, t), z0)  # x0-prediction
        x, y = self._flip(gen, self.source[idx], self.target[idx])
        with torch.no_grad():
            z = self.nets["mrm"].vector(y).float()  # cross-conditioning on the TRUE target's vector
        with autocast(self.device):
            pred = self.nets["unet"](x, z)
        return F.mse_loss(pred.float(), y)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._resume()
        for si, stage in enumerate(STAGES):
            if self.stage == "done" or STAGES.index(self.stage) > si:
                continue
            self._run_stage(si, stage)
        self.stage, self.step = "done", 0
        self._save(None, None)
        return self.summary()

    def _run_stage(self, si: int, stage: str) -> None:
        tp = getattr(self.p, stage)
        net = self.nets[stage]
        opt = torch.optim.Adam(net.parameters(), lr=tp.lr)
        gen = torch.Generator().manual_seed(self.params.seed + SEED_OFFSET + 101 * (si + 1))
        if self.step > 0:
            if self.opt_state is not None:
                opt.load_state_dict(self.opt_state)
            if self.gen_state is not None:
                gen.set_state(self.gen_state)
        vectors = mrm_vectors(self.nets["mrm"], self.target) if stage == "mdn" else None
        self.nets["mrm"].eval()
        net.train()
        t0 = time.perf_counter()
        wall0 = self.walls[stage]
        bar = tqdm(
            total=tp.steps, initial=self.step, desc=f"cdm {stage}", disable=progress_disabled(), dynamic_ncols=True
        )
        while self.step < tp.steps:
            loss = self._loss(stage, gen, tp.batch_size, vectors)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.p.grad_clip)
            opt.step()
            self.step += 1
            value = float(loss.detach())
            self.acc = [self.acc[0] + value, self.acc[1] + 1]
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}")
            last = self.step == tp.steps
            if self.step % tp.log_every == 0 or last:
                self.rows.append([stage, self.step, self.acc[0] / max(1, self.acc[1])])
                self.acc = [0.0, 0]
            self.walls[stage] = wall0 + time.perf_counter() - t0
            if last:
                nxt = STAGES[si + 1] if si + 1 < len(STAGES) else "done"
                self.stage, self.step = nxt, 0
                self._save(None, None)
                break
            if self.step % tp.checkpoint_every == 0:
                self._save(opt, gen)
        bar.close()
        self.opt_state = self.gen_state = None

    def summary(self) -> dict:
        final = {}
        for stage in STAGES:
            losses = [r[2] for r in self.rows if r[0] == stage]
            if losses:
                final[stage] = {
                    "first_logged_loss": round(float(losses[0]), 6),
                    "last_logged_loss": round(float(losses[-1]), 6),
                }
        return {
            "supervised": True,
            "steps": {s: getattr(self.p, s).steps for s in STAGES},
            "stage_wall_s": {s: round(v, 3) for s, v in self.walls.items()},
            "parameters": {k: count_parameters(v) for k, v in self.nets.items()},
            "losses": final,
        }


class Cdm(Method):
    name = "cdm"
    description = (
        "CDM (Xing et al., MICCAI 2024): supervised upper bound trained on paired slices — "
        "masked-autoencoder target vector, vector diffusion (MDN), FiLM-conditioned U-Net; "
        "one U-Net pass per slice"
    )

    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        if not data.paired or data.source is None or data.target is None:
            raise LmidError("cdm needs paired source/target training slices (Access.PAIRED)")
        n, h, w = data.target.shape
        check_sizes(params, h, w)
        trainer = _Trainer(params, data, out_dir, device)
        info = trainer.run()
        arch = trainer.arch
        model = {
            "method": "cdm",
            "arch": arch,
            **{k: {n_: t.detach().cpu() for n_, t in v.state_dict().items()} for k, v in trainer.nets.items()},
        }
        save_checkpoint(Path(out_dir) / "model.pt", model)
        ddim = len(trainer.diffusion.ddim_timesteps(params.cdm.mdn_ddim_steps))
        info["nfe_per_slice"] = {"unet": 1, "mdn": ddim}
        if val is not None and len(val):
            info["val"] = self._validate(params, trainer, val, device)
        return info

    def _validate(self, params: Params, trainer: _Trainer, val: SliceSet, device: torch.device) -> dict:
        """Validation MSE with sampled vectors (as at test) and with the true target's vector (oracle)."""
        model = {"arch": trainer.arch, **trainer.nets, "diffusion": trainer.diffusion}
        seeds = np.arange(len(val))
        out = self.translate(params, model, val.source, seeds, device).image
        with torch.no_grad():
            y = torch.from_numpy(val.target[:, None].astype(np.float32)).to(device)
            x = torch.from_numpy(val.source[:, None].astype(np.float32)).to(device)
            z = mrm_vectors(trainer.nets["mrm"], y)
            trainer.nets["unet"].eval()
            oracle = trainer.nets["unet"](x, z).clamp(0, 1).cpu().numpy()[:, 0]
        return {
            "mse_sampled_vector": float(np.mean((out - val.target) ** 2)),
            "mse_true_target_vector": float(np.mean((oracle - val.target) ** 2)),
            "mse_identity": float(np.mean((val.source - val.target) ** 2)),
        }

    def load(self, params: Params, model_path: Path, device: torch.device):
        if model_path is None:
            raise LmidError("cdm: translate needs --model MODEL_DIR/model.pt")
        ck = load_checkpoint(model_path, required=("method", "arch", "mdn", "unet"))
        if ck["method"] != "cdm":
            raise LmidError(f"{model_path}: a model of method {ck['method']!r}, not cdm")
        nets = build_networks(ck["arch"])
        for name in ("mrm", "mdn", "unet"):
            if name in ck:
                load_module_state(nets[name], ck[name], model_path, f"cdm {name}")
            nets[name].to(device).eval()
        return {"arch": ck["arch"], **nets, "diffusion": VectorDiffusion(ck["arch"]["mdn_timesteps"])}

    @torch.no_grad()
    def sample_vectors(
        self, params: Params, model: dict, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> torch.Tensor:
        """(N, samples, vector_dim) vectors from the MDN; slice i's noise comes from seed i alone."""
        dim = model["arch"]["vector_dim"]
        noise = [torch.randn(samples, dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        z_T = torch.stack(noise) if noise else torch.zeros(0, samples, dim)
        mdn = model["mdn"].eval()
        flat = z_T.reshape(-1, dim).to(device)
        z = model["diffusion"].ddim_sample(mdn, flat, params.cdm.mdn_ddim_steps) if len(flat) else flat
        return z.reshape(len(seeds), samples, dim)

    @torch.no_grad()
    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        n, h, w = source.shape
        arch = model["arch"]
        unet = model["unet"].eval()
        z = self.sample_vectors(params, model, seeds, device, samples)  # (N, S, D)
        x = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[:, None]
        x = x.repeat_interleave(samples, dim=0)  # row i·S + k is slice i, sample k
        zf = z.reshape(n * samples, arch["vector_dim"])
        out = torch.empty(n * samples, 1, h, w)
        bs = params.cdm.translate_batch_size
        for i in range(0, n * samples, bs):
            with autocast(device):
                out[i : i + bs] = unet(x[i : i + bs].to(device), zf[i : i + bs]).float().clamp(0, 1).cpu()
        out = out.view(n, samples, h, w).numpy()
        ddim = len(model["diffusion"].ddim_timesteps(params.cdm.mdn_ddim_steps))
        return Translation(
            # Sample 0 is scored (a mean over samples is smoother than any one CDM output).
            image=out[:, 0].astype(np.float32),
            mean=out.mean(axis=1).astype(np.float32) if samples > 1 else None,
            std=out.std(axis=1).astype(np.float32) if samples > 1 else None,
            nfe=samples * (1 + ddim),
            info={"unet_passes_per_slice": samples, "mdn_steps_per_sample": ddim, "supervised": True},
        )
