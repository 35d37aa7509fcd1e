"""Chapter 6's evaluation helpers: signal leak, the course's sampling fix, negative prompts, intervals.

Additive to :mod:`unetlab.text2img` (which keeps the shipped behaviour): everything here samples the same
ε-prediction model with :class:`unetlab.samplers.DDIMSampler` and :func:`unetlab.guidance.guided_eps`, but
lets the caller choose where the chain starts.

* Signal leak (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): SD's
  schedule leaves √ᾱ_999 ≈ 0.068 of the clean image in x_999, so training never shows the model pure noise;
  sampling from x_T ~ N(0, I) hands it a noise whose random per-channel mean it reads as image content.
  :func:`start_noise` builds the starting point of each remedy that can be applied at sampling time:
  ``"noise"`` (pure N(0, I), diffusers' default), ``"mean"`` (x_T = √ᾱ_t0·mean training image + √(1−ᾱ_t0)·z,
  the forward process applied to the data mean) and ``"offset"`` (offset noise z + s·ε_channel, a training-time
  remedy, measured here at sampling time only to show that it does not help an untrained model).
* :func:`sample_images`: one image per caption from a chosen start, spacing and guidance, with an optional
  negative caption per image (its context replaces the unconditional half of the batch, as diffusers'
  ``negative_prompt``).
* :func:`accuracy_over_seeds`: caption accuracy over ``n`` held-out captions × several sampling seeds, counts
  and Wilson 95% intervals (:func:`wilson_interval`).
* :func:`background_colour`, :func:`noise_means`: what the signal-leak lesson correlates.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

import torch

from .data import HELDOUT_SEED, TRAIN_SEED, make_shapes
from .guidance import check_guidance_scale, guided_eps
from .samplers import DDIMSampler
from .schedule import NoiseSchedule
from .text2img import TextToImage, classify_image, foreground_mask

__all__ = [
    "STARTS", "COURSE_START", "COURSE_SPACING", "wilson_interval", "mean_training_image", "start_noise",
    "sample_images", "accuracy_over_seeds", "background_colour", "noise_means",
]

#: the starting points :func:`start_noise` knows
STARTS = ("noise", "mean", "offset")
#: the course's sampling fix for the shipped ε-model, chosen in chapter 6 from the measurement there
COURSE_START = "mean"
COURSE_SPACING = "trailing"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a rate ``successes / n`` (default 95%, z = 1.96): ``(low, high)`` in [0, 1].

    Wilson (1927); better than ``p ± z·√(p(1−p)/n)`` near 0 and 1. ``n < 1`` or ``successes`` outside
    ``[0, n]`` raises ``ValueError``.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(successes, bool) or not isinstance(successes, Integral) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an int in [0, n={n}], got {successes!r}")
    p = successes / n
    # centre = (p + z²/2n) / (1 + z²/n); half = z √(p(1−p)/n + z²/4n²) / (1 + z²/n)
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_training_image(n: int = 2048) -> torch.Tensor:
    """The mean of the first ``n`` training images (stream ``TRAIN_SEED``): ``(3, 32, 32)`` float32 in [-1, 1]."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return make_shapes(n, seed=TRAIN_SEED).images.mean(dim=0)


def start_noise(
    shape: tuple[int, int, int, int],
    generator: torch.Generator,
    start: str = "noise",
    t0: int = 999,
    schedule: NoiseSchedule | None = None,
    mean_image: torch.Tensor | None = None,
    offset_strength: float = 0.1,
) -> torch.Tensor:
    """The chain's starting point x_T ``(B, C, H, W)`` for one of :data:`STARTS`.

    * ``"noise"``: z ~ N(0, I).
    * ``"mean"``: √ᾱ_t0 · mean_image + √(1−ᾱ_t0) · z (the forward process applied to the data mean; ``t0`` is
      the chain's first timestep, ``mean_image`` (C, H, W) defaults to :func:`mean_training_image`).
    * ``"offset"``: z + offset_strength · ε_c, ε_c ~ N(0, 1) one value per image and channel (offset noise,
      Guttenberg 2023).

    ``z`` is drawn first from ``generator``, so the three starts share it.
    """
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
    # (B, C, H, W)
    z = torch.randn(shape, generator=generator)
    if start == "noise":
        return z
    if start == "offset":
        if isinstance(offset_strength, bool) or not isinstance(offset_strength, Real) or offset_strength < 0:
            raise ValueError(f"offset_strength must be a number >= 0, got {offset_strength!r}")
        # (B, C, 1, 1): one offset per image and channel
        return z + offset_strength * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    schedule = schedule if schedule is not None else NoiseSchedule()
    a0 = schedule.alphas_cumprod[schedule.check_timesteps(t0, 1)[0]]
    mean_image = mean_training_image() if mean_image is None else mean_image
    if mean_image.shape != tuple(shape[1:]):
        raise ValueError(f"mean_image must be {tuple(shape[1:])}, got {tuple(mean_image.shape)}")
    # x_T = √ᾱ_t0 · mean + √(1 − ᾱ_t0) · z
    return a0.sqrt() * mean_image + (1 - a0).sqrt() * z


