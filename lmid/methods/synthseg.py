"""SynthSeg-style reference: segment the source directly, with a network that never saw its contrast.

Is translation needed at all? Billot et al. (SynthSeg, Medical Image Analysis 2023) train a
segmenter on images synthesised from label maps with random tissue intensities, so that it
segments scans of any contrast without seeing one. This reference asks the same question here,
with what a zero-shot method may use:

* **What it sees** (``Access.TARGET_ONLY``): the target (T1) training slices and their brain
  masks. Its label maps are the K-Means segmentation of those slices inside their masks, re-fitted
  in training by the very function and parameters that ``lmid fit-segmenter`` uses
  (:func:`lmid.evaluation.segment.fit_target_segmenter`), so they are the labels the evaluation's
  segmenter gives the T1 slices. Never the ground-truth labels, never a source slice, and the
  validation split is not read in training.
* **Training**: every example is an image painted on one deformed label map with random
  intensities, blur, resolution loss, bias and noise
  (:mod:`lmid.methods.synthseg_synthesis`); a 2-D MONAI residual ``UNet`` (``synthseg.channels``,
  one level per width, instance norm) learns to give back the labels, loss soft Dice + cross-entropy (MONAI's ``DiceCELoss`` with
  equal weights, computed as its two terms so that both are logged), Adam at a constant learning
  rate, optional EMA of the weights and gradient clipping. One seeded generator draws the slices
  and each example's synthesis seed, and its state is in every checkpoint, so a resumed run equals
  an uninterrupted one. Snapshots (``synthseg.train.snapshot_every``) keep the inference weights
  with the training clock for the validation curve of ``lmid check-baselines``.
* **At test time** (:meth:`SynthSeg.translate`) the source slice is segmented as it is: the
  ``Translation`` carries the labels (argmax of the four classes over the whole slice) and the
  source slice unchanged as its ``image``, which is not scored. ``lmid evaluate`` keeps the labels
  inside the test slice's brain mask, as K-Means is applied to a translation, and writes NaN for
  PSNR, SSIM and the tissue contrasts. One network evaluation per slice.
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
from lmid.clock import TrainClock
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import LmidError
from lmid.methods.base import Method, TrainingData, Translation
from lmid.methods.gan_common import save_snapshot, write_train_log
from lmid.methods.synthseg_synthesis import N_LABELS, Synthesiser
from lmid.networks import autocast, count_parameters
from lmid.progress import progress_disabled

#: Added to ``params.seed`` for this method's generators.
SEED_OFFSET = 8101


class SegmentationUNet(torch.nn.Module):
    """MONAI's 2-D residual ``UNet`` (one input channel, one output per label), with the input
    zero-padded on the bottom and right to a multiple of its total stride and the output cropped
    back, so that any slice size goes through (background is 0, so is the padding)."""

    def __init__(self, channels, num_res_units: int, dropout: float):
        super().__init__()
        from monai.networks.nets import UNet

        channels = tuple(int(c) for c in channels)
        self.multiple = 2 ** (len(channels) - 1)
        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=N_LABELS,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(num_res_units),
            norm="INSTANCE",
            dropout=float(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.unet(x)[..., :h, :w]


def build_network(arch: dict) -> torch.nn.Module:
    return SegmentationUNet(arch["channels"], arch["num_res_units"], arch["dropout"])


def training_labels(params: Params, target: np.ndarray, mask: np.ndarray):
    """The run's K-Means segmenter, re-fitted on the target training slices, and its labels of them
    inside their brain masks (0 outside): the label maps the synthesis paints on."""
    from lmid.evaluation.segment import fit_target_segmenter

    try:
        seg = fit_target_segmenter(params, target, mask)
    except ValueError as err:
        raise LmidError(f"synthseg: cannot fit the K-Means segmenter on the training slices ({err})") from None
    labels = np.stack([seg.predict(t, m) for t, m in zip(target, mask)]).astype(np.uint8)
    return seg, labels


class SynthSeg(Method):
    name = "synthseg"
    description = (
        "a U-Net segmenter trained on images synthesised from the K-Means labels of the target training "
        "slices with random contrast (SynthSeg-style); segments the source directly, translates nothing"
    )

    @staticmethod
    def arch(params: Params) -> dict:
        p = params.synthseg
        return {"channels": [int(c) for c in p.channels], "num_res_units": p.num_res_units, "dropout": float(p.dropout)}

    # ------------------------------------------------------------------------------- train
    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        from monai.losses import DiceLoss

        p = params.synthseg
        cfg = p.train
        out_dir = Path(out_dir)
        if data.target is None or data.target_mask is None or len(data.target) == 0:
            raise LmidError("synthseg: needs the target training slices and their brain masks")
        if data.source is not None:
            raise LmidError("synthseg: was given source slices; it may see the target slices only")
        seg, labels = training_labels(params, data.target, data.target_mask)
        synth = Synthesiser(p.synthesis, params.prepare.percentiles)

        seed = params.seed + SEED_OFFSET
        arch = self.arch(params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the initial weights
            net = build_network(arch)
        net.to(device).train()
        ema = copy.deepcopy(net).eval() if cfg.ema_decay > 0 else None
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        dice_loss = DiceLoss(to_onehot_y=True, softmax=True)
        gen = torch.Generator().manual_seed(seed + 1)  # which slices, and each example's synthesis seed
        columns = ["step", "lr", "loss", "dice_loss", "ce"]
        rows: list[list[float]] = []
        window: list[list[float]] = []
        start = 0

        ckpt_path = out_dir / "checkpoint.pt"
        state = None
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path, required=("net", "opt", "step", "gen"))
            load_module_state(net, state["net"], ckpt_path, what="synthseg network")
            if ema is not None:
                if state.get("ema") is None:
                    raise LmidError(f"{ckpt_path}: holds no EMA weights, but synthseg.train.ema_decay is set")
                load_module_state(ema, state["ema"], ckpt_path, what="synthseg EMA network")
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            rows, window, start = state["log_rows"], state["log_window"], int(state["step"])
        clock = TrainClock.resumed(state)

        def inference_net() -> torch.nn.Module:
            return ema if ema is not None else net

        def model_state() -> dict:
            return {
                "method": self.name,
                "arch": arch,
                "network": {k: v.detach().cpu() for k, v in inference_net().state_dict().items()},
                "segmenter": seg.to_dict(),
            }

        def save(step: int) -> None:
            save_checkpoint(
                ckpt_path,
                {
                    "method": self.name,
                    "net": net.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "log_rows": rows,
                    "log_window": window,
                    **clock.state(),
                },
            )

        n, bs = len(labels), cfg.batch_size
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="synthseg", disable=progress_disabled()
        )
        for step in bar:
            pick = torch.randint(n, (bs,), generator=gen).numpy()
            seeds = torch.randint(0, 2**31 - 1, (bs,), generator=gen).numpy()
            images, targets = synth.batch(labels[pick], seeds)
            x = torch.from_numpy(images)[:, None].to(device)
            y = torch.from_numpy(targets.astype(np.int64))[:, None].to(device)
            with autocast(device):
                logits = net(x)
            logits = logits.float()
            dl = dice_loss(logits, y)
            ce = F.cross_entropy(logits, y[:, 0])
            loss = dl + ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pn in zip(ema.parameters(), net.parameters()):
                        pe.lerp_(pn, 1.0 - cfg.ema_decay)
                    for be, bn in zip(ema.buffers(), net.buffers()):
                        be.copy_(bn)
            losses = [float(v.detach()) for v in (loss, dl, ce)]
            if not all(math.isfinite(v) for v in losses):
                raise LmidError(f"synthseg: loss is not finite at step {step + 1}: {losses}")
            window.append(losses)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rows.append([done, cfg.lr] + np.mean(np.asarray(window), axis=0).tolist())
                window = []
                write_train_log(out_dir / "train_log.csv", columns, rows)
                bar.set_postfix(loss=f"{rows[-1][2]:.3f}")
            if cfg.snapshot_every and done % cfg.snapshot_every == 0:
                save_snapshot(out_dir, done, model_state(), clock)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        wall = clock.this_run()
        if start >= cfg.steps and not (out_dir / "train_log.csv").exists():
            write_train_log(out_dir / "train_log.csv", columns, rows)

        save_checkpoint(out_dir / "model.pt", model_state())
        brain = labels[labels > 0]
        info = {
            "steps": cfg.steps,
            "steps_this_run": cfg.steps - start,
            "batch_size": bs,
            "train_loop_s": round(wall, 3),
            "train_loop_cpu_s_total": round(clock.cpu(), 3),
            "images_seen": cfg.steps * bs,
            "s_per_step": round(wall / max(1, cfg.steps - start), 4),
            "parameters": count_parameters(net),
            "ema": cfg.ema_decay > 0,
            "target_slices_seen": int(len(data.target)),
            "labels_from": "K-Means of the target training slices (the evaluation's segmenter, re-fitted)",
            "label_fractions": {
                name: round(float(np.mean(brain == k)), 4) if brain.size else None
                for k, name in ((1, "csf"), (2, "gm"), (3, "wm"))
            },
            "kmeans_centroids": [round(c, 6) for c in seg.centroids],
            "nfe_per_slice": 1,
        }
        if rows:
            info["final_losses"] = dict(zip(columns[2:], [round(v, 5) for v in rows[-1][2:]]))
        return info

    # --------------------------------------------------------------------------- translate
    def load(self, params: Params, model_path: Path, device: torch.device):
        if model_path is None:
            raise LmidError("synthseg: translate needs --model (the model.pt written by 'lmid train')")
        state = load_checkpoint(model_path, required=("method", "arch", "network"))
        if state["method"] != self.name:
            raise LmidError(f"{model_path}: a model of method {state['method']!r}, not synthseg")
        net = build_network(state["arch"])
        load_module_state(net, state["network"], model_path, what="synthseg network")
        return net.to(device).eval()

    @torch.no_grad()
    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        """Segment the source slices directly (deterministic: seeds and samples change nothing)."""
        model.eval()
        source = np.asarray(source, dtype=np.float32)
        n = len(source)
        labels = np.zeros(source.shape, np.uint8)
        step = params.synthseg.translate_batch_size
        for i in range(0, n, step):
            x = torch.from_numpy(np.ascontiguousarray(source[i : i + step]))[:, None].to(device)
            with autocast(device):
                logits = model(x)
            labels[i : i + step] = logits.float().argmax(1).to(torch.uint8).cpu().numpy()
        image = np.clip(source, 0.0, 1.0).copy()
        return Translation(
            image=image,
            std=np.zeros_like(image) if samples > 1 else None,
            nfe=1,
            labels=labels,
            info={"segments": "the source slice itself; 'image' is the source, not a translation"},
        )
