"""Chapter 1's textbook UNet: study note 003 §19.3, with its two bugs fixed.

The structure and the names are the note's (``time_embed``, ``down1``, ``down2``,
``bottleneck``, ``up1``, ``up2``, ``out``), so a learner can read this file next to the
note. What changed, and why:

* **Bug 1, construction.** The note's ``ResBlock`` builds ``nn.GroupNorm(8, in_channels)``;
  for ``in_channels=4`` (a Stable Diffusion latent) that is ``GroupNorm(8, 4)``, which
  PyTorch refuses: 4 channels cannot be split into 8 groups. Here every GroupNorm uses
  :func:`norm_groups`: the largest divisor of 8 that also divides the channel count
  (``gcd(8, C)``). For the 64/128-channel layers this is the note's 8, unchanged; only the
  very first norm, on the 4 input channels, gets 4 groups (one channel per group).
  We chose this over adding a ``conv_in`` stem (what Stable Diffusion does) because it
  keeps the note's modules, names and parameter count, and it works for any channel count.
* **Bug 2, forward.** The note's ``UpBlock`` assumes the skip has as many channels as the
  block's output (``ResBlock(out_channels * 2, ...)``). For ``up1`` the skip comes from
  ``down2`` and has ``2 * base_channels`` channels, so the concatenation holds
  ``base + 2 * base`` channels (64 + 128 = 192) while the ResBlock was built for 128.
  Here ``UpBlock`` is told its skip's channel count: ``ResBlock(out_channels + skip_channels, ...)``.

Beyond the note:

* ``SimpleUNet(use_skips=False)``: a UNet without skip connections (the up blocks get
  no concatenation); chapter 3 trains both.
* ``forward(x, timestep, skip_scale={"up1": 0.0})``: multiply the skip that one up block
  receives by a factor at inference (0.0 drops that resolution's skip); chapter 3 uses it.
* ``forward(x, timestep, skip_replace={"up2": fn})``: replace that skip by ``fn(skip)`` (same
  shape), e.g. the mean over other images or another image's skip: chapter 3's ablations.
* The timestep may be a Python number, a 0-d tensor or a ``(B,)`` tensor, and bad input
  (wrong channel count, a spatial size the down/up path cannot restore) raises a
  ``ValueError`` that says what was expected.

Kept as printed, although diffusers does it differently: the time path. ``TimeEmbedding`` ends in
a ``Linear`` and each ``ResBlock.time_mlp`` is a ``Linear`` applied to its output directly, so the
two compose into one linear map (``TimeEmbedding``'s last layer adds parameters, not expressive
power). diffusers' ``ResnetBlock2D`` applies SiLU to ``temb`` before ``time_emb_proj``. Chapter 1
shows the collapse numerically; the shipped checkpoints were trained with the note's time path.

The embedded timestep is called ``time_emb`` everywhere (the note says ``t_emb``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from unetlab.embeddings import sinusoidal_embedding, timestep_batch

__all__ = ["SimpleUNet", "TimeEmbedding", "ResBlock", "DownBlock", "UpBlock", "norm_groups"]


def norm_groups(channels: int, max_groups: int = 8) -> int:
    """Group count for ``nn.GroupNorm`` on ``channels``: ``gcd(max_groups, channels)``.

    That is the largest divisor of ``max_groups`` that also divides ``channels`` (not the
    largest divisor of ``channels`` below ``max_groups``: ``gcd(8, 12) = 4``, not 6), so the
    count is always 8, 4, 2 or 1: ``gcd(8, 64) = 8`` (the note's choice), ``gcd(8, 4) = 4``,
    ``gcd(8, 3) = 1``.
    """
    return math.gcd(max_groups, channels)


class TimeEmbedding(nn.Module):
    """Timestep embedding: sinusoidal features of ``t`` followed by a 2-layer MLP.

    ``dim`` sines/cosines go in, ``4 * dim`` features come out (the ``time_emb`` every
    ResBlock receives). The sinusoidal part is the note's variant,
    ``exp(-ln(10000) * i / (dim/2 - 1))`` with ``[sin | cos]`` order, which is
    ``sinusoidal_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * 4),
            nn.SiLU(),
            nn.Linear(dim * 4, dim * 4),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) timesteps -> (B, dim) sinusoidal features
        emb = sinusoidal_embedding(t, self.dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        # (B, dim) -> (B, 4 * dim)
        return self.mlp(emb)


class ResBlock(nn.Module):
    """Residual block with time conditioning (study note 003's, GroupNorm groups fixed).

    ``h = conv1(relu(norm1(x))) + time_mlp(time_emb)`` broadcast over H×W, then
    ``conv2(relu(norm2(h)))`` plus the (1×1-projected if needed) input.
    """

    def __init__(self, in_channels: int, out_channels: int, time_emb_dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.time_mlp = nn.Linear(time_emb_dim, out_channels)
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()
        # Bug 1 fix: the note's GroupNorm(8, C) fails for C = 4; gcd(8, C) groups always divide C.
        self.norm1 = nn.GroupNorm(norm_groups(in_channels), in_channels)
        self.norm2 = nn.GroupNorm(norm_groups(out_channels), out_channels)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, H, W) -> h: (B, C_out, H, W)
        h = self.conv1(torch.relu(self.norm1(x)))
        # time_emb: (B, time_emb_dim) -> (B, C_out) -> (B, C_out, 1, 1), broadcast over H×W
        t = self.time_mlp(time_emb)[:, :, None, None]
        # (B, C_out, H, W)
        h = h + t
        # (B, C_out, H, W)
        h = self.conv2(torch.relu(self.norm2(h)))
        # residual: (B, C_out, H, W)
        return h + self.skip(x)


class DownBlock(nn.Module):
    """ResBlock, then a stride-2 conv that halves H and W. Returns ``(downsampled, skip)``."""

    def __init__(self, in_channels: int, out_channels: int, time_emb_dim: int):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, time_emb_dim)
        self.down = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, C_in, H, W) -> (B, C_out, H, W): kept as the skip for the up path
        h = self.res(x, time_emb)
        # (B, C_out, H/2, W/2), (B, C_out, H, W)
        return self.down(h), h


