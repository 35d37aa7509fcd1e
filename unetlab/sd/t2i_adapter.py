"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability for
Text-to-Image Diffusion Models", arXiv:2302.08453): the full adapter, with diffusers' parameter names
(``diffusers/models/adapter.py``: ``T2IAdapter`` → ``FullAdapter`` → ``AdapterBlock`` → ``AdapterResnetBlock``).

Where ControlNet copies the UNet's encoder (361 M parameters for SD 1.5), T2I-Adapter is a small
separate conv net (77 M): it turns the control image into one feature map per down block, and the
UNet adds each one **inside** its down block — ``SDUNet.forward(…, down_intrablock_additional_residuals=features)``
(after the block's last ResNet+attention pair, before its downsampler; see
:func:`unetlab.sd.unet.intrablock_shapes`). It does not read the latent, the timestep or the text, so
it runs once per image, not once per denoising step.

The path of a 512×512 control image (SD 1.5 channels)::

    (B, 3, 512, 512) --PixelUnshuffle(8)--> (B, 192, 64, 64)   every 8×8 patch becomes 192 channels
    --conv_in--> (B, 320, 64, 64)
    body.0 (2 ResNets)                      -> (B, 320, 64, 64)   feature 0: down_blocks.0
    body.1 (avgpool /2, 1x1 conv, 2 ResNets) -> (B, 640, 32, 32)   feature 1: down_blocks.1
    body.2                                  -> (B, 1280, 16, 16)  feature 2: down_blocks.2
    body.3                                  -> (B, 1280, 8, 8)    feature 3: down_blocks.3

API
---
``T2IAdapter(in_channels=3, channels=(320, 640, 1280, 1280), num_res_blocks=2, downscale_factor=8,
adapter_type="full_adapter")``
    Parameters under ``adapter.*`` as in diffusers; 77,369,280 for RGB input at SD 1.5's channels.
    Only ``"full_adapter"`` is built here (diffusers also has ``full_adapter_xl`` and ``light_adapter``).
``T2IAdapter.for_unet(unet_or_config, in_channels=3)``
    The adapter whose features fit that UNet (``channels = block_out_channels``).
``features = adapter(control_image)``
    ``control_image`` ``(B, in_channels, H, W)`` with H, W multiples of ``adapter.downscale_factor`` (8), i.e.
    8 × the latent; returns a list, one ``(B, channels[i], ⌈H / 8 / 2^i⌉, ⌈W / 8 / 2^i⌉)`` per block — the
    shapes of :func:`unetlab.sd.unet.intrablock_shapes` (the UNet checks them and names a mismatch).
    Scale them (``[f * s for f in features]``) for diffusers' ``adapter_conditioning_scale``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from unetlab.configs import resolve_config

__all__ = ["AdapterResnetBlock", "AdapterBlock", "FullAdapter", "T2IAdapter"]


class AdapterResnetBlock(nn.Module):
    """``x + block2(relu(block1(x)))``: a 3x3 conv, ReLU, a 1x1 conv, and the input added back."""

    def __init__(self, channels: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W)
        h = self.act(self.block1(x))
        # (B, C, H, W)
        return self.block2(h) + x


class AdapterBlock(nn.Module):
    """(optional 2× average-pool) → (1x1 conv if the width changes) → ``num_res_blocks`` ResNets."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool = False):
        super().__init__()
        # ceil_mode: an odd side n becomes ceil(n / 2), as the UNet's stride-2 downsampler does
        self.downsample = nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        self.resnets = nn.Sequential(*[AdapterResnetBlock(out_channels) for _ in range(num_res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            # (B, C_in, H, W) -> (B, C_in, H/2, W/2)
            x = self.downsample(x)
        if self.in_conv is not None:
            # (B, C_in, h, w) -> (B, C_out, h, w)
            x = self.in_conv(x)
        # (B, C_out, h, w)
        return self.resnets(x)


class FullAdapter(nn.Module):
    """PixelUnshuffle → conv_in → one AdapterBlock per UNet down block (all but the first halve H, W)."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (320, 640, 1280, 1280), num_res_blocks: int = 2,
                 downscale_factor: int = 8):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        # space-to-depth: an f×f patch of in_channels pixels becomes in_channels·f² channels
        self.unshuffle = nn.PixelUnshuffle(downscale_factor)
        self.conv_in = nn.Conv2d(in_channels * downscale_factor**2, channels[0], kernel_size=3, padding=1)
        self.body = nn.ModuleList(
            [AdapterBlock(channels[0], channels[0], num_res_blocks)]
            + [AdapterBlock(channels[i - 1], channels[i], num_res_blocks, down=True) for i in range(1, len(channels))]
        )
        # 8 · 2³ = 64 for SD 1.5: a control image side must be a multiple of it
        self.total_downscale_factor = downscale_factor * 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # (B, 3, 512, 512) -> (B, 192, 64, 64)
        x = self.unshuffle(x)
        # (B, 320, 64, 64)
        x = self.conv_in(x)
        features = []
        for block in self.body:
            # (B, 320, 64, 64), (B, 640, 32, 32), (B, 1280, 16, 16), (B, 1280, 8, 8)
            x = block(x)
            features.append(x)
        return features


class T2IAdapter(nn.Module):
    """The full T2I-Adapter (diffusers' ``T2IAdapter(adapter_type="full_adapter")``); see the module docstring."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (320, 640, 1280, 1280), num_res_blocks: int = 2,
                 downscale_factor: int = 8, adapter_type: str = "full_adapter"):
        super().__init__()
        if adapter_type != "full_adapter":
            raise ValueError(
                f"adapter_type {adapter_type!r} is not built here; only 'full_adapter' (diffusers also has "
                "'full_adapter_xl' and 'light_adapter')"
            )
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be positive ints, one per UNet down block, got {channels!r}")
        self.in_channels = in_channels
        self.channels = tuple(channels)
        self.num_res_blocks = num_res_blocks
        self.adapter = FullAdapter(in_channels, channels, num_res_blocks, downscale_factor)

    @classmethod
    def for_unet(cls, unet_or_config: Any, in_channels: int = 3) -> "T2IAdapter":
        """An adapter whose features fit the UNet (one per down block, at its width)."""
        c = resolve_config(unet_or_config)
        return cls(in_channels, c.block_out_channels)

    def to_diffusers(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.T2IAdapter(**kwargs)``."""
        return dict(in_channels=self.in_channels, channels=list(self.channels), num_res_blocks=self.num_res_blocks,
                    downscale_factor=self.downscale_factor, adapter_type="full_adapter")

    @property
    def total_downscale_factor(self) -> int:
        """Control image side / side of the last feature (64 for SD 1.5)."""
        return self.adapter.total_downscale_factor

    @property
    def downscale_factor(self) -> int:
        """Control image side / side of the first feature = the latent's side (8 for SD)."""
        return self.adapter.unshuffle.downscale_factor

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        weight = self.adapter.conv_in.weight
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"control image must have shape (B, {self.in_channels}, H, W), got {got}")
        f = self.downscale_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"control image is {x.shape[-2]}×{x.shape[-1]}; its sides must be multiples of {f} (pixel unshuffle "
                f"turns each {f}×{f} patch into one position of a latent-sized map)"
            )
        if x.device != weight.device or x.dtype != weight.dtype:
            raise TypeError(f"control image is {x.dtype} on {x.device}; the adapter is {weight.dtype} on {weight.device}")
        return self.adapter(x)
