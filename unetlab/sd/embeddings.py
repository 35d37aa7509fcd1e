"""Timestep embeddings of the SD UNet: ``Timesteps`` (sinusoidal, no parameters) and
``TimestepEmbedding`` (the MLP ``linear_1 → SiLU → linear_2``).

SD 1.5: ``Timesteps(320)`` turns ``(B,)`` timesteps into ``(B, 320)`` sines and cosines;
``TimestepEmbedding(320, 1280)`` turns those into ``time_emb`` ``(B, 1280)``, which every
ResnetBlock2D receives. (Study note 000's ``(1, 320)`` is the sinusoidal part, before the MLP.)

SDXL adds a second pair, named ``add_time_proj`` / ``add_embedding`` in the UNet: the six
"micro-conditioning" numbers ``time_ids`` (original size, crop corner, target size) are
embedded with ``Timesteps(256)`` each, concatenated with the pooled text embedding
``text_embeds`` (1280 + 6·256 = 2816) and mapped by ``TimestepEmbedding(2816, 1280)``;
the result is added to ``time_emb``. ``text_time_input`` builds that 2816-wide input.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unetlab.embeddings import sinusoidal_embedding

__all__ = ["Timesteps", "TimestepEmbedding", "text_time_input"]


class Timesteps(nn.Module):
    """``(B,)`` numbers -> ``(B, num_channels)`` sinusoidal features (SD: ``[cos | sin]``)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, flip_sin_to_cos={self.flip_sin_to_cos}, shift={self.downscale_freq_shift}"

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        # (B,) -> (B, num_channels), float32
        return sinusoidal_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
        )


class TimestepEmbedding(nn.Module):
    """The time MLP: ``linear_1`` (in -> time_embed_dim), SiLU, ``linear_2`` (same width)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, in) -> (B, time_embed_dim)
        x = self.act(self.linear_1(x))
        # (B, time_embed_dim)
        return self.linear_2(x)


def text_time_input(add_time_proj: Timesteps, text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL: ``[text_embeds | sinusoidal(time_ids)]``, the input of ``add_embedding``.

    ``text_embeds`` ``(B, 1280)``, ``time_ids`` ``(B, 6)`` -> ``(B, 1280 + 6 · 256)``.
    """
    B = text_embeds.shape[0]
    # (B·6,) -> (B·6, 256) -> (B, 6·256)
    time_embeds = add_time_proj(time_ids.flatten()).reshape(B, -1)
    # (B, 1280 + 1536) = (B, 2816)
    return torch.cat([text_embeds, time_embeds.to(text_embeds.dtype)], dim=-1)
