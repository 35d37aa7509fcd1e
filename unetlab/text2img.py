"""The course's own small text-to-image model: tiny text encoder + ``SDUNet``, trained here in minutes.

What it is
    ``TextToImage`` = :class:`unetlab.text.WordTokenizer` + :class:`unetlab.text.TextEncoder` +
    :class:`unetlab.sd.unet.SDUNet` with the small config :data:`TEXT2IMG_UNET`. It works in pixel space
    (``sample`` = a 3×32×32 image in [-1, 1], no VAE) on the captions of :mod:`unetlab.data`
    ("a small red circle at the top left"). The text encoder is trained jointly with the UNet:
    with 21 words there is nothing for a big pre-trained encoder to add, and it stays offline. The
    shipped config uses it without transformer layers (word + position embedding + LayerNorm), so
    that each position of ``context`` holds one word and its attention map can be read per word
    (see :data:`TEXT_ENCODER_CONFIG`).

Training (``python -m unetlab train text2img``)
    The recipe ``"text2img"`` (declared in :mod:`unetlab.recipes` from this module's pieces) runs the usual
    noise-prediction loss; **caption dropout** replaces a fraction :data:`CAPTION_DROPOUT` of the
    captions by the empty caption ``""``, so the same network also learns the unconditional
    prediction that classifier-free guidance needs. The noise loss is **weighted on the object**
    (:func:`object_weight`, which says why). A **grounding loss** (:func:`grounding_loss`,
    TokenCompose's token loss) pulls the cross-attention of the colour and shape words onto the
    shape's mask: without it, a run of this size spreads cross-attention almost evenly over the 12
    positions (the averaged values already carry the whole caption) and no word's map localises
    (measured: IoU 0.09 on the training stream).

Sampling with classifier-free guidance
    ``eps = eps_uncond + s · (eps_text − eps_uncond)``: the batch is doubled (``[empty; text]``), the
    UNet runs once, the output is split in two. ``s = 0`` is unconditional, ``s = 1`` the text-conditional
    model alone (no doubling needed), ``s > 1`` pushes further along the text direction.
    ``s < 0`` raises ``ValueError``. See :func:`guided_eps`, :func:`generate`.

Evaluation (chapter 5 and 6 report these numbers; ``tests/test_text2img.py`` checks them)
    * :func:`classify_image` — a measurement on the pixels, no learned classifier: foreground =
      pixels whose brightest channel exceeds :data:`FOREGROUND_THRESHOLD` (every shape colour is
      bright, the background is dark); colour = nearest named colour to their mean; shape from the
      foreground's fill of its bounding box and the height of its centroid (see the function).
    * :func:`caption_accuracy` — sample images for held-out captions, classify them, compare.
    * :func:`attention_iou` — noise held-out images, run the UNet on their captions while
      :func:`unetlab.capture.capture_attention` records the cross-attention, average the map of the
      shape word over layers, heads and timesteps, threshold it, IoU with the true mask.
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Integral
from typing import Sequence

import torch
import torch.nn as nn

from .configs import UNetConfig
from .data import COLOURS, HELDOUT_SEED, SHAPES, TRAIN_SEED, make_shapes
from .guidance import check_guidance_scale, guided_eps  # re-exported: they lived here before unetlab.guidance
from .schedule import NoiseSchedule
from .sd.unet import SDUNet
from .text import TextEncoder, WordTokenizer

__all__ = [
    "TEXT2IMG_UNET", "TEXT_ENCODER_CONFIG", "CAPTION_DROPOUT", "TextToImage", "build_text2img",
    "text2img_batch", "text2img_loss", "GROUNDING_WEIGHT", "grounding_loss", "OBJECT_WEIGHT", "object_weight", "cross_attention_layers", "load_text2img", "check_guidance_scale", "guided_eps", "generate",
    "FOREGROUND_THRESHOLD", "BACKGROUND_DISTANCE", "foreground_mask", "classify_image", "caption_accuracy", "IOU_TIMESTEPS", "threshold_map", "mask_iou",
    "shape_word_maps", "attention_iou",
]

#: the denoiser: SD 1.5's layout scaled down to 32×32 pixels. Three levels (32, 16, 8 pixels) of
#: 16, 32, 64 channels; no attention at 32×32 (1024 tokens: the costliest place for self-attention),
#: attention at 16×16 and 8×8 and in the mid block. (SD 1.5 leaves its *lowest* level without
#: attention; here the highest is left out, because it is the one a CPU pays most for.)
TEXT2IMG_UNET = UNetConfig(
    name="text2img",
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    num_attention_heads=4,
    cross_attention_dim=64,
    norm_num_groups=8,
)

#: the text encoder: 64-wide (= the UNet's cross_attention_dim), 12 positions, and *no* transformer
#: layers (depth 0: word embedding + position embedding + LayerNorm). Why: chapter 5 reads the
#: cross-attention map of one word ("circle"); that map means "where the model looks for *circle*"
#: only if position 3 of ``context`` holds the word circle. Transformer layers mix every word into
#: every position (a first version with 2 layers trained to near-uniform attention over the 12
#: positions, IoU 0.02), and the captions' words are independent attributes that need no mixing.
#: ``TextEncoder(depth=2)`` gives the transformer version.
TEXT_ENCODER_CONFIG = {"max_length": 12, "dim": 64, "depth": 0, "heads": 4}

#: fraction of training captions replaced by "" (SD used 10 %)
CAPTION_DROPOUT = 0.1


def _unet_config_dict(config: UNetConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


class TextToImage(nn.Module):
    """Text encoder + SDUNet: ``model(sample, timestep, captions)`` -> predicted noise."""

    def __init__(self, unet_config: UNetConfig | dict = TEXT2IMG_UNET, text_config: dict | None = None):
        super().__init__()
        if isinstance(unet_config, dict):
            unet_config = UNetConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in unet_config.items()})
        text_config = dict(TEXT_ENCODER_CONFIG if text_config is None else text_config)
        if text_config.get("dim") != unet_config.cross_attention_dim:
            raise ValueError(
                f"the text encoder's dim ({text_config.get('dim')}) must equal the UNet's cross_attention_dim "
                f"({unet_config.cross_attention_dim}): the UNet's cross-attention reads the encoder's vectors"
            )
        self.tokenizer = WordTokenizer(max_length=text_config["max_length"])
        self.text_encoder = TextEncoder(self.tokenizer.vocab_size, **text_config)
        self.unet = SDUNet(unet_config)
        self.text_config = text_config

    @property
    def config(self) -> dict:
        """JSON-able description, enough to rebuild the model (stored in the checkpoint)."""
        return {"unet": _unet_config_dict(self.unet.config), "text": dict(self.text_config)}

    def encode(self, captions: str | Sequence[str], on_unknown: str = "unk") -> torch.Tensor:
        """Captions -> ``context`` ``(B, max_length, dim)`` (``""`` is the unconditional caption)."""
        ids = self.tokenizer(captions, on_unknown=on_unknown).to(self.text_encoder.token_embedding.weight.device)
        # (B, L) -> (B, L, D)
        return self.text_encoder(ids)

    def forward(self, sample: torch.Tensor, timestep, captions=None, context: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``(B, 3, H, W)``; give ``captions`` (list of B str) or a ready ``context``."""
        if (captions is None) == (context is None):
            raise ValueError("give exactly one of captions= (list of str) or context= (B, L, D)")
        if context is None:
            if isinstance(captions, str):
                captions = [captions]
            if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
                raise ValueError("sample must be a (B, 3, H, W) tensor")
            if len(captions) != sample.shape[0]:
                raise ValueError(f"got {len(captions)} captions for a batch of {sample.shape[0]} images")
            # (B, L, D)
            context = self.encode(captions)
        # (B, 3, H, W)
        return self.unet(sample, timestep, context)


