"""Chapter 6's evaluation helpers: signal leak, its sampling-time fixes, negative prompts, rates with intervals.

Additive to :mod:`unetlab.text2img` (whose :func:`~unetlab.text2img.generate` keeps the shipped behaviour):
everything here samples a :class:`~unetlab.text2img.TextToImage` with the sampler the model itself makes
(:meth:`~unetlab.text2img.TextToImage.make_sampler`: its own noise schedule and ``prediction_type``) and
:func:`unetlab.guidance.guided_eps`, but lets the caller choose where the chain starts and how the timesteps
are spaced. Chapter 6 runs it on two models with the same network and data: ``text2img-eps`` (ε-prediction on
SD's schedule, as SD 1.x was trained) and the retrained ``text2img`` (v-prediction, zero terminal SNR, EMA).

* Signal leak (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): SD's
  schedule leaves √ᾱ_999 ≈ 0.068 of the clean image in x_999, so training never shows the model pure noise;
  sampling from x_T ~ N(0, I) hands it a noise whose random per-channel mean it reads as image content.
  :func:`start_noise` builds the starting point of each remedy that can be applied at sampling time:
  ``"noise"`` (pure N(0, I), diffusers' default), ``"mean"`` (x_T = √ᾱ_t0·mean training image + √(1−ᾱ_t0)·z,
  the forward process applied to the data mean) and ``"offset"`` (offset noise z + s·ε_channel, a training-time
  remedy, measured here at sampling time only to show that it does not help a model not trained with it).
  :data:`EPS_FIX` is the best of them on the ε model, as chapter 6 measures.
* :func:`sample_images`: one image per caption from a chosen start, spacing and guidance, with an optional
  negative caption per image (its context replaces the unconditional half of the batch, as diffusers'
  ``negative_prompt``). With the defaults it is :func:`unetlab.text2img.generate`, image for image.
* :func:`accuracy_over_seeds`: the whole caption read off every sample by the calibrated pixel ruler
  (:func:`unetlab.ruler.read_image`: colour, shape, 3×3 position, size, number of objects) over ``n`` held-out
  captions × several sampling seeds, each rate with its count and Wilson 95 % interval
  (:func:`unetlab.ruler.wilson_interval`); :func:`first_captions` re-scores a sub-run without sampling again.
* :func:`backgrounds`, :func:`background_colour`, :func:`noise_means`: what the signal-leak lesson correlates.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import torch

from .data import HELDOUT_SEED, TRAIN_SEED, make_shapes
from .guidance import check_guidance_scale, guided_eps
from .ruler import FIGURES, read_background, read_image, score_readings, wilson_interval
from .schedule import NoiseSchedule
from .text2img import TextToImage

__all__ = [
    "STARTS", "EPS_FIX", "RATES", "mean_training_image", "start_noise", "sample_images", "accuracy_over_seeds",
    "first_captions", "backgrounds", "background_colour", "noise_means",
]

#: the starting points :func:`start_noise` knows
STARTS = ("noise", "mean", "offset")
#: the best sampling-time fix for the ε model ``text2img-eps`` (chapter 6 measures it against the others):
#: start from the data mean pushed through the forward process, with trailing timesteps
EPS_FIX = {"start": "mean", "timestep_spacing": "trailing"}
#: the rates :func:`accuracy_over_seeds` reports: the ruler's figures, and "both" (colour and shape right)
RATES = tuple(FIGURES) + ("both",)


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
      the chain's first timestep, ᾱ from ``schedule`` (default SD's), ``mean_image`` (C, H, W) defaults to
      :func:`mean_training_image`). On a zero-terminal-SNR schedule at t0 = 999 this is z itself.
    * ``"offset"``: z + offset_strength · ε_c, ε_c ~ N(0, 1) one value per image and channel (offset noise,
      Guttenberg 2023).

    ``z`` is drawn first from ``generator``, so the three starts share it. Raises ``ValueError`` for an unknown
    ``start``, a shape that is not 4-d, a negative ``offset_strength`` or a ``mean_image`` of the wrong shape.
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
    start: str = "noise",
    timestep_spacing: str | None = None,
    eta: float = 0.0,
    negative_captions: Sequence[str] | None = None,
    mean_image: torch.Tensor | None = None,
    return_start: bool = False,
):
    """One image per caption, ``(B, 3, 32, 32)`` in about [-1, 1], from the chosen start and spacing.

    DDIM (``eta`` in [0, 1]) with ``model.make_sampler``: the model's own schedule and prediction type (ε or v),
    its own timestep spacing unless ``timestep_spacing`` is given ("leading" for SD's schedule, "trailing" for
    zero terminal SNR). Guided by :func:`unetlab.guidance.guided_eps` on the UNet's raw output.
    ``negative_captions`` (one per caption) replace the empty caption as the unconditional half: the guided
    prediction moves away from them (diffusers' ``negative_prompt``). With ``start="noise"`` and the model's
    spacing this is :func:`unetlab.text2img.generate` (same noise, same images). ``return_start=True`` also
    returns x_T. Raises ``ValueError`` for a negative guidance scale or a wrong number of negative captions.
    """
    scale = check_guidance_scale(guidance_scale)
    captions = list(captions)
    if negative_captions is None:
        negative_captions = [""] * len(captions)
    negative_captions = list(negative_captions)
    if len(negative_captions) != len(captions):
        raise ValueError(f"negative_captions must have one entry per caption ({len(captions)}), got {len(negative_captions)}")
    sampler = model.make_sampler(num_inference_steps, timestep_spacing=timestep_spacing, eta=eta)
    # (B, L, D) each
    context = model.encode(captions)
    uncond_context = model.encode(negative_captions)
    size = model.unet.config.sample_size
    shape = (len(captions), model.unet.config.in_channels, size, size)
    generator = torch.Generator().manual_seed(seed)
    # (B, C, H, W): the start, noised with the model's own schedule at the chain's first timestep
    x_T = start_noise(shape, generator, start, t0=int(sampler.timesteps[0]), schedule=model.schedule,
                      mean_image=mean_image)

    def model_fn(x_t, t):
        return guided_eps(model.unet, x_t, t, context, uncond_context, scale)

    images = sampler.sample(model_fn, shape, generator=generator, x_T=x_T, progress=False)
    return (images, x_T) if return_start else images


def _rates(readings: Sequence, labels: Sequence) -> dict:
    """``{figure: {"k", "n", "rate", "ci": (low, high)}}`` for :data:`RATES` (Wilson 95 % intervals)."""
    scored = score_readings(readings, labels)
    ok = dict(scored["ok"])
    # colour and shape right (the two words the earlier measurement read)
    ok["both"] = [c and s for c, s in zip(ok["colour"], ok["shape"])]
    out = {}
    for figure in RATES:
        k, n = sum(ok[figure]), len(ok[figure])
        out[figure] = {"k": k, "n": n, "rate": k / n, "ci": wilson_interval(k, n)}
    return out


def accuracy_over_seeds(
    model: TextToImage,
    n: int = 96,
    sample_seeds: Sequence[int] = (0, 1),
    *,
    caption_seed: int = HELDOUT_SEED,
    **sample_kwargs,
) -> dict:
    """Caption accuracy over ``n`` held-out captions × ``sample_seeds`` (one image per caption and seed).

    Every sample is read by :func:`unetlab.ruler.read_image` (calibrated on real held-out images). Returns
    ``{figure: {"k": successes, "n": images, "rate": k/n, "ci": (low, high)}}`` for each of :data:`RATES`
    (``colour``, ``shape``, ``position``, ``size``, ``one_object``: exactly one object, ``all_one``: all four
    right with one object, ``both``: colour and shape right; Wilson 95 % intervals), plus ``"n"`` (images),
    ``"per_seed"`` ({seed: {figure: rate}}), ``"images"`` ``(N, 3, 32, 32)``, ``"starts"`` (x_T), ``"labels"``,
    ``"readings"``, ``"captions"``, ``"sample_seeds"``; lists run over the seeds, then the captions.
    ``sample_kwargs`` go to :func:`sample_images`. Raises ``ValueError`` for ``n < 1`` or no seed.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    seeds = tuple(sample_seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, Integral) for s in seeds):
        raise ValueError(f"sample_seeds must be a non-empty sequence of ints, got {sample_seeds!r}")
    labels = make_shapes(n, seed=caption_seed).labels
    captions = [label.caption() for label in labels]
    images, starts, readings, per_seed = [], [], [], {}
    for s in seeds:
        x, x_T = sample_images(model, captions, seed=s, return_start=True, **sample_kwargs)
        seed_readings = [read_image(img) for img in x]
        per_seed[s] = {figure: r["rate"] for figure, r in _rates(seed_readings, labels).items()}
        images.append(x); starts.append(x_T); readings += seed_readings
    all_labels = list(labels) * len(seeds)
    out = _rates(readings, all_labels)
    out.update(n=len(readings), per_seed=per_seed, images=torch.cat(images), starts=torch.cat(starts),
               labels=all_labels, readings=readings, captions=captions * len(seeds), sample_seeds=seeds)
    return out


