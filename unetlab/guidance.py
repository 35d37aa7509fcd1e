"""Classifier-free guidance: one UNet call on a doubled batch, then ``uncond + s · (text − uncond)``.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", write the guided prediction as
``(1 + w) · ε(x, c) − w · ε(x)``; with ``s = w + 1`` that is ``ε(x) + s · (ε(x, c) − ε(x))``, the form
diffusers' pipelines and this module use. ``guidance_scale`` here is that ``s``:

* ``s = 0``: the unconditional prediction alone (one UNet call on B images);
* ``s = 1``: the text-conditional prediction alone (the paper's w = 0; one call on B images);
* ``0 < s < 1`` interpolates, ``s > 1`` pushes further along the text direction (SD's default: 7.5).

diffusers differs below 1: its pipelines set ``do_classifier_free_guidance = guidance_scale > 1`` and
otherwise run the text-conditional model alone, so diffusers' ``guidance_scale=0`` (or any value <= 1)
is the plain text model, while here 0 is the unconditional model. For s > 1 the two agree.

The helper combines the UNet's *raw* outputs, whatever they are (eps, v or x_0), exactly as diffusers'
pipelines do; it is the sampler that converts them (``prediction_type``). ``guidance_rescale`` is
diffusers' ``rescale_noise_cfg`` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", §3.4): it pulls the guided output's per-image standard deviation back toward the text
prediction's, against the over-exposure that large scales cause with zero-terminal-SNR models.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn as nn

from .embeddings import timestep_batch

__all__ = ["check_guidance_scale", "check_guidance_rescale", "rescale_noise_cfg", "guided_eps"]


def check_guidance_scale(guidance_scale) -> float:
    """A guidance scale must be a finite number >= 0 (0: unconditional, 1: text only, > 1: guided)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
        raise TypeError(f"guidance_scale must be a number >= 0, got {type(guidance_scale).__name__}")
    scale = float(guidance_scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(
            f"guidance_scale must be a finite number >= 0, got {guidance_scale} "
            "(0: unconditional, 1: the text-conditional model alone, > 1: classifier-free guidance)"
        )
    return scale


def check_guidance_rescale(guidance_rescale) -> float:
    """``guidance_rescale`` must be a number in [0, 1] (0: off; Lin et al. use 0.7)."""
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, Real):
        raise TypeError(f"guidance_rescale must be a number in [0, 1], got {type(guidance_rescale).__name__}")
    phi = float(guidance_rescale)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1] (0: off, 0.7: Lin et al. 2024), got {guidance_rescale}")
    return phi


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg``: blend the guided output with a copy rescaled to the text output's std.

    ``noise_cfg``, ``noise_pred_text``: (B, C, H, W). Per image, std over all other dimensions:
    ``rescaled = noise_cfg · std(text) / std(cfg)``; returns ``φ · rescaled + (1 − φ) · noise_cfg``
    with φ = ``guidance_rescale``. Lin et al. 2024, §3.4, eq. (15)-(16).
    """
    if noise_cfg.shape != noise_pred_text.shape:
        raise ValueError(
            f"noise_cfg and noise_pred_text must have the same shape, got {tuple(noise_cfg.shape)} and "
            f"{tuple(noise_pred_text.shape)}"
        )
    # (B, 1, 1, 1) each: per-image standard deviations
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    # (B, C, H, W): the guided output with the text output's std (fixes over-exposure)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    # mix back by φ, against "plain-looking" images
    return guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg


def _context_batch(name: str, context, batch: int) -> torch.Tensor:
    """(B, L, D) or (1, L, D) -> (B, L, D)."""
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        found = f"shape {tuple(context.shape)}" if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"{name} must be a (B, L, D) tensor (text-encoder output), got {found}")
    if context.shape[0] == batch:
        return context
    if context.shape[0] == 1:
        return context.expand(batch, -1, -1)
    raise ValueError(f"{name} holds {context.shape[0]} prompts for a batch of {batch} images; give {batch} or 1")


def guided_eps(
    unet: nn.Module,
    x_t: torch.Tensor,
    t,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Classifier-free guidance: ``out_uncond + s · (out_text − out_uncond)``, the UNet run once on a doubled batch.

    * ``unet``: called as ``unet(sample, timestep, context)`` (e.g. :class:`unetlab.sd.unet.SDUNet`); its raw
      output (eps, v or x_0) is combined as is, as diffusers' pipelines do.
    * ``x_t``: (B, C, H, W).
    * ``t``: every form the UNet takes: a Python int (or float), a 0-d tensor (what iterating
      ``sampler.timesteps`` yields), a (1,) tensor, or a (B,) tensor; broadcast to (B,), then doubled to (2B,).
    * ``context`` / ``uncond_context``: (B, L, D) or (1, L, D) (one prompt for the whole batch).
    * ``guidance_scale`` s >= 0 (:func:`check_guidance_scale`): 0 unconditional, 1 text only (each one
      UNet call on B images), otherwise the combination. Relation to diffusers and to the paper's w
      (s = w + 1): see the module docstring.
    * ``guidance_rescale`` φ in [0, 1]: when the two halves are combined (s not 0 or 1) and φ > 0, the result
      goes through :func:`rescale_noise_cfg` (diffusers' ``rescale_noise_cfg``); at s = 1 it would be a no-op,
      and at s = 0 there is no text prediction to rescale toward.

    Returns (B, C, H, W). Bad timesteps or contexts raise ``ValueError`` naming the shape that was passed.
    """
    scale = check_guidance_scale(guidance_scale)
    phi = check_guidance_rescale(guidance_rescale)
    if not isinstance(x_t, torch.Tensor) or x_t.ndim < 2:
        raise ValueError(f"x_t must be a (B, C, H, W) tensor, got {type(x_t).__name__}")
    B = x_t.shape[0]
    try:
        # (B,): int / 0-d / (1,) / (B,) -> (B,)
        t_batch = timestep_batch(t, B, device=x_t.device)
    except ValueError as err:
        raise ValueError(f"guided_eps: {err}") from None
    if scale == 0:
        return unet(x_t, t_batch, _context_batch("uncond_context", uncond_context, B))
    if scale == 1:
        return unet(x_t, t_batch, _context_batch("context", context, B))
    context = _context_batch("context", context, B)
    uncond_context = _context_batch("uncond_context", uncond_context, B)
    if context.shape[1:] != uncond_context.shape[1:]:
        raise ValueError(
            f"context {tuple(context.shape)} and uncond_context {tuple(uncond_context.shape)} must have the same "
            "(L, D) to run in one batch: encode the empty prompt with the same tokenizer padding"
        )
    # (2B, C, H, W): [x_t; x_t] — note 002's `torch.cat([latents] * 2)`
    model_input = torch.cat([x_t, x_t])
    # (2B,)
    t_double = torch.cat([t_batch, t_batch])
    # (2B, C, H, W) -> two (B, C, H, W): the unconditional half first, as in diffusers
    out_uncond, out_text = unet(model_input, t_double, torch.cat([uncond_context, context])).chunk(2)
    # (B, C, H, W)
    guided = out_uncond + scale * (out_text - out_uncond)
    if phi > 0:
        guided = rescale_noise_cfg(guided, out_text, guidance_rescale=phi)
    return guided