class UpBlock(nn.Module):
    """Transposed conv that doubles H and W, concatenation with the skip, then a ResBlock.

    ``skip_channels`` is the channel count of the skip this block receives (the note
    assumed it equals ``out_channels``, which is wrong for ``up1``: bug 2). With
    ``skip_channels=0`` there is no concatenation and ``forward`` takes ``skip=None``.
    """

    def __init__(self, in_channels: int, out_channels: int, time_emb_dim: int, skip_channels: int):
        super().__init__()
        if skip_channels < 0:
            raise ValueError(f"skip_channels must be >= 0, got {skip_channels}")
        self.skip_channels = skip_channels
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        # Bug 2 fix: the ResBlock sees up-path channels + skip channels (the note had out_channels * 2).
        self.res = ResBlock(out_channels + skip_channels, out_channels, time_emb_dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, time_emb: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) -> (B, C_out, 2H, 2W)
        h = self.up(x)
        if self.skip_channels:
            if skip is None or skip.shape[1] != self.skip_channels or skip.shape[-2:] != h.shape[-2:]:
                got = None if skip is None else tuple(skip.shape)
                raise ValueError(
                    f"UpBlock expected a skip of shape (B, {self.skip_channels}, {h.shape[-2]}, {h.shape[-1]}), got {got}"
                )
            # skip connection: (B, C_out + C_skip, 2H, 2W)
            h = torch.cat([h, skip], dim=1)
        elif skip is not None:
            raise ValueError("this UpBlock was built with skip_channels=0; pass skip=None")
        # (B, C_out, 2H, 2W)
        return self.res(h, time_emb)