def first_captions(acc: dict, n: int) -> dict:
    """The part of an :func:`accuracy_over_seeds` result made of its first ``n`` captions of every seed.

    The same captions and starting noise as a run with ``n`` captions (``start_noise`` draws per image in
    order, so the first ``n`` images of a seed do not depend on how many follow), re-scored without sampling
    again. Same keys as :func:`accuracy_over_seeds`. ``n`` outside ``[1, captions per seed]`` raises ``ValueError``.
    """
    seeds = acc["sample_seeds"]
    per = acc["n"] // len(seeds)
    if isinstance(n, bool) or not isinstance(n, Integral) or not 1 <= n <= per:
        raise ValueError(f"n must be an int in [1, {per}], got {n!r}")
    idx = [k * per + i for k in range(len(seeds)) for i in range(n)]
    readings = [acc["readings"][i] for i in idx]
    labels = [acc["labels"][i] for i in idx]
    out = _rates(readings, labels)
    per_seed = {s: {f: r["rate"] for f, r in _rates(readings[k * n:(k + 1) * n], labels[k * n:(k + 1) * n]).items()}
                for k, s in enumerate(seeds)}
    out.update(n=len(idx), per_seed=per_seed, images=acc["images"][idx], starts=acc["starts"][idx], labels=labels,
               readings=readings, captions=[acc["captions"][i] for i in idx], sample_seeds=seeds)
    return out


