"""A small ControlNet for the course's text-to-image model: the recipe ``controlnet``, sampling, evaluation.

    python -m unetlab train controlnet --threads 1           # the shipped data/controlnet.safetensors
    python -m unetlab train controlnet --steps 30 --out /tmp/cn.safetensors

What is trained
    The frozen text-to-image model of chapters 5-6 (:func:`unetlab.text2img.load_text2img`: word-level
    text encoder + small :class:`unetlab.SDUNet` on 32×32 pixels) gets a :class:`unetlab.ControlNet`
    made by ``ControlNet.from_unet`` — a trainable copy of its encoder — steered by a **control image**
    computed from the data generator's shape mask (:func:`control_image`): the mask itself
    (``"mask"``) or its one-pixel outline (``"edges"``). Only the ControlNet's parameters are trained
    (:class:`ControlledTextToImage` does not even register the base model, so the optimiser, the
    checkpoint and ``state_dict()`` hold the ControlNet alone).

    Pixel space: the small model has no VAE, so the control image has the sample's own size and the
    conditioning embedding does not down-sample (``conditioning_embedding_out_channels=(16,)``, factor 1;
    SD's is ``(16, 32, 96, 256)``, factor 8, because its control images are 8× the latent).

The loss
    The base model's own diffusion loss (its prediction type and noise schedule are read from its
    checkpoint's metadata, :func:`base_schedule`; without them: ε and SD's schedule), object pixels
    weighted as in the text-to-image recipe (:func:`unetlab.text2img.object_weight`), and half the
    captions replaced by ``""`` — the ControlNet paper's 50 % empty prompts, which force the control,
    not the text, to carry the geometry.

At initialisation the ControlNet changes nothing
    Every zero convolution (and the conditioning embedding's ``conv_out``) starts at 0, so the residuals
    are exact zeros and ``skip + 0`` is ``skip`` bit for bit: the controlled model's output equals the base
    model's exactly (``tests/test_controlnet_train.py`` checks it). The zero convolutions still get
    gradients (their input is not zero), so training moves them first.

Evaluation (:func:`control_iou`, :func:`text_vs_control`)
    :func:`control_iou`: for ``n`` held-out controls (images ``0 … n-1`` of :data:`unetlab.data.HELDOUT_SEED`),
    sample one image with the control and one with the same caption, seed and sampler but without it; read
    the object off the pixels (:func:`unetlab.text2img.foreground_mask`: the largest bright region unlike the
    background) and compute its IoU with the control's mask. :mod:`unetlab.ruler` reads the object's
    colour, shape, cell and size but exposes no object mask, so the pixels come from ``foreground_mask``;
    its ceiling is reported too (``"reference"``: the same reading on the held-out images themselves).
    Reported: the two means with 95 % intervals and the paired difference with its 95 % interval
    (mean ± 1.96 · sd / √n, clipped to the values' range).

    :func:`text_vs_control`: the caption of held-out image ``i`` with the control of another held-out image
    ``j`` whose 3×3 cell differs. The ruler reads where the object went (cell), its shape and size: does each
    follow the control or the caption? (The mask carries no colour: the colour can only come from the caption.)
"""
from __future__ import annotations

import math
from numbers import Integral
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import HELDOUT_SEED, TRAIN_SEED, make_shapes
from .schedule import NoiseSchedule

__all__ = [
    "CONTROL_KINDS", "CONTROL_CAPTION_DROPOUT", "CONTROLNET_CONFIG", "control_image", "base_schedule",
    "ControlledTextToImage", "build_controlled", "controlnet_batch", "controlnet_loss", "controlnet_recipe",
    "generate_controlled", "mean_interval", "object_iou", "control_iou", "CONFLICT_ATTRIBUTES", "text_vs_control", "load_controlnet_checkpoint",
]

#: what the control image shows: the shape's filled mask, or its outline (edge map)
CONTROL_KINDS = ("mask", "edges")
#: fraction of training captions replaced by "" (the ControlNet paper replaces 50 % of the prompts)
CONTROL_CAPTION_DROPOUT = 0.5
#: the recipe's default config: which base checkpoint, which control, the conditioning embedding's widths
CONTROLNET_CONFIG = {"base": "text2img", "control": "mask", "conditioning_embedding_out_channels": [16]}


# --- the control image ----------------------------------------------------------------------------


