"""CycleGAN networks (Zhu et al. 2017, "Unpaired image-to-image translation ...").

Written to the description of the reference implementation's defaults, for one-channel slices:

* :class:`ResnetGenerator`: 7×7 convolution (reflection padding) → two stride-2 3×3
  convolutions → ``n_blocks`` residual blocks (two 3×3 reflection-padded convolutions each) →
  two stride-2 transposed convolutions → 7×7 convolution (reflection padding) → tanh. Instance
  normalisation without affine parameters and ReLU after every convolution but the last. With
  instance norm the convolutions keep their bias (the reference does too), so the parameter count
  of the 9-block, 3-channel, 64-filter generator is the reference's 11.378 M; the 6-block,
  1-channel generator used here at 128 px has 7.82 M.
* :class:`PatchDiscriminator`: the 70×70 PatchGAN: 4×4 convolutions, stride 2 for the first
  ``n_layers``, then two stride-1 ones, filters doubling up to 8× ``ndf``, instance norm (not on
  the first layer), LeakyReLU 0.2; one logit per overlapping 70×70 patch (for 3 layers).
* :func:`init_weights`: N(0, 0.02) weights, zero biases.
* :class:`ImagePool`: the 50-image history of generated images shown to the discriminator.

Images enter and leave the networks in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator: (B, in_ch, H, W) in [-1, 1] → (B, out_ch, H, W) in [-1, 1].

    H and W must be multiples of 4 (two stride-2 levels).
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, ngf: int = 64, n_blocks: int = 6):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(2):  # downsampling
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):  # upsampling
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, in_ch, H, W) → (B, 1, h, w) logits, one per receptive-field patch.

    With ``n_layers = 3`` the receptive field is 70×70 pixels; the input must be at least
    32×32 for the map to be non-empty.
    """

    def __init__(self, in_ch: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_weights(module: nn.Module, gen: torch.Generator, std: float = 0.02) -> None:
    """N(0, std) convolution weights (drawn from ``gen``) and zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ImagePool:
    """History of up to ``size`` generated images (Shrivastava et al. 2017).

    Each incoming image is stored while the pool fills; once full, with probability 1/2 the
    discriminator sees a randomly chosen stored image instead (which is then replaced by the new
    one), otherwise the new image itself. Randomness comes from the generator passed to
    :meth:`query`; :meth:`state_dict` holds the stored images so training resumes exactly.
    """

    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=gen).item() < 0.5:
                k = int(torch.randint(self.size, (), generator=gen))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        stored = torch.cat(self.images, 0).cpu() if self.images else torch.zeros(0)
        return {"size": self.size, "images": stored}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = (
            [images[i : i + 1].to(device) if device is not None else images[i : i + 1] for i in range(images.shape[0])]
            if images.dim() == 4
            else []
        )
