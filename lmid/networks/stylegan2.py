"""A compact StyleGAN2 (Karras et al. 2020) for one-channel slices, written for this project.

The parts that define the architecture, as in the reference "skip" generator / "resnet"
discriminator of StyleGAN2-ADA, at a configurable size:

* Equalised learning rate everywhere: weights are stored N(0, 1) and scaled at run time by
  ``1/sqrt(fan_in)`` (× ``lr_mul`` in the mapping network, whose lr multiplier is 0.01).
* :class:`MappingNetwork`: z (normalised to unit second moment) → ``num_layers`` fully connected
  layers with leaky ReLU (gain √2) → w.
* :class:`SynthesisNetwork`: a learned constant 4×4 input; per resolution 4, 8, …, R one (at 4×4)
  or two modulated 3×3 convolutions (the first of them upsampling ×2) and a toRGB layer (a
  modulated 1×1 convolution without demodulation, 1 output channel); the image is the sum of
  the upsampled toRGB outputs ("skip" architecture). Each modulated convolution scales its
  weights per sample by the style s = A(w) (affine A, bias initialised to 1), demodulates them
  (divides each output filter by its norm), adds per-pixel noise times a learned strength, a
  bias and leaky ReLU × √2. Upsampling is bilinear ×2, i.e. the reference's [1, 3, 3, 1] FIR
  filter (up to border handling). The number of feature maps at resolution r is
  ``min(channels, channel_base // r)``.
* :class:`Discriminator`: fromRGB at R, then residual blocks (two 3×3 convolutions, the second
  after a 2×2 average-pool downsampling, plus a 1×1 downsampled skip, summed × √½) down to 4×4,
  then minibatch standard deviation (groups of up to 4, one feature), a 3×3 convolution, a
  fully connected layer and the output logit.

Not included (the reference's engineering for large images): fp16 layers with clamping, FIR
filters on the downsampling path, path-length regularisation, the w average for truncation.

Noise inputs are explicit: :meth:`SynthesisNetwork.make_noise` draws one map per modulated 3×3
convolution from a ``torch.Generator``; ``noise=None`` means no noise. The GAN inversion
optimises these maps directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU 0.2 with the gain √2 that keeps the signal's second moment."""
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class _Seeded(nn.Module):
    """A layer whose stored weights are N(0, 1)/lr_mul, drawn by :meth:`reset_parameters`."""

    lr_mul: float = 1.0

    def reset_parameters(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=gen) / self.lr_mul)