def build_text2img(config: dict | None = None) -> TextToImage:
    """The model from a config dict ``{"unet": {...UNetConfig fields}, "text": {...}}`` (None: defaults)."""
    if config is None:
        return TextToImage()
    if not isinstance(config, dict) or set(config) != {"unet", "text"}:
        raise ValueError("config must be a dict with keys 'unet' and 'text' (see TextToImage.config)")
    return TextToImage(config["unet"], config["text"])


# --- training --------------------------------------------------------------------------------------------


#: weight of the grounding loss (see :func:`grounding_loss`) next to the noise-prediction loss
GROUNDING_WEIGHT = 0.1

#: extra weight of the object's pixels in the noise-prediction loss (see :func:`object_weight`)
OBJECT_WEIGHT = 8.0


def object_weight(masks: torch.Tensor, extra: float | None = None) -> torch.Tensor:
    """Per-pixel loss weight ``1 + extra · dilate(mask)``: ``(B, 1, H, W)`` from shape masks ``(B, 1, H, W)``.

    Why: the four shapes differ only along a few dozen edge pixels of a 32×32×3 image, so in a plain
    MSE the error a wrong shape makes is about 1 % of the loss, and a short run learns colour and place
    but draws every shape as the same blob (measured 2026-11-27: with a plain MSE even 1800 steps × 32
    reached shape accuracy 0.23 on 96 held-out captions, guessing 0.25; with the weight, 1700 steps:
    0.71). Weighting the shape and a one-pixel ring around it (3×3 max pooling of the mask) by
    ``1 + extra`` makes that error count. ``extra`` defaults to :data:`OBJECT_WEIGHT`.
    """
    extra = OBJECT_WEIGHT if extra is None else float(extra)
    # (B, 1, H, W): the mask grown by one pixel, so the edges on both sides count
    ring = torch.nn.functional.max_pool2d(masks, kernel_size=3, stride=1, padding=1)
    return 1.0 + extra * ring