class SimpleUNet(nn.Module):
    """Study note 003's simplified UNet, working: two down blocks, a bottleneck, two up blocks.

    ``SimpleUNet(in_channels=4, out_channels=4, base_channels=64, use_skips=True)``

    Resolutions for an ``H×W`` input (``C = base_channels``)::

        down1: (B, in, H, W)      -> (B, C, H/2, W/2),   skip1 (B, C, H, W)
        down2: (B, C, H/2, W/2)   -> (B, 2C, H/4, W/4),  skip2 (B, 2C, H/2, W/2)
        bottleneck:                  (B, 2C, H/4, W/4)
        up1:   up to (B, C, H/2, W/2), + skip2 -> (B, C, H/2, W/2)
        up2:   up to (B, C, H, W),     + skip1 -> (B, C, H, W)
        out:   1×1 conv               -> (B, out, H, W)

    H and W must be multiples of 4 (two halvings that the up path must undo exactly).

    ``use_skips=False`` builds the same network without skip connections: each up block
    gets only the upsampled features.
    """

    #: the up blocks that receive a skip, and the resolution of that skip (fraction of the input size)
    SKIP_RESOLUTIONS = {"up1": 1 / 2, "up2": 1}
    #: how many times the down path halves H and W
    NUM_DOWNS = 2

    def __init__(self, in_channels: int = 4, out_channels: int = 4, base_channels: int = 64, use_skips: bool = True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("base_channels", base_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.use_skips = bool(use_skips)
        time_emb_dim = base_channels * 4
        self.time_embed = TimeEmbedding(base_channels)
        # Encoder
        self.down1 = DownBlock(in_channels, base_channels, time_emb_dim)
        self.down2 = DownBlock(base_channels, base_channels * 2, time_emb_dim)
        # Bottleneck
        self.bottleneck = ResBlock(base_channels * 2, base_channels * 2, time_emb_dim)
        # Decoder: up1's skip comes from down2 (2C channels), up2's from down1 (C channels)
        self.up1 = UpBlock(base_channels * 2, base_channels, time_emb_dim, skip_channels=base_channels * 2 if use_skips else 0)
        self.up2 = UpBlock(base_channels, base_channels, time_emb_dim, skip_channels=base_channels if use_skips else 0)
        # Output
        self.out = nn.Conv2d(base_channels, out_channels, 1)

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor of shape (B, {self.in_channels}, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SimpleUNet expected x of shape (B, {self.in_channels}, H, W) "
                f"(in_channels={self.in_channels}), got {tuple(x.shape)}"
            )
        factor = 2**self.NUM_DOWNS
        height, width = x.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"SimpleUNet expected H and W to be multiples of {factor} (it halves them {self.NUM_DOWNS} times "
                f"and must double them back exactly), got {height}×{width}"
            )

    def _skip_scales(self, skip_scale) -> dict[str, float]:
        if skip_scale is None:
            return {}
        if not isinstance(skip_scale, Mapping):
            raise TypeError(f"skip_scale must be None or a dict like {{'up1': 0.0}}, got {type(skip_scale).__name__}")
        if skip_scale and not self.use_skips:
            raise ValueError("this SimpleUNet was built with use_skips=False: it has no skips to scale")
        unknown = set(skip_scale) - set(self.SKIP_RESOLUTIONS)
        if unknown:
            raise ValueError(f"skip_scale keys must be among {sorted(self.SKIP_RESOLUTIONS)}, got {sorted(map(str, unknown))}")
        return {name: float(value) for name, value in skip_scale.items()}

    def _skip_replacements(self, skip_replace) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        if skip_replace is None:
            return {}
        if not isinstance(skip_replace, Mapping):
            raise TypeError(
                f"skip_replace must be None or a dict like {{'up2': fn}}, got {type(skip_replace).__name__}"
            )
        if skip_replace and not self.use_skips:
            raise ValueError("this SimpleUNet was built with use_skips=False: it has no skips to replace")
        unknown = set(skip_replace) - set(self.SKIP_RESOLUTIONS)
        if unknown:
            raise ValueError(f"skip_replace keys must be among {sorted(self.SKIP_RESOLUTIONS)}, got {sorted(map(str, unknown))}")
        for name, fn in skip_replace.items():
            if not callable(fn):
                raise TypeError(f"skip_replace[{name!r}] must be a function skip -> tensor, got {type(fn).__name__}")
        return dict(skip_replace)

    @staticmethod
    def _replaced(name: str, fn, skip: torch.Tensor) -> torch.Tensor:
        new = fn(skip)
        if not isinstance(new, torch.Tensor) or new.shape != skip.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"skip_replace[{name!r}] must return a tensor of the skip's shape {tuple(skip.shape)}, got {got}")
        return new

    def forward(self, x: torch.Tensor, timestep, skip_scale: Mapping[str, float] | None = None,
                skip_replace: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> torch.Tensor:
        """Predict a ``(B, out_channels, H, W)`` tensor from ``x`` ``(B, in_channels, H, W)`` at ``timestep``.

        ``timestep``: a Python number, a 0-d tensor, or a ``(B,)`` tensor.
        ``skip_scale``: optional ``{"up1": a, "up2": b}``; the skip entering that up block is
        multiplied by the factor before the concatenation (0.0 drops it, keeping the channel
        count so a trained model still runs). ``up1``'s skip is at H/2, ``up2``'s at full H.
        ``skip_replace``: optional ``{"up1": fn}``; the skip entering that up block is replaced by
        ``fn(skip)``, which must return a tensor of the same shape (applied after ``skip_scale``).
        Raises ``ValueError``/``TypeError`` for bad input, unknown keys, or a wrong replacement shape.
        """
        self._check_input(x)
        scales = self._skip_scales(skip_scale)
        replace = self._skip_replacements(skip_replace)
        # (B,) timesteps, whatever form they came in
        t = timestep_batch(timestep, x.shape[0], device=x.device)
        # (B,) -> (B, 4 * base_channels)
        time_emb = self.time_embed(t)
        # Encoder: h1 (B, C, H/2, W/2), skip1 (B, C, H, W)
        h1, skip1 = self.down1(x, time_emb)
        # h2 (B, 2C, H/4, W/4), skip2 (B, 2C, H/2, W/2)
        h2, skip2 = self.down2(h1, time_emb)
        # Bottleneck: (B, 2C, H/4, W/4)
        h = self.bottleneck(h2, time_emb)
        if not self.use_skips:
            skip1 = skip2 = None
        else:
            skip2 = skip2 * scales["up1"] if "up1" in scales else skip2
            skip1 = skip1 * scales["up2"] if "up2" in scales else skip1
            skip2 = self._replaced("up1", replace["up1"], skip2) if "up1" in replace else skip2
            skip1 = self._replaced("up2", replace["up2"], skip1) if "up2" in replace else skip1
        # Decoder: (B, C, H/2, W/2)
        h = self.up1(h, skip2, time_emb)
        # (B, C, H, W)
        h = self.up2(h, skip1, time_emb)
        # (B, out_channels, H, W)
        return self.out(h)
