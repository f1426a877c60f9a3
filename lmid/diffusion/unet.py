"""The ε-prediction U-Net: MONAI's :class:`~monai.networks.nets.DiffusionModelUNet`.

With the paper preset (``UNetParams()``: channels (64, 128, 128, 128), attention at the last
level — 16×16 for 128-px slices — and in the middle block, 2 residual blocks per level,
GroupNorm(32), SiLU, sinusoidal time embedding) and 3 input channels this has 8,950,913
parameters, the "about 9 M" of the authors' DDIM-style U-Net (64 base channels, multipliers
(1, 2, 2, 2)).

MONAI's residual blocks have no dropout; the DDPM/DDIM reference blocks apply dropout between
the second SiLU and the second convolution. :func:`build_unet` adds exactly that with a forward
pre-hook on each block's ``conv2``, so the state dict keeps MONAI's names and no parameter is
added.
"""

from __future__ import annotations

from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn
from torch.nn import functional as F

from lmid.config import UNetParams


def _dropout_before(p: float):
    def hook(module: nn.Module, args):
        return (F.dropout(args[0], p=p, training=module.training),)

    return hook


def build_unet(params: UNetParams | None = None, in_channels: int = 1, out_channels: int = 1) -> DiffusionModelUNet:
    """MONAI diffusion U-Net for 2-D slices: input (B, in_channels, H, W) and timesteps (B,).

    H and W must be divisible by 2^(levels − 1).
    """
    params = params or UNetParams()
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(params.channels),
        attention_levels=tuple(params.attention_levels),
        num_res_blocks=params.num_res_blocks,
        num_head_channels=params.num_head_channels,
        norm_num_groups=params.norm_num_groups,
    )
    if params.dropout > 0:
        for block in net.modules():
            if isinstance(block, DiffusionUNetResnetBlock):
                block.conv2.register_forward_pre_hook(_dropout_before(params.dropout))
    return net


def check_image_size(params: UNetParams, height: int, width: int) -> None:
    """The U-Net halves the resolution ``len(channels) − 1`` times."""
    factor = 2 ** (len(params.channels) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"slice size {height}x{width} is not divisible by {factor} (2^(levels-1) for "
            f"diffusion.unet.channels={list(params.channels)})"
        )


def unet_input_channels(net: DiffusionModelUNet) -> int:
    conv = net.conv_in.conv if hasattr(net.conv_in, "conv") else net.conv_in
    return int(conv.in_channels)


__all__ = ["build_unet", "check_image_size", "unet_input_channels"]