def text2img_batch(step: int, batch_size: int) -> dict:
    """Batch number ``step`` of the training stream: images (B, 3, 32, 32), captions, shape masks, object words."""
    b = make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size)
    return {"x0": b.images, "captions": b.captions, "masks": b.masks,
            "objects": [(label.colour, label.shape) for label in b.labels]}


def cross_attention_layers(unet: nn.Module) -> list[nn.Module]:
    """The cross-attention modules (``…attn2``) of a UNet, in model order."""
    from .attention import Attention

    return [m for name, m in unet.named_modules() if name.endswith("attn2") and isinstance(m, Attention)]


def grounding_loss(probs: Sequence[torch.Tensor], tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """How much of an object word's cross-attention falls *outside* the object, squared, averaged.

    ``probs``: one ``(B, heads, N, L)`` tensor per cross-attention layer (``N = h·w`` pixels, ``L``
    tokens); ``tokens``: ``(B, K)`` positions of the object's words (its colour and its shape);
    ``masks``: ``(B, 1, H, W)`` shape coverage in [0, 1]. Per layer, the mask is average-pooled to the
    layer's grid; for each word, ``inside = Σ_pixels attn · mask / Σ_pixels attn`` and the loss is
    ``(1 − inside)²`` — the token loss of TokenCompose (Wang et al., CVPR 2024), which grounds the
    words of a caption in segmentation masks during training.
    """
    losses = []
    for p in probs:
        B, heads, N, _ = p.shape
        side = math.isqrt(N)
        # (B, N): fraction of each grid cell the shape covers
        cover = torch.nn.functional.adaptive_avg_pool2d(masks, (side, N // side)).flatten(1)
        # (B, heads, N, K): attention every pixel pays to each object word
        idx = tokens[:, None, None, :].expand(B, heads, N, tokens.shape[1])
        attn = p.gather(-1, idx)
        # (B, heads, K): share of the word's attention that lands on the shape
        inside = (attn * cover[:, None, :, None]).sum(dim=2) / attn.sum(dim=2).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2).mean())
    return torch.stack(losses).mean()


def text2img_loss(model: TextToImage, batch: dict, schedule: NoiseSchedule, generator: torch.Generator) -> torch.Tensor:
    """Noise-prediction MSE (weighted by :func:`object_weight`) with caption dropout, plus
    :data:`GROUNDING_WEIGHT` × :func:`grounding_loss`.

    Caption dropout: a random :data:`CAPTION_DROPOUT` of the captions become ``""`` (no grounding
    loss for those: they have no words). The grounding loss reads the cross-attention probabilities
    of the same forward pass through ``Attention.register_probs_hook``.
    """
    captions = list(batch["captions"])
    drop = torch.rand(len(captions), generator=generator) < CAPTION_DROPOUT
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    keep = [i for i, d in enumerate(drop.tolist()) if not d]
    probs: list[torch.Tensor] = []
    use_grounding = GROUNDING_WEIGHT > 0 and keep and "masks" in batch
    weight = object_weight(batch["masks"]) if "masks" in batch else None
    handles = []
    if use_grounding:
        handles = [m.register_probs_hook(lambda module, p: probs.append(p[keep]))
                   for m in cross_attention_layers(model.unet)]
    try:
        loss = schedule.training_loss(model, batch["x0"], generator=generator, weight=weight, captions=captions)
    finally:
        for h in handles:
            h.remove()
    if not use_grounding:
        return loss
    tok = model.tokenizer
    # (B_kept, 2): positions of the colour word and the shape word
    tokens = torch.tensor([[tok.token_index(captions[i], w) for w in batch["objects"][i]] for i in keep],
                          device=batch["x0"].device)
    return loss + GROUNDING_WEIGHT * grounding_loss(probs, tokens, batch["masks"][keep])


# --- loading --------------------------------------------------------------------------------------------


def load_text2img(name: str = "text2img", device: str | torch.device = "cpu", check_sha: bool = True) -> TextToImage:
    """The shipped checkpoint ``data/text2img.safetensors`` (sha256-checked), in eval mode.

    A missing file raises an error naming the command that regenerates it (``unetlab.checkpoints``).
    """
    from .checkpoint_io import load_model

    # built from the config stored in the file; the recipe registry is not needed (and imports this module)
    return load_model(name, lambda metadata: build_text2img(dict(metadata["config"])), arch="TextToImage",
                      device=device, check_sha=check_sha).model


# --- classifier-free guidance and sampling ------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: TextToImage,
    captions: str | Sequence[str],
    *,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    seed: int = 0,
    sampler: str = "ddim",
    on_unknown: str = "unk",
    progress: bool = False,
    return_trajectory: bool = False,
    timestep_spacing: str = "leading",
    guidance_rescale: float = 0.0,
):
    """Sample one image per caption: ``(B, 3, 32, 32)`` in about [-1, 1].

    DDIM (``eta = 0``, SD's timesteps) or ``sampler="ddpm"``; noise from ``torch.Generator().manual_seed(seed)``.
    ``guidance_scale`` < 0 raises ``ValueError``; unknown words become ``<unk>`` (``on_unknown="error"``
    raises instead); captions longer than the tokenizer's ``max_length`` raise ``ValueError``.
    ``timestep_spacing`` and ``guidance_rescale`` pass through to the sampler and to
    :func:`unetlab.guidance.guided_eps`; their defaults ("leading", 0) give the results of earlier versions.
    The model predicts ε, so the sampler's ``prediction_type`` stays ``"epsilon"``.
    """
    from .samplers import DDIMSampler, DDPMSampler

    scale = check_guidance_scale(guidance_scale)
    if isinstance(captions, str):
        captions = [captions]
    if sampler == "ddim":
        chain = DDIMSampler(NoiseSchedule(), num_inference_steps=num_inference_steps, timestep_spacing=timestep_spacing)
    elif sampler == "ddpm":
        chain = DDPMSampler(NoiseSchedule(), num_inference_steps=num_inference_steps, timestep_spacing=timestep_spacing)
    else:
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    # (B, L, D) each
    context = model.encode(list(captions), on_unknown=on_unknown)
    uncond_context = model.encode([""] * len(captions))
    size = model.unet.config.sample_size
    shape = (len(captions), model.unet.config.in_channels, size, size)

    def model_fn(x_t, t):
        return guided_eps(model.unet, x_t, t, context, uncond_context, scale, guidance_rescale=guidance_rescale)

    generator = torch.Generator().manual_seed(seed)
    return chain.sample(model_fn, shape, generator=generator, progress=progress, return_trajectory=return_trajectory)


