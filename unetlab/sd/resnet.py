"""The SD UNet's convolutional pieces: ``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``.

Parameter names equal diffusers' (``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``,
``conv2``, ``conv_shortcut``; ``conv`` in the samplers).

Latent sizes: any height and width work, as in diffusers. ``Downsample2D`` (stride-2 conv,
padding 1) turns a side of n pixels into ceil(n / 2); ``Upsample2D`` therefore takes the size
of the skip it will be concatenated with (``output_size``) instead of blindly doubling, so a
65×65 latent comes back as 65×65. Without ``output_size`` it doubles.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]


class ResnetBlock2D(nn.Module):
    """GroupNorm → SiLU → conv → (+ time) → GroupNorm → SiLU → dropout → conv, plus a shortcut.

    ``time_emb`` ``(B, time_embed_dim)`` goes through SiLU and ``time_emb_proj`` to one number
    per channel, added to every pixel of that channel (broadcast over H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(time_embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = nn.SiLU()
        # 1x1 conv so the residual has out_channels too (only when the width changes)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W)
        h = self.nonlinearity(self.norm1(x))
        # (B, C_out, H, W)
        h = self.conv1(h)
        # (B, C_out) -> (B, C_out, 1, 1): one shift per channel
        t = self.time_emb_proj(self.nonlinearity(time_emb))[:, :, None, None]
        # (B, C_out, H, W)
        h = h + t
        h = self.nonlinearity(self.norm2(h))
        # (B, C_out, H, W)
        h = self.conv2(self.dropout(h))
        # (B, C_out, H, W)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Downsample2D(nn.Module):
    """Halve H and W with a 3x3 stride-2 convolution (learned, not pooling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour ×2 (or to ``output_size``), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if output_size is None:
            # (B, C, H, W) -> (B, C, 2H, 2W)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            # (B, C, H, W) -> (B, C, *output_size): the skip's size, for odd latent sizes
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        # (B, C, H', W')
        return self.conv(x)