def control_image(masks: torch.Tensor, kind: str = "mask") -> torch.Tensor:
    """The control image ``(B, 1, H, W)`` in {0, 1} from shape masks ``(B, 1, H, W)`` (coverage in [0, 1]).

    ``"mask"``: coverage > 0.5. ``"edges"``: the mask minus its erosion by a 3×3 square — the pixels of
    the shape that touch the background, a one-pixel outline (an edge map, as Canny gives SD's ControlNet).
    Raises ``ValueError`` for another kind or shape.
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"kind must be one of {CONTROL_KINDS}, got {kind!r}")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be a (B, 1, H, W) tensor, got {getattr(masks, 'shape', type(masks).__name__)}")
    # (B, 1, H, W) in {0, 1}
    inside = (masks > 0.5).float()
    if kind == "mask":
        return inside
    # erosion = 1 - dilation of the outside; padding with 1 (outside) so the border counts as background
    outside = F.pad(1 - inside, (1, 1, 1, 1), value=1.0)
    eroded = 1 - F.max_pool2d(outside, kernel_size=3, stride=1)
    return inside - eroded


# --- the base model's schedule ------------------------------------------------------------------------


def base_schedule(base: str | Path = "text2img") -> NoiseSchedule:
    """The noise schedule and prediction type the base checkpoint was trained with.

    Read from the checkpoint's metadata (``"schedule"``: a diffusers-style scheduler config, which may
    say ``prediction_type="v_prediction"`` and ``rescale_betas_zero_snr=True``); a key it lacks takes
    diffusers' default (so an old checkpoint means ε and SD's scaled-linear betas). A missing file
    gives SD's schedule, ε.
    """
    from .checkpoint_io import DATA_DIR, _resolve, read_metadata

    try:
        _, path, _ = _resolve(base, DATA_DIR)
        metadata = read_metadata(path)
    except (FileNotFoundError, ValueError):
        return NoiseSchedule()
    return NoiseSchedule.from_config(metadata.get("schedule") or {})


def _timestep_spacing(schedule: NoiseSchedule) -> str:
    # zero terminal SNR needs the last training timestep in the chain (Lin et al. 2024: "trailing")
    return "trailing" if schedule.rescale_betas_zero_snr else "leading"


# --- the model: frozen base + trainable ControlNet ------------------------------------------------------


class ControlledTextToImage(nn.Module):
    """The frozen text-to-image model steered by a trainable :class:`unetlab.ControlNet`.

    ``model(sample, timestep, captions=None, controls=..., context=None, conditioning_scale=1.0,
    guess_mode=False)`` -> the base UNet's output ``(B, 3, H, W)`` (ε or v, as the base predicts),
    with the ControlNet's 1 + 3·levels skip residuals and mid residual added (:func:`unetlab.unet_with_controlnet`).

    * ``sample`` ``(B, 3, 32, 32)``; ``captions`` a list of B strings (or ``context`` ``(B, L, 64)``);
      ``controls`` ``(B or 1, 1, 32, 32)`` from :func:`control_image`.
    * Only ``self.controlnet`` is a registered submodule: ``parameters()``, ``state_dict()`` and the
      checkpoint hold the ControlNet alone. The base (``self.base``) is frozen (``requires_grad=False``),
      always in eval mode, and follows ``.to(device / dtype)``.
    """

    def __init__(self, base: nn.Module, controlnet: nn.Module, schedule: NoiseSchedule | None = None):
        super().__init__()
        for p in base.parameters():
            p.requires_grad_(False)
        # kept out of the module tree on purpose: not trained, not saved (see the class docstring)
        object.__setattr__(self, "base", base.eval())
        self.controlnet = controlnet
        self.schedule = schedule or NoiseSchedule()

    def _apply(self, fn, *args, **kwargs):
        # .to(), .float(), .cuda() … move the frozen base too
        self.base._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()
        return self

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> ``context`` ``(B, L, 64)`` with the frozen text encoder (no gradient)."""
        with torch.no_grad():
            return self.base.encode(list(captions))

    def forward(self, sample: torch.Tensor, timestep, captions=None, controls: torch.Tensor | None = None,
                context: torch.Tensor | None = None, conditioning_scale: float = 1.0,
                guess_mode: bool = False) -> torch.Tensor:
        from .sd.controlnet import unet_with_controlnet

        if (captions is None) == (context is None):
            raise ValueError("give exactly one of captions= (list of str) or context= (B, L, D)")
        if controls is None:
            raise ValueError("controls= is required: a (B, 1, H, W) control image (see control_image)")
        if context is None:
            if isinstance(captions, str):
                captions = [captions]
            context = self.encode(captions)
        # ControlNet residuals -> base UNet: (B, 3, H, W)
        return unet_with_controlnet(self.base.unet, self.controlnet, sample, timestep, context, controls,
                                    conditioning_scale=conditioning_scale, guess_mode=guess_mode)