# --- evaluation: does the image show what the caption says? -------------------------------------------------

#: a pixel is foreground when its brightest channel (in [0, 1]) exceeds this: every shape colour of
#: ``unetlab.data`` has a channel >= 0.7, every background pixel has all channels <= 0.35
FOREGROUND_THRESHOLD = 0.6
#: … and when its colour is at least this far (RGB distance, [0, 1] units) from the image's median
#: colour, which is the background's (the largest shape covers under 20 % of the image)
BACKGROUND_DISTANCE = 0.25


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected region of a boolean mask ``(H, W)`` (stray pixels of a sample dropped)."""
    H, W = mask.shape
    todo = mask.tolist()
    best: list[tuple[int, int]] = []
    for y in range(H):
        for x in range(W):
            if not todo[y][x]:
                continue
            todo[y][x] = False
            region, stack = [], [(y, x)]
            while stack:
                a, b = stack.pop()
                region.append((a, b))
                for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= c < H and 0 <= d < W and todo[c][d]:
                        todo[c][d] = False
                        stack.append((c, d))
            if len(region) > len(best):
                best = region
    out = torch.zeros(H, W, dtype=torch.bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def foreground_mask(image: torch.Tensor) -> torch.Tensor:
    """Boolean ``(H, W)``: the shape's pixels in an image ``(3, H, W)`` in [-1, 1] (see :func:`classify_image`)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a (3, H, W) tensor in [-1, 1], got {getattr(image, 'shape', type(image))}")
    # (3, H, W) in [0, 1]
    rgb = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    # (3,) the background's colour: the median over all pixels
    background = rgb.flatten(1).median(dim=1).values
    # (H, W): bright, and unlike the background
    fg = (rgb.amax(dim=0) > FOREGROUND_THRESHOLD) & ((rgb - background[:, None, None]).norm(dim=0) > BACKGROUND_DISTANCE)
    return _largest_component(fg)