@torch.no_grad()
def sample_images(
    model: TextToImage,
    captions: Sequence[str],
    *,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    seed: int = 0,
    start: str = COURSE_START,
    timestep_spacing: str = COURSE_SPACING,
    eta: float = 0.0,
    negative_captions: Sequence[str] | None = None,
    mean_image: torch.Tensor | None = None,
    return_start: bool = False,
):
    """One image per caption, ``(B, 3, 32, 32)`` in about [-1, 1], from the chosen start and spacing.

    DDIM (``eta`` in [0, 1]) on SD's schedule, guided by :func:`unetlab.guidance.guided_eps`.
    ``negative_captions`` (one per caption) replace the empty caption as the unconditional half: the guided
    prediction moves away from them (diffusers' ``negative_prompt``). With ``start="noise"`` and
    ``timestep_spacing="leading"`` this is :func:`unetlab.text2img.generate` (same noise, same images).
    ``return_start=True`` also returns x_T.
    """
    scale = check_guidance_scale(guidance_scale)
    captions = list(captions)
    if negative_captions is None:
        negative_captions = [""] * len(captions)
    negative_captions = list(negative_captions)
    if len(negative_captions) != len(captions):
        raise ValueError(f"negative_captions must have one entry per caption ({len(captions)}), got {len(negative_captions)}")
    sampler = DDIMSampler(NoiseSchedule(), num_inference_steps=num_inference_steps, eta=eta,
                          timestep_spacing=timestep_spacing)
    # (B, L, D) each
    context = model.encode(captions)
    uncond_context = model.encode(negative_captions)
    size = model.unet.config.sample_size
    shape = (len(captions), model.unet.config.in_channels, size, size)
    generator = torch.Generator().manual_seed(seed)
    x_T = start_noise(shape, generator, start, t0=int(sampler.timesteps[0]), mean_image=mean_image)

    def model_fn(x_t, t):
        return guided_eps(model.unet, x_t, t, context, uncond_context, scale)

    images = sampler.sample(model_fn, shape, generator=generator, x_T=x_T, progress=False)
    return (images, x_T) if return_start else images


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """Mean colour of the pixels outside the shape, ``(B, 3)`` in [0, 1], for images ``(B, 3, H, W)`` in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {getattr(images, 'shape', type(images))}")
    out = []
    for img in images:
        # (H, W) True on the background
        bg = ~foreground_mask(img)
        rgb = ((img.float() + 1) / 2).clamp(0, 1)
        out.append(rgb[:, bg].mean(dim=1))
    return torch.stack(out)


def noise_means(x_T: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean of a starting noise ``(B, C, H, W)``: ``(B, C)``."""
    return x_T.float().mean(dim=(2, 3))


def accuracy_over_seeds(
    model: TextToImage,
    n: int = 96,
    sample_seeds: Sequence[int] = (0, 1),
    *,
    caption_seed: int = HELDOUT_SEED,
    **sample_kwargs,
) -> dict:
    """Caption accuracy over ``n`` held-out captions × ``sample_seeds`` (one image per caption and seed).

    Returns ``{"n": total images, "colour"/"shape"/"both": {"k": successes, "rate": k/n, "ci": (low, high)},
    "per_seed": {seed: {"colour", "shape", "both"} rates}, "images": (total, 3, 32, 32), "starts": x_T,
    "labels", "predicted"}`` (Wilson 95% intervals). ``sample_kwargs`` go to :func:`sample_images`.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if len(sample_seeds) < 1:
        raise ValueError("sample_seeds must hold at least one seed")
    labels = make_shapes(n, seed=caption_seed).labels
    captions = [label.caption() for label in labels]
    images, starts, predicted, all_labels, per_seed = [], [], [], [], {}
    for s in sample_seeds:
        x, x_T = sample_images(model, captions, seed=s, return_start=True, **sample_kwargs)
        pred = [classify_image(img) for img in x]
        ok = [(p["colour"] == lab.colour, p["shape"] == lab.shape) for p, lab in zip(pred, labels)]
        per_seed[s] = {"colour": sum(c for c, _ in ok) / n, "shape": sum(h for _, h in ok) / n,
                       "both": sum(c and h for c, h in ok) / n}
        images.append(x); starts.append(x_T); predicted += pred; all_labels += labels
    total = len(predicted)
    hits = {
        "colour": sum(p["colour"] == lab.colour for p, lab in zip(predicted, all_labels)),
        "shape": sum(p["shape"] == lab.shape for p, lab in zip(predicted, all_labels)),
        "both": sum(p["colour"] == lab.colour and p["shape"] == lab.shape for p, lab in zip(predicted, all_labels)),
    }
    out = {key: {"k": k, "rate": k / total, "ci": wilson_interval(k, total)} for key, k in hits.items()}
    out.update(n=total, per_seed=per_seed, images=torch.cat(images), starts=torch.cat(starts),
               labels=all_labels, predicted=predicted, captions=captions * len(sample_seeds))
    return out