def _base_sha256(base: str) -> str | None:
    """The sha256 the manifest (``data/checkpoints.json``) records for the base checkpoint, if any."""
    from .checkpoint_io import read_manifest

    entry = read_manifest().get(str(base))
    return entry["sha256"] if entry else None


def _check_config(config: dict) -> dict:
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict like {CONTROLNET_CONFIG}, got {type(config).__name__}")
    # base_sha256: written by the recipe, so that a ControlNet is never loaded onto another base model
    unknown = set(config) - set(CONTROLNET_CONFIG) - {"base_sha256"}
    if unknown:
        raise ValueError(f"unknown controlnet config keys {sorted(unknown)}; expected {sorted(CONTROLNET_CONFIG)}")
    config = {**CONTROLNET_CONFIG, **config}
    if config["control"] not in CONTROL_KINDS:
        raise ValueError(f"config['control'] must be one of {CONTROL_KINDS}, got {config['control']!r}")
    widths = config["conditioning_embedding_out_channels"]
    if len(widths) != 1:
        raise ValueError(
            f"conditioning_embedding_out_channels must have one width here (pixel space: the control image has the "
            f"sample's size, no down-sampling), got {widths}"
        )
    return config


def build_controlled(config: dict | None = None, base: nn.Module | None = None) -> ControlledTextToImage:
    """Frozen base (``config["base"]``, a checkpoint name, loaded sha256-checked) + ``ControlNet.from_unet``.

    ``base``: an already loaded :class:`unetlab.TextToImage` to use instead of loading the checkpoint
    (the notebook and the tests pass one). The ControlNet takes a 1-channel control image.
    """
    from .sd.controlnet import ControlNet
    from .text2img import load_text2img

    config = _check_config(dict(config or {}))
    if base is None:
        wanted, have = config.get("base_sha256"), _base_sha256(config["base"])
        if wanted is not None and have is not None and wanted != have:
            raise ValueError(
                f"this ControlNet was trained on the base checkpoint {config['base']!r} with sha256 {wanted}, but "
                f"data/ now holds one with sha256 {have}: a ControlNet only fits the UNet it was copied from. "
                f"Retrain it: python -m unetlab train controlnet"
            )
        base = load_text2img(config["base"])
    controlnet = ControlNet.from_unet(base.unet, conditioning_channels=1,
                                      conditioning_embedding_out_channels=tuple(config["conditioning_embedding_out_channels"]))
    model = ControlledTextToImage(base, controlnet, base_schedule(config["base"]))
    # what the control image shows, read by control_iou
    model.control_kind = config["control"]
    return model


# --- training --------------------------------------------------------------------------------------------


def controlnet_batch(step: int, batch_size: int, kind: str = "mask") -> dict:
    """Batch number ``step`` of the training stream: images, captions, masks and the control images."""
    b = make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size)
    return {"x0": b.images, "captions": b.captions, "masks": b.masks, "controls": control_image(b.masks, kind)}


def controlnet_loss(model: ControlledTextToImage, batch: dict, schedule: NoiseSchedule,
                    generator: torch.Generator) -> torch.Tensor:
    """The base model's diffusion loss through the ControlNet (see the module docstring).

    ``schedule`` (the recipe's) is ignored in favour of ``model.schedule``, the base checkpoint's: a
    ControlNet must be trained on the target its base predicts (ε or v).
    """
    from .text2img import object_weight

    captions = list(batch["captions"])
    drop = torch.rand(len(captions), generator=generator) < CONTROL_CAPTION_DROPOUT
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    return model.schedule.training_loss(model, batch["x0"], generator=generator, weight=object_weight(batch["masks"]),
                                        captions=captions, controls=batch["controls"])