def backgrounds(images: torch.Tensor) -> dict:
    """The ruler's background of each image ``(B, 3, H, W)`` in [-1, 1] (:func:`unetlab.ruler.read_background`).

    Returns ``{"colour": (B, 3)`` the mean colour of the fitted top-to-bottom gradient in [0, 1],
    ``"brightest": (B,)`` its brightest channel anywhere (every training background is ≤ 0.35),
    ``"grain": (B,)`` the RMS of the image minus the gradient outside the objects ([0, 1] units; a clean
    held-out image ≈ 0.002)``}``. Raises ``ValueError`` for anything but a ``(B, 3, H, W)`` tensor.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {getattr(images, 'shape', type(images))}")
    read = [read_background(img) for img in images]
    # the gradient is linear in y: its mean colour is the mean of its two ends
    colour = torch.tensor([[(a + b) / 2 for a, b in zip(r["top"], r["bottom"])] for r in read])
    return {"colour": colour, "brightest": torch.tensor([r["brightest"] for r in read]),
            "grain": torch.tensor([r["residual_rms"] for r in read])}


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """Mean background colour ``(B, 3)`` in [0, 1] of images ``(B, 3, H, W)`` in [-1, 1] (see :func:`backgrounds`)."""
    return backgrounds(images)["colour"]


def noise_means(x_T: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean of a starting noise ``(B, C, H, W)``: ``(B, C)``."""
    if not isinstance(x_T, torch.Tensor) or x_T.ndim != 4:
        raise ValueError(f"x_T must be (B, C, H, W), got {getattr(x_T, 'shape', type(x_T))}")
    return x_T.float().mean(dim=(2, 3))
