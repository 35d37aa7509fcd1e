"""Sinusoidal timestep embeddings and timestep-argument checking, shared by every model here.

One function covers both variants the course compares (chapter 4):

* study note 003's ``TimeEmbedding``: frequencies ``exp(-ln(10000) * i / (half - 1))``, ``[sin, cos]``
  -> ``sinusoidal_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)``
* Stable Diffusion's ``Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)``:
  frequencies ``exp(-ln(10000) * i / half)``, ``[cos, sin]``

The formula is diffusers' ``get_timestep_embedding``, written out here.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = ["embedding_frequencies", "sinusoidal_embedding", "timestep_batch"]

# timestep dtypes timestep_batch accepts besides floating point (bool and complex are not timesteps)
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def embedding_frequencies(
    dim: int, downscale_freq_shift: float = 1.0, max_period: float = 10000.0, device=None
) -> torch.Tensor:
    """The ``dim // 2`` angular frequencies ``w_i = max_period ** (-i / (half - shift))``.

    Column ``i`` (and ``half + i``) of the embedding of timestep ``t`` is ``sin(w_i t)`` / ``cos(w_i t)``.
    """
    if not isinstance(dim, int) or dim < 4:
        raise ValueError(f"dim must be an int >= 4, got {dim!r}")
    half = dim // 2
    # exponent_i = -ln(max_period) * i / (half - shift),  i = 0 .. half-1
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device)
    return torch.exp(exponent / (half - downscale_freq_shift))


def sinusoidal_embedding(
    timesteps: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    max_period: float = 10000.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Embed a batch of timesteps ``(B,)`` into ``(B, dim)`` sines and cosines.

    Column ``i < dim // 2`` is ``sin(w_i t)`` and column ``dim // 2 + i`` is ``cos(w_i t)``
    (swapped with ``flip_sin_to_cos=True``), with ``w_i`` from :func:`embedding_frequencies`;
    an odd ``dim`` gets a zero last column, as in diffusers.
    """
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a tensor of shape (B,), got {type(timesteps).__name__}")
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
    half = dim // 2
    # freqs: (half,)
    freqs = embedding_frequencies(dim, downscale_freq_shift, max_period, device=timesteps.device)
    # angles: (B, half) = t_b * freq_i
    angles = scale * timesteps[:, None].float() * freqs[None, :]
    # emb: (B, 2*half) = [sin | cos]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        # SD's order: [cos | sin]
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def timestep_batch(timestep, batch_size: int, device=None) -> torch.Tensor:
    """Turn a timestep given as a Python number, a 0-d tensor or a ``(B,)`` tensor into ``(B,)``.

    Anything else raises a ``ValueError`` saying what was expected.
    """
    if isinstance(timestep, bool):
        raise ValueError("timestep must be a number or a tensor of shape () or (B,), got a bool")
    if isinstance(timestep, (Integral, Real)) and not isinstance(timestep, torch.Tensor):
        t = torch.tensor([timestep], device=device)
        return t.expand(batch_size)
    if not isinstance(timestep, torch.Tensor):
        raise ValueError(
            "timestep must be an int, a float, a 0-d tensor or a tensor of shape (B,), "
            f"got {type(timestep).__name__}"
        )
    if not (timestep.is_floating_point() or timestep.dtype in _INTEGER_DTYPES):
        raise ValueError(f"timestep must hold numbers, got dtype {timestep.dtype}")
    if device is not None and timestep.device != torch.device(device) and timestep.device.type != "meta":
        timestep = timestep.to(device)
    if timestep.ndim == 0:
        return timestep[None].expand(batch_size)
    if timestep.ndim == 1 and timestep.shape[0] == batch_size:
        return timestep
    if timestep.ndim == 1 and timestep.shape[0] == 1:
        return timestep.expand(batch_size)
    raise ValueError(
        f"timestep must be a number, a 0-d tensor or a tensor of shape ({batch_size},) "
        f"to match the batch, got shape {tuple(timestep.shape)}"
    )