class EqualLinear(_Seeded):
    def __init__(self, in_f: int, out_f: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_f, in_f))
        self.bias = nn.Parameter(torch.full((out_f,), float(bias_init) / lr_mul))
        self.lr_mul, self.act = lr_mul, act
        self.w_gain = lr_mul / math.sqrt(in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.w_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.act else x


class EqualConv2d(_Seeded):
    def __init__(self, in_ch: int, out_ch: int, k: int, bias: bool = True, act: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.act, self.down, self.pad = act, down, k // 2
        self.w_gain = 1.0 / math.sqrt(in_ch * k * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.w_gain, self.bias, padding=self.pad)
        return lrelu(x) if self.act else x


class ModulatedConv2d(_Seeded):
    """Modulated (and optionally demodulated) convolution with noise, bias and activation."""

    def __init__(
        self, in_ch: int, out_ch: int, k: int, w_dim: int, demodulate: bool = True, up: bool = False, act: bool = True
    ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # A: w → style s
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, k
        self.demodulate, self.up, self.act = demodulate, up, act
        self.w_gain = 1.0 / math.sqrt(in_ch * k * k)
        # B: per-layer strength of the per-pixel noise (zero at start, as in the reference).
        self.noise_strength = nn.Parameter(torch.zeros([])) if act else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        styles = self.affine(w)  # (B, in)
        if not self.demodulate:
            styles = styles * self.w_gain  # toRGB: equalised lr carried by the style
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        weight = self.weight[None] * styles[:, None, :, None, None]  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        h, wd = x.shape[2:]
        # One grouped convolution runs every sample with its own weights.
        x = F.conv2d(
            x.reshape(1, b * self.in_ch, h, wd),
            weight.reshape(b * self.out_ch, self.in_ch, self.k, self.k),
            padding=self.k // 2,
            groups=b,
        ).reshape(b, self.out_ch, h, wd)
        if noise is not None and self.noise_strength is not None:
            x = x + noise * self.noise_strength
        x = x + self.bias[None, :, None, None]
        return lrelu(x) if self.act else x


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_layers: int, lr_mul: float = 0.01):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, act=True) for i in range(num_layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        for layer in self.layers:
            x = layer(x)
        return x


def channels_at(res: int, channels: int, channel_base: int) -> int:
    return max(1, min(channels, channel_base // res))


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, resolution: int, channels: int, channel_base: int, img_channels: int = 1):
        super().__init__()
        log2 = int(round(math.log2(resolution)))
        if 2**log2 != resolution or resolution < 4:
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
        self.resolution = resolution
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        ch = {r: channels_at(r, channels, channel_base) for r in self.resolutions}
        self.const = nn.Parameter(torch.empty(ch[4], 4, 4))
        self.convs = nn.ModuleList()
        self.torgb = nn.ModuleList()
        self.noise_res: list[int] = []
        for r in self.resolutions:
            if r > 4:
                self.convs.append(ModulatedConv2d(ch[r // 2], ch[r], 3, w_dim, up=True))
                self.noise_res.append(r)
            self.convs.append(ModulatedConv2d(ch[r], ch[r], 3, w_dim))
            self.noise_res.append(r)
            self.torgb.append(ModulatedConv2d(ch[r], img_channels, 1, w_dim, demodulate=False, act=False))
        # w index of every layer: each toRGB shares its index with the next block's first conv.
        self.num_ws = len(self.convs) + 1

    def reset_const(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.const.copy_(torch.randn(self.const.shape, generator=gen))

    def make_noise(self, batch: int, gen: torch.Generator, device: torch.device | None = None) -> list[torch.Tensor]:
        """One N(0, 1) map (B, 1, r, r) per 3×3 modulated convolution, drawn from ``gen``."""
        return [torch.randn(batch, 1, r, r, generator=gen).to(device) for r in self.noise_res]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """ws: (B, num_ws, w_dim) → image (B, img_channels, R, R)."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        img = None
        conv_i = 0
        for block, r in enumerate(self.resolutions):
            n_conv = 1 if r == 4 else 2
            for _ in range(n_conv):
                x = self.convs[conv_i](x, ws[:, conv_i], None if noise is None else noise[conv_i])
                conv_i += 1
            y = self.torgb[block](x, ws[:, conv_i])
            img = y if img is None else F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + y
        return img


class Generator(nn.Module):
    """z (B, z_dim) → image (B, 1, R, R), nominally in [-1, 1]."""

    def __init__(self, z_dim: int, w_dim: int, mapping_layers: int, resolution: int, channels: int, channel_base: int):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels, channel_base)
        self.num_ws = self.synthesis.num_ws

    def forward(self, z: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        w = self.mapping(z)
        return self.synthesis(w[:, None].expand(-1, self.num_ws, -1), noise)


class MinibatchStd(nn.Module):
    """Appends the std of each feature over groups of samples, averaged to one channel."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:  # the reference needs N divisible by the group size
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (N/g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, down=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, act=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Residual discriminator: image (B, 1, R, R) → logit (B,)."""

    def __init__(self, resolution: int, channels: int, channel_base: int, mbstd_group: int = 4, img_channels: int = 1):
        super().__init__()
        log2 = int(round(math.log2(resolution)))
        if 2**log2 != resolution or resolution < 4:
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
        ch = {2**i: channels_at(2**i, channels, channel_base) for i in range(2, log2 + 1)}
        self.fromrgb = EqualConv2d(img_channels, ch[resolution], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(ch[2**i], ch[2 ** (i - 1)]) for i in range(log2, 2, -1)])
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv = EqualConv2d(ch[4] + 1, ch[4], 3)
        self.fc = EqualLinear(ch[4] * 16, ch[4], act=True)
        self.out = EqualLinear(ch[4], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(img))
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))[:, 0]


def init_stylegan(module: nn.Module, gen: torch.Generator) -> None:
    """Draw every weight (and the constant input) from ``gen``, in module order."""
    for m in module.modules():
        if isinstance(m, _Seeded):
            m.reset_parameters(gen)
        elif isinstance(m, SynthesisNetwork):
            m.reset_const(gen)