def controlnet_recipe(config: dict | None = None):
    """The recipe ``controlnet`` (registered lazily by :mod:`unetlab.recipes`)."""
    from .recipes import Recipe

    config = _check_config(dict(config or CONTROLNET_CONFIG))
    config.setdefault("base_sha256", _base_sha256(config["base"]))
    kind = config["control"]
    return Recipe(
        name="controlnet",
        arch="ControlledTextToImage",
        build_model=lambda cfg: build_controlled(cfg),
        config=config,
        make_batch=lambda step, batch_size: controlnet_batch(step, batch_size, kind),
        loss_fn=controlnet_loss,
        # sized for the budget (<= 15 minutes on a 2-core CPU): the shipped run took 550 s of CPU time
        steps=1200,
        batch_size=32,
        lr=1e-3,
        seed=0,
        warmup_steps=30,
        schedule=base_schedule(config["base"]),
        description="chapter 7: a ControlNet (trainable copy of the text2img UNet's encoder, zero convolutions) "
                    f"steering the frozen text2img model with the shape's {kind}; 50 % empty captions",
    )


def load_controlnet_checkpoint(name: str | Path = "controlnet", base: nn.Module | None = None,
                               device: str | torch.device = "cpu", check_sha: bool = True) -> ControlledTextToImage:
    """A ControlNet checkpoint written by ``python -m unetlab train controlnet``, on its frozen base, eval mode.

    ``name``: a manifest name or a ``.safetensors`` path. The base is the checkpoint named in its config,
    refused (``ValueError``) when its sha256 differs from the one the ControlNet was trained on; ``base=``
    (an already loaded :class:`unetlab.TextToImage`) is used as given, without that check.
    """
    from .checkpoint_io import load_model

    return load_model(name, lambda metadata: build_controlled(dict(metadata["config"]), base=base),
                      arch="ControlledTextToImage", device=device, check_sha=check_sha).model