def classify_image(image: torch.Tensor) -> dict:
    """Read colour and shape off the pixels of one image ``(3, H, W)`` in [-1, 1].

    * foreground (:func:`foreground_mask`): pixels whose brightest channel exceeds
      :data:`FOREGROUND_THRESHOLD` and whose colour differs from the image's median colour by more
      than :data:`BACKGROUND_DISTANCE`; of these, the largest connected region;
    * colour: the named colour (``unetlab.data.COLOURS``) nearest to the foreground's mean RGB;
    * shape, from the foreground's bounding box:
      centroid clearly below the box centre (a triangle's mass sits low) -> triangle;
      corners filled, or the box nearly full -> square; box filled more than ~69 % (a disc fills
      π/4 ≈ 79 %, a diamond 50 %) -> circle; else diamond.

    Returns ``{"colour": str | None, "shape": str | None, "pixels": int}``; ``None`` when no pixel is
    foreground. On clean held-out images it agrees with the labels for about 99 % of shapes and all
    colours (``tests/test_text2img.py`` measures it). The thresholds were set on clean images only.
    """
    fg = foreground_mask(image)
    n = int(fg.sum())
    if n == 0:
        return {"colour": None, "shape": None, "pixels": 0}
    rgb = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    names = list(COLOURS)
    # (K, 3) named colours; (3,) mean foreground colour
    palette = torch.tensor([COLOURS[c] for c in names])
    mean = rgb[:, fg].mean(dim=1)
    colour = names[int(((palette - mean) ** 2).sum(dim=1).argmin())]

    ys, xs = torch.nonzero(fg, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    h, w = y1 - y0 + 1, x1 - x0 + 1
    fill = n / (h * w)
    # centroid's height below the box centre, as a fraction of the box height (triangle ≈ +1/6)
    drop = (float(ys.float().mean()) - (y0 + y1) / 2) / h
    corners = float(fg[[y0, y0, y1, y1], [x0, x1, x0, x1]].float().mean())
    if drop > 0.075:
        shape = "triangle"
    elif corners >= 0.75 or fill >= 0.95:
        shape = "square"
    elif fill > 0.685:
        shape = "circle"
    else:
        shape = "diamond"
    return {"colour": colour, "shape": shape, "pixels": n}


def caption_accuracy(
    model: TextToImage,
    n: int = 48,
    *,
    seed: int = HELDOUT_SEED,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    sample_seed: int = 0,
    batch_size: int = 48,
) -> dict:
    """Sample one image for each of ``n`` held-out captions and check colour and shape on the pixels.

    Captions: images ``0 … n-1`` of the data stream ``seed`` (default: the held-out stream).
    Returns ``{"colour": acc, "shape": acc, "both": acc, "n": n, "captions": [...], "labels": [ShapeLabel],
    "predicted": [...], "images": (n, 3, 32, 32)}`` with accuracies in [0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    labels = make_shapes(n, seed=seed).labels
    captions = [label.caption() for label in labels]
    images, predicted = [], []
    for start in range(0, n, batch_size):
        chunk = captions[start:start + batch_size]
        x = generate(model, chunk, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                     seed=sample_seed + start)
        images.append(x)
        predicted += [classify_image(img) for img in x]
    colour_ok = [p["colour"] == lab.colour for p, lab in zip(predicted, labels)]
    shape_ok = [p["shape"] == lab.shape for p, lab in zip(predicted, labels)]
    both_ok = [c and s for c, s in zip(colour_ok, shape_ok)]
    return {
        "colour": sum(colour_ok) / n, "shape": sum(shape_ok) / n, "both": sum(both_ok) / n, "n": n,
        "captions": captions, "labels": labels, "predicted": predicted, "images": torch.cat(images),
    }


# --- evaluation: does the shape word's cross-attention land on the shape? ----------------------------------

#: timesteps at which held-out images are noised before the UNet reads them for :func:`attention_iou`
IOU_TIMESTEPS = (100, 300, 500, 700)


def threshold_map(maps: torch.Tensor) -> torch.Tensor:
    """Binarise attention maps ``(B, H, W)``: a pixel is "attended" where its value exceeds the map's mean.

    The mean is the value every pixel would get if the word's attention were spread evenly, so the rule
    keeps the pixels that receive more than their fair share; it needs no tuning and no knowledge of the
    shape's size.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a (B, H, W) tensor, got {getattr(maps, 'shape', type(maps))}")
    return maps > maps.mean(dim=(-2, -1), keepdim=True)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two boolean masks ``(B, H, W)`` -> ``(B,)`` (1 when both are empty)."""
    if pred.shape != target.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).flatten(1).sum(dim=1).float()
    union = (pred | target).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@torch.no_grad()
def shape_word_maps(
    model: TextToImage,
    images: torch.Tensor,
    captions: Sequence[str],
    words: Sequence[str],
    *,
    timesteps: Sequence[int] = IOU_TIMESTEPS,
    noise_seed: int = 0,
) -> torch.Tensor:
    """Cross-attention map of ``words[i]`` in ``captions[i]`` over ``images[i]``: ``(B, H, W)``.

    Each image is noised at every timestep of ``timesteps`` (fixed noise from ``noise_seed``); the UNet
    reads it with its caption while :func:`unetlab.capture.capture_attention` records every
    cross-attention layer. The word's map is averaged over heads, timesteps and layers (each layer's
    16×16 or 8×8 map upsampled to the image size first).
    """
    from .capture import capture_attention

    if len(captions) != images.shape[0] or len(words) != images.shape[0]:
        raise ValueError("need one caption and one word per image")
    schedule = NoiseSchedule()
    context = model.encode(list(captions))
    tokens = [model.tokenizer.token_index(c, w) for c, w in zip(captions, words)]
    generator = torch.Generator().manual_seed(noise_seed)
    size = tuple(images.shape[-2:])
    with capture_attention(model.unet, kind="cross", average_heads=True) as store:
        for t in timesteps:
            store.step = int(t)
            noise = torch.randn(images.shape, generator=generator)
            model.unet(schedule.add_noise(images, noise, int(t)), int(t), context)
    out = torch.empty(images.shape[0], *size)
    # the word may sit at another position in each caption: one aggregate per distinct position
    for token in sorted(set(tokens)):
        rows = [i for i, k in enumerate(tokens) if k == token]
        out[rows] = store.aggregate(token=token, size=size)[rows]
    return out


def attention_iou(
    model: TextToImage,
    n: int = 64,
    *,
    seed: int = HELDOUT_SEED,
    timesteps: Sequence[int] = IOU_TIMESTEPS,
    noise_seed: int = 0,
) -> dict:
    """Mean IoU between the thresholded shape-word attention map and the true shape mask, over ``n`` images.

    Images, masks and captions: ``0 … n-1`` of the data stream ``seed`` (default: held out). The map
    comes from :func:`shape_word_maps`, the threshold from :func:`threshold_map`; the true mask is the
    shape's coverage > 0.5. Returns ``{"mean_iou", "ious" (n,), "maps" (n, H, W), "masks" (n, H, W),
    "captions"}``.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    batch = make_shapes(n, seed=seed)
    captions = batch.captions
    maps = shape_word_maps(model, batch.images, captions, [label.shape for label in batch.labels],
                           timesteps=timesteps, noise_seed=noise_seed)
    masks = batch.masks[:, 0] > 0.5
    ious = mask_iou(threshold_map(maps), masks)
    return {"mean_iou": float(ious.mean()), "ious": ious, "maps": maps, "masks": masks, "captions": captions}
