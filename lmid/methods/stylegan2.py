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
from lmid.methods.gan_common import to_signed, write_train_log
from lmid.networks import autocast, count_parameters
from lmid.methods.base import Method, TrainingData, Translation
from lmid.networks.stylegan2 import Discriminator, Generator, init_stylegan
from lmid.progress import progress_disabled

#: Added to ``params.seed`` for this method's generators.
SEED_OFFSET = 4001
STYLE_MIXING_PROB = 0.9
EMA_RAMPUP = 0.05
MBSTD_GROUP = 4
#: Reference projector constants.
INVERT_NOISE_FACTOR = 0.05
INVERT_NOISE_RAMP = 0.75
INVERT_LR_RAMPDOWN = 0.25
INVERT_LR_RAMPUP = 0.05
INVERT_BATCH = 32
NMI_BINS = 32


# ---------------------------------------------------------------------------- ADA controller
class AdaController:
    """Steers the augmentation probability p so that r_t = E[sign(D(real))] approaches the target.

    Call :meth:`accumulate` with D's logits on (augmented) reals every step and :meth:`step`
    once per training step; every ``interval`` steps p moves by
    ``sign(r_t − target) · batch_size · interval / (kimg · 1000)`` and is clamped to [0, 1].
    """

    def __init__(self, target: float = 0.6, interval: int = 4, kimg: float = 500.0, batch_size: int = 32,
                 p: float = 0.0):
        self.target, self.interval, self.kimg, self.batch_size = target, interval, kimg, batch_size
        self.p = float(p)
        self.rt = float("nan")  # last r_t
        self._sum = 0.0
        self._count = 0
        self._steps = 0

    @property
    def adjust_step(self) -> float:
        """|Δp| of one adjustment."""
        return self.batch_size * self.interval / (self.kimg * 1000.0)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        s = torch.sign(real_logits.detach().float())
        self._sum += float(s.sum())
        self._count += s.numel()

    def step(self) -> float:
        """Count one training step; adjust p when ``interval`` steps have passed. Returns p."""
        self._steps += 1
        if self._steps % self.interval == 0 and self._count:
            self.rt = self._sum / self._count
            delta = math.copysign(self.adjust_step, self.rt - self.target) if self.rt != self.target else 0.0
            self.p = min(1.0, max(0.0, self.p + delta))
            self._sum, self._count = 0.0, 0
        return self.p

    def state_dict(self) -> dict:
        return {"p": self.p, "rt": self.rt, "sum": self._sum, "count": self._count, "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self._sum, self._count, self._steps = float(state["sum"]), int(state["count"]), int(state["steps"])


# ----------------------------------------------------------------------------- augmentations
class AugmentPipe:
    """ADA's geometric + brightness/contrast augmentations for one-channel images in [-1, 1]."""

    translate_max = 0.125
    scale_std = 0.2
    rotate_max_deg = 15.0
    brightness_std = 0.2
    contrast_std = 0.5

    def __call__(self, x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
        if p <= 0:
            return x
        b, _, h, w = x.shape
        dev = x.device

        def coin() -> torch.Tensor:  # per-sample Bernoulli(p) as 0/1 floats (CPU generator)
            return (torch.rand(b, generator=gen) < p).float()

        # Geometric: 3×3 matrices in normalised coordinates, output → input (all symmetric).
        eye = torch.eye(3).expand(b, 3, 3)
        mat = eye.clone()
        flip = 1 - 2 * coin() * (torch.rand(b, generator=gen) < 0.5).float()  # x-flip
        mat = mat @ _scale(flip, torch.ones(b))
        k = coin() * torch.randint(4, (b,), generator=gen).float()  # 90° rotations
        mat = mat @ _rotate(k * (math.pi / 2))
        on = coin()
        tx = torch.round((torch.rand(b, generator=gen) * 2 - 1) * self.translate_max * w) * on
        ty = torch.round((torch.rand(b, generator=gen) * 2 - 1) * self.translate_max * h) * on
        mat = mat @ _translate(2 * tx / w, 2 * ty / h)  # integer pixels
        s = torch.exp2(torch.randn(b, generator=gen) * self.scale_std * coin())
        mat = mat @ _scale(s, s)
        ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(self.rotate_max_deg) * coin()
        mat = mat @ _rotate(ang)
        grid = F.affine_grid(mat[:, :2].to(dev, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Colour (grey): brightness then contrast about mid-grey 0.
        bright = torch.randn(b, generator=gen) * self.brightness_std * coin()
        contrast = torch.exp2(torch.randn(b, generator=gen) * self.contrast_std * coin())
        return (x + bright.to(dev, x.dtype)[:, None, None, None]) * contrast.to(dev, x.dtype)[:, None, None, None]


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(len(sx), 3, 3)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1
    return m


def _rotate(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.zeros(len(theta), 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1
    return m


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3).repeat(len(tx), 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


# ------------------------------------------------------------------------ inversion distances
def _bspline_weights(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic B-spline Parzen window (Mattes et al. 2003) of (N, P) intensities in ~[0, 1].

    Returns the indices (N, P, 4) of the four histogram bins each value touches, in a histogram
    of ``bins + 3`` bins (one spare bin below 0 and two above 1), and their weights, which sum
    to 1 and are differentiable in x.
    """
    u = x.clamp(0.0, 1.0) * (bins - 1) + 1.0  # bin coordinate, offset by the spare bin
    base = torch.floor(u).detach() - 1.0
    idx = base[..., None] + torch.arange(4, device=x.device, dtype=x.dtype)  # (N, P, 4)
    r = (u[..., None] - idx).abs()
    w = torch.where(r < 1, (4 - 6 * r ** 2 + 3 * r ** 3) / 6,
                    torch.where(r < 2, (2 - r) ** 3 / 6, torch.zeros_like(r)))
    return idx.long().clamp(0, bins + 2), w


def parzen_nmi(a: torch.Tensor, b: torch.Tensor, bins: int = NMI_BINS) -> torch.Tensor:
    """Normalised MI ``2 I / (H_a + H_b)`` per image of (N, 1, H, W) tensors in ~[0, 1] → (N,).

    The joint histogram uses a cubic B-spline Parzen window (each pixel spreads unit mass over
    4×4 bins), so it is differentiable and costs O(16 pixels) instead of O(pixels · bins²).
    Intensities are clamped to [0, 1] first (a generated pixel outside gets no gradient from it).
    """
    n = a.shape[0]
    nb = bins + 3
    ia, wa = _bspline_weights(a.flatten(1), bins)
    ib, wb = _bspline_weights(b.flatten(1), bins)
    index = (ia[..., :, None] * nb + ib[..., None, :]).flatten(1)  # (N, P·16)
    value = (wa[..., :, None] * wb[..., None, :]).flatten(1)
    joint = torch.zeros(n, nb * nb, device=a.device, dtype=value.dtype).scatter_add(1, index, value)
    joint = (joint / a[0].numel()).view(n, nb, nb)
    pa, pb = joint.sum(2), joint.sum(1)

    def entropy(p, dims):
        return -(p * torch.log(p + 1e-10)).sum(dims)

    ha, hb, hab = entropy(pa, 1), entropy(pb, 1), entropy(joint, (1, 2))
    return 2.0 * (ha + hb - hab) / (ha + hb + 1e-10)


def mind(x: torch.Tensor) -> torch.Tensor:
    """MIND descriptor (N, 4, H, W) of (N, 1, H, W) images: 3×3 patches, 4-neighbourhood."""
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dists = []
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        shifted = padded[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        dists.append(F.avg_pool2d((x - shifted) ** 2, 3, stride=1, padding=1, count_include_pad=False))
    d = torch.cat(dists, 1)
    v = d.mean(1, keepdim=True)
    # Keep the variance estimate away from 0 in flat regions (as reference implementations do).
    vm = v.mean(dim=(2, 3), keepdim=True)
    v = torch.maximum(torch.minimum(v, vm * 1e3), vm * 1e-3 + 1e-12)
    desc = torch.exp(-d / v)
    return desc / desc.amax(1, keepdim=True)


def mind_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (mind(a) - mind(b)).abs().mean(dim=(1, 2, 3))


def inversion_distance(source: torch.Tensor, image: torch.Tensor, kind: str, params: Params,
                       lmi_ss: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slice distance (N,) between source and generated slices, both (N, 1, H, W) in ~[0, 1]."""
    if kind == "nmi_mind":
        mi_term = 1.0 - parzen_nmi(source, image)
    elif kind == "lmi_mind":
        from lmid.lmi import local_mutual_information

        lp = params.lmi
        lmi = local_mutual_information(source, image, mode="exact", window=lp.window, bins=lp.bins, sigma=lp.sigma)
        mi_term = 1.0 - lmi.mean(dim=(1, 2, 3)) / lmi_ss
    else:
        raise ParamsError(f"stylegan2.invert_loss: unknown {kind!r}")
    return mi_term + mind_distance(source, image)


INVERSION_LOSS_TEXT = {
    "nmi_mind": "(1 - NMI(source, G(w))) + MIND L1: global normalised mutual information from a differentiable "
                "32-bin B-spline Parzen histogram plus the modality-independent neighbourhood descriptor distance "
                "(LPIPS-VGG weights unavailable)",
    "lmi_mind": "(1 - mean LMI_exact(source, G(w)) / mean LMI_exact(source, source)) + MIND L1 "
                "(LPIPS-VGG weights unavailable)",
}


def _noise_regularisation(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per-slice squared one-pixel autocorrelations of each noise map and its pyramid → (N,)."""
    reg = 0.0
    for v in noise:
        while True:
            reg = reg + (v * torch.roll(v, 1, dims=3)).mean(dim=(1, 2, 3)) ** 2
            reg = reg + (v * torch.roll(v, 1, dims=2)).mean(dim=(1, 2, 3)) ** 2
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def invert_lr_ramp(t: float) -> float:
    """The projector's lr multiplier at progress t ∈ [0, 1): warm-up then cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / INVERT_LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * min(1.0, t / INVERT_LR_RAMPUP)


def w_statistics(g: Generator, samples: int, seed: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """Mean w̄ (w_dim,) and σ_w = sqrt(E|w − w̄|²) of ``samples`` mapped z."""
    gen = torch.Generator().manual_seed(seed)
    ws = []
    with torch.no_grad():
        for i in range(0, samples, 4096):
            z = torch.randn(min(4096, samples - i), g.z_dim, generator=gen).to(device)
            ws.append(g.mapping(z).float())
    ws = torch.cat(ws)
    w_avg = ws.mean(0)
    w_std = float(((ws - w_avg).square().sum() / samples).sqrt())
    return w_avg, w_std


def project(g: Generator, source: torch.Tensor, seeds: np.ndarray, params: Params, w_avg: torch.Tensor, w_std: float,
            progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Invert a batch of source slices (N, 1, H, W) in [0, 1].

    Returns the images in [0, 1], the final distances (N,) and the mean distance at every step.
    """
    p = params.stylegan2
    n = source.shape[0]
    dev = source.device
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    # Each slice's own noise maps, drawn from its own generator.
    per_slice = [g.synthesis.make_noise(1, gi) for gi in gens]
    noise = [torch.cat([m[k] for m in per_slice]).to(dev).requires_grad_(True) for k in range(len(per_slice[0]))]
    w_opt = w_avg[None].repeat(n, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([w_opt] + noise, lr=p.invert_lr, betas=(0.9, 0.999))
    lmi_ss = None
    if p.invert_loss == "lmi_mind":
        from lmid.lmi import local_mutual_information

        with torch.no_grad():
            lp = params.lmi
            lmi_ss = local_mutual_information(source, source, mode="exact", window=lp.window, bins=lp.bins,
                                              sigma=lp.sigma).mean(dim=(1, 2, 3)).clamp_min(1e-6)

    steps = p.invert_steps
    trace = []
    for step in tqdm(range(steps), desc="stylegan2 inversion", disable=not progress or progress_disabled()):
        t = step / steps
        w_noise_scale = w_std * INVERT_NOISE_FACTOR * max(0.0, 1.0 - t / INVERT_NOISE_RAMP) ** 2
        for group in opt.param_groups:
            group["lr"] = p.invert_lr * invert_lr_ramp(t)
        w_noise = torch.stack([torch.randn(g.w_dim, generator=gi) for gi in gens]).to(dev) * w_noise_scale
        ws = (w_opt + w_noise)[:, None].expand(-1, g.num_ws, -1)
        image = (g.synthesis(ws, noise).float() + 1.0) / 2.0
        dist = inversion_distance(source, image, p.invert_loss, params, lmi_ss)
        loss = (dist + p.invert_noise_weight * _noise_regularisation(noise)).sum()
        trace.append(float(dist.detach().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # renormalise every noise map of every slice
            for v in noise:
                v -= v.mean(dim=(1, 2, 3), keepdim=True)
                v *= v.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
    with torch.no_grad():
        image = (g.synthesis(w_opt[:, None].expand(-1, g.num_ws, -1), noise).float() + 1.0) / 2.0
        dist = inversion_distance(source, image, p.invert_loss, params, lmi_ss)
    return image.clamp(0, 1), dist, trace


# ------------------------------------------------------------------------------------- method
class StyleGan2(Method):
    name = "stylegan2"
    description = ("StyleGAN2-ADA trained on target slices only; source slices GAN-inverted (projector with a "
                   "cross-modal NMI + MIND distance)")

    @staticmethod
    def arch(params: Params, resolution: int) -> dict:
        p = params.stylegan2
        return {"z_dim": p.z_dim, "w_dim": p.w_dim, "mapping_layers": p.mapping_layers, "resolution": resolution,
                "channels": p.channels, "channel_base": p.channel_base}

    # ------------------------------------------------------------------------------- train
    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:

        p = params.stylegan2
        cfg = p.train
        out_dir = Path(out_dir)
        if data.target is None or len(data.target) == 0:
            raise LmidError("stylegan2: no target training slices")
        h, w = data.target.shape[1:]
        if h != w or h < 8 or 2 ** int(round(math.log2(h))) != h:
            raise ParamsError(f"stylegan2: slices must be square with a power-of-two side >= 8, got {h}×{w} "
                              "(prepare.size)")
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
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
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

        def save(step: int) -> None:
            save_checkpoint(ckpt_path, {
                "method": self.name,  # whose folder this is (lmid train refuses another method's)
                "g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "ada": ada.state_dict(), "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "step": step, "log_rows": rows, "log_window": window,
                "last_r1": last_r1, "arch": arch,
            })

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

        t0 = time.perf_counter()
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="stylegan2",
                   disable=progress_disabled())
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

            losses = [float(loss_g.detach()), float(loss_d.detach()), last_r1,
                      float(logit_r.detach().mean()), float(logit_f.detach().mean())]
            if not all(math.isfinite(v) for v in losses[:2]):
                raise LmidError(f"stylegan2: loss is not finite at step {done}: {losses}")
            window.append(losses)
            if done % cfg.log_every == 0 or done == cfg.steps:
                rows.append([done] + np.nanmean(np.asarray(window), axis=0).tolist() + [ada.p, ada.rt])
                window = []
                write_train_log(out_dir / "train_log.csv", columns, rows)
                bar.set_postfix(g=f"{rows[-1][1]:.3f}", d=f"{rows[-1][2]:.3f}", p=f"{ada.p:.3f}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
        wall = time.perf_counter() - t0
        # A run resumed at its last step makes no new rows; the log (which the workflow deletes
        # before rerunning the job) is written again from the rows the checkpoint kept.
        write_train_log(out_dir / "train_log.csv", columns, rows)

        save_checkpoint(out_dir / "model.pt", {"method": self.name, "arch": arch, "g_ema": g_ema.state_dict()})
        info = {
            "steps": cfg.steps, "steps_this_run": cfg.steps - start, "train_loop_s": round(wall, 3),
            "s_per_step": round(wall / max(1, cfg.steps - start), 4), "kimg": round(cfg.steps * bs / 1000, 3),
            "generator_params": count_parameters(g_ema), "discriminator_params": count_parameters(d),
            "ada_p_final": round(ada.p, 4), "target_slices_seen": int(len(data.target)),
            "nfe_per_slice": p.invert_steps, "inversion_loss": INVERSION_LOSS_TEXT[p.invert_loss],
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
        return g.to(device).eval().requires_grad_(False)

    def translate(self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device,
                  samples: int = 1) -> Translation:
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
                src = torch.as_tensor(np.asarray(source[i:i + INVERT_BATCH], np.float32))[:, None].to(device)
                # Sample k of a slice uses a seed derived from the slice's seed.
                img, dist, trace = project(model, src, seeds[i:i + INVERT_BATCH] + 1_000_003 * k, params, w_avg, w_std,
                                    progress=True)
                out[i:i + INVERT_BATCH] = img[:, 0].cpu().numpy()
                losses.append(dist.cpu().numpy())
                traces.append(np.asarray(trace) * len(src))
            images.append(out)
        stack = np.stack(images)
        # Mean distance over all slices at ~10 points of the optimisation (for the report).
        trace = np.sum(traces, axis=0) / (n * samples)
        marks = sorted({int(round(x)) for x in np.linspace(0, len(trace) - 1, 11)})
        info = {"inversion_loss": INVERSION_LOSS_TEXT[p.invert_loss], "inversion_steps": p.invert_steps,
                "inversion_final_distance_mean": round(float(np.mean(np.concatenate(losses))), 5),
                "w_samples": p.invert_w_samples,
                "inversion_distance_trace": {int(k): round(float(trace[k]), 5) for k in marks}}
        # Inversion 0 is scored; the mean and spread over inversions are the uncertainty product.
        return Translation(image=stack[0], mean=stack.mean(0) if samples > 1 else None,
                           std=stack.std(0) if samples > 1 else None, nfe=p.invert_steps * samples, info=info)