# --- sampling and evaluation ---------------------------------------------------------------------------


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@torch.no_grad()
def generate_controlled(
    model: ControlledTextToImage,
    captions: Sequence[str],
    controls: torch.Tensor | None,
    *,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    seed: int = 0,
    conditioning_scale: float = 1.0,
    guess_mode: bool = False,
) -> torch.Tensor:
    """Sample ``(B, 3, 32, 32)`` for ``captions`` with the control images ``controls`` ``(B, 1, 32, 32)``.

    ``controls=None`` samples the base model alone (same noise, same sampler): the "without control"
    arm of :func:`control_iou`. DDIM, η = 0, the base's schedule and prediction type
    (:func:`base_schedule`), classifier-free guidance on the text with the control in both halves (as
    diffusers' ControlNet pipeline does unless ``guess_mode``, where the unconditional half gets no
    control).
    """
    from .guidance import guided_eps
    from .samplers import DDIMSampler

    captions = list(captions)
    B = len(captions)
    if controls is not None and (not isinstance(controls, torch.Tensor) or controls.shape[0] not in (1, B)):
        raise ValueError(f"controls must be a (B, 1, H, W) tensor with B = {B} (one per caption), "
                         f"got {getattr(controls, 'shape', type(controls).__name__)}")
    schedule = model.schedule
    sampler = DDIMSampler(schedule, num_inference_steps=_check_positive("num_inference_steps", num_inference_steps),
                          timestep_spacing=_timestep_spacing(schedule))
    context = model.encode(captions)
    uncond = model.encode([""] * B)
    unet = model.base.unet

    def steered(x, t, ctx):
        if controls is None:
            return unet(x, t, ctx)
        n = x.shape[0]
        cond = controls.expand(B, *controls.shape[1:]) if controls.shape[0] == 1 else controls
        if n == 2 * B and guess_mode:
            # guess mode: control only on the text half (diffusers' StableDiffusionControlNetPipeline)
            down, mid = model.controlnet(x[B:], t[B:], ctx[B:], cond, conditioning_scale=conditioning_scale,
                                         guess_mode=True)
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
            return unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        cond = cond.repeat(n // B, 1, 1, 1)
        down, mid = model.controlnet(x, t, ctx, cond, conditioning_scale=conditioning_scale, guess_mode=guess_mode)
        return unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def model_fn(x_t, t):
        return guided_eps(steered, x_t, t, context, uncond, guidance_scale)

    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(model_fn, (B, unet.config.in_channels, size, size), generator=generator, progress=False)


def mean_interval(values: torch.Tensor, low: float = 0.0, high: float = 1.0) -> tuple[float, float, float]:
    """Mean of ``values`` (any shape, ≥ 1 element) and its normal-approximation 95 % interval.

    Returns ``(mean, lo, hi)`` with ``lo, hi = mean ∓ 1.96 · sd / √n`` clipped to ``[low, high]`` (the range
    the values can take: [0, 1] for IoUs); ``lo`` and ``hi`` are NaN for a single value.
    """
    if not isinstance(values, torch.Tensor) or values.numel() == 0:
        raise ValueError(f"values must be a non-empty tensor, got {values!r}")
    values = values.detach().float().flatten()
    n = values.numel()
    mean = float(values.mean())
    if n < 2:
        # one value: no spread to estimate
        return mean, float("nan"), float("nan")
    half = 1.96 * float(values.std(unbiased=True)) / math.sqrt(n)
    return mean, max(low, mean - half), min(high, mean + half)


def object_iou(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU ``(B,)`` in [0, 1] between the object read off each image and a target mask.

    ``images`` ``(B, 3, H, W)`` in [-1, 1]; ``masks`` ``(B, H, W)`` boolean (or {0, 1}). The object is
    :func:`unetlab.text2img.foreground_mask` (the largest connected region of bright pixels unlike the
    image's median colour); an image with no object scores 0 against a non-empty mask.
    Raises ``ValueError`` when the batch sizes or sides differ.
    """
    from .text2img import foreground_mask, mask_iou

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"masks must be ({images.shape[0]}, {images.shape[2]}, {images.shape[3]}) to match the images, "
                         f"got {getattr(masks, 'shape', type(masks).__name__)}")
    # (B, H, W) the objects read off the pixels
    read = torch.stack([foreground_mask(img) for img in images])
    return mask_iou(read, masks.bool())


def _sample_in_chunks(model, captions, controls, batch_size: int, sample_seed: int, **kw) -> torch.Tensor:
    """:func:`generate_controlled` over chunks of ``batch_size``; chunk starting at ``k`` uses seed ``sample_seed + k``."""
    images = []
    for start in range(0, len(captions), batch_size):
        stop = min(len(captions), start + batch_size)
        images.append(generate_controlled(model, captions[start:stop],
                                          None if controls is None else controls[start:stop],
                                          seed=sample_seed + start, **kw))
    return torch.cat(images)


def control_iou(
    model: ControlledTextToImage,
    n: int = 96,
    *,
    kind: str | None = None,
    seed: int = HELDOUT_SEED,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    sample_seed: int = 0,
    batch_size: int = 48,
    conditioning_scale: float = 1.0,
    guess_mode: bool = False,
    baseline: bool = True,
) -> dict:
    """IoU between the sampled object and the control's mask, with and without the control (see the module docstring).

    ``kind``: the control ("mask" / "edges"; default: the one the model's config was trained with, else
    "mask"). ``conditioning_scale`` and ``guess_mode`` go to :func:`generate_controlled` for the controlled
    arm; ``baseline=False`` skips the arm without control (its entries are then ``None``). Returns
    ``{"n", "kind", "with": (mean, lo, hi), "without": (mean, lo, hi), "difference": (mean, lo, hi) (with −
    without, paired), "reference": (mean, lo, hi) (the held-out images themselves: the reading's ceiling),
    "iou_with" (n,), "iou_without" (n,), "iou_reference" (n,), "images_with", "images_without"
    (n, 3, 32, 32), "masks" (n, 32, 32) bool, "controls" (n, 1, 32, 32), "captions", "labels"}``; IoUs in
    [0, 1], intervals: mean ± 1.96 · sd / √n.
    """
    n = _check_positive("n", n)
    batch_size = _check_positive("batch_size", batch_size)
    kind = kind or getattr(model, "control_kind", "mask")
    batch = make_shapes(n, seed=seed)
    controls = control_image(batch.masks, kind)
    # (n, H, W): the target the object should fill
    masks = batch.masks[:, 0] > 0.5
    captions = list(batch.captions)
    kw = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    images_with = _sample_in_chunks(model, captions, controls, batch_size, sample_seed,
                                    conditioning_scale=conditioning_scale, guess_mode=guess_mode, **kw)
    iou_with = object_iou(images_with, masks)
    images_without = iou_without = None
    if baseline:
        images_without = _sample_in_chunks(model, captions, None, batch_size, sample_seed, **kw)
        iou_without = object_iou(images_without, masks)
    iou_reference = object_iou(batch.images, masks)
    return {
        "n": n, "kind": kind,
        "with": mean_interval(iou_with),
        "without": mean_interval(iou_without) if baseline else None,
        "difference": mean_interval(iou_with - iou_without, -1.0, 1.0) if baseline else None,
        "reference": mean_interval(iou_reference),
        "iou_with": iou_with, "iou_without": iou_without, "iou_reference": iou_reference,
        "images_with": images_with, "images_without": images_without, "masks": masks, "controls": controls,
        "captions": captions, "labels": list(batch.labels),
    }


#: what :func:`text_vs_control` asks of each sample: the attributes a mask carries (and the colour, which it does not)
CONFLICT_ATTRIBUTES = ("position", "shape", "size", "colour")


def _partners(labels) -> list[int]:
    """For each label ``i`` the nearest later index ``j`` (cyclically) whose 3×3 cell differs."""
    n = len(labels)
    out = []
    for i in range(n):
        j = next((i + k) % n for k in range(1, n) if labels[(i + k) % n].position != labels[i].position)
        out.append(j)
    return out


def text_vs_control(
    model: ControlledTextToImage,
    n: int = 48,
    *,
    kind: str | None = None,
    seed: int = HELDOUT_SEED,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    sample_seed: int = 0,
    batch_size: int = 48,
    conditioning_scale: float = 1.0,
    guess_mode: bool = False,
) -> dict:
    """When the caption and the control disagree, which one does the sample follow?

    Held-out images ``0 … n-1`` of stream ``seed``; sample ``i`` gets the caption of image ``i`` and the
    control of image ``j`` = the next held-out image (cyclically) in another 3×3 cell, so the position
    always disagrees; shape and size disagree where the two images' labels do. Each sample is read with
    :func:`unetlab.ruler.read_image`. For each attribute of :data:`CONFLICT_ATTRIBUTES`, over the pairs
    where caption and control differ in it, the share of samples whose reading equals the control's value,
    the caption's, or neither — each ``{"rate", "k", "n", "low", "high"}`` with a 95 % Wilson interval. A
    mask has no colour: for ``"colour"`` the control's value is the colour of image ``j`` (it should not be
    followed). Also the IoU of each sample's object with the control's mask (:func:`object_iou`).

    Returns ``{"n", "pairs" [(i, j)], "follows": {attribute: {"control", "caption", "neither"}},
    "iou_control": (mean, lo, hi), "images" (n, 3, 32, 32), "controls" (n, 1, 32, 32), "captions",
    "caption_labels", "control_labels", "readings"}``. Needs ``n >= 2`` and two cells among the images.
    """
    from .ruler import read_image, wilson_interval

    n = _check_positive("n", n)
    if n < 2:
        raise ValueError(f"n must be at least 2 (each caption needs another image's control), got {n}")
    batch_size = _check_positive("batch_size", batch_size)
    kind = kind or getattr(model, "control_kind", "mask")
    batch = make_shapes(n, seed=seed)
    labels = list(batch.labels)
    if len({lab.position for lab in labels}) < 2:
        raise ValueError(f"the first {n} held-out images all lie in one cell: take a larger n")
    partners = _partners(labels)
    # (n, 1, H, W): image j's control for caption i
    controls = control_image(batch.masks[partners], kind)
    captions = list(batch.captions)
    images = _sample_in_chunks(model, captions, controls, batch_size, sample_seed, guidance_scale=guidance_scale,
                               num_inference_steps=num_inference_steps, conditioning_scale=conditioning_scale,
                               guess_mode=guess_mode)
    readings = [read_image(img) for img in images]
    control_labels = [labels[j] for j in partners]
    follows = {}
    for attr in CONFLICT_ATTRIBUTES:
        counts = {"control": 0, "caption": 0, "neither": 0}
        total = 0
        for r, cap, ctl in zip(readings, labels, control_labels):
            want_caption, want_control = getattr(cap, attr), getattr(ctl, attr)
            if want_caption == want_control:
                continue
            total += 1
            got = getattr(r, attr)
            counts["control" if got == want_control else "caption" if got == want_caption else "neither"] += 1
        follows[attr] = {}
        for who, k in counts.items():
            low, high = wilson_interval(k, total) if total else (float("nan"), float("nan"))
            follows[attr][who] = {"rate": k / total if total else float("nan"), "k": k, "n": total,
                                  "low": low, "high": high}
    iou = object_iou(images, batch.masks[partners][:, 0] > 0.5)
    return {
        "n": n, "kind": kind, "pairs": list(zip(range(n), partners)), "follows": follows,
        "iou_control": mean_interval(iou), "iou": iou, "images": images, "controls": controls, "captions": captions,
        "caption_labels": labels, "control_labels": control_labels, "readings": readings,
    }
