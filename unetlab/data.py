"""The course's own image data: small coloured shapes on a soft background, made here, no downloads.

Every image holds one shape described by four labels — ``shape``, ``colour``, ``position`` (a 3×3
grid: "top left" … "center" … "bottom right") and ``size`` (small / large) — so a caption such as
"a small red circle at the top left" can be built from it (chapters 5 and 6 train a text-to-image
model on these captions).

Generation is deterministic per ``(seed, index)``: image ``i`` of seed ``s`` is the same whether you
make 10 or 10,000 images, and ``make_shapes(n, seed, start=k)`` continues a stream where an earlier
call stopped (the training loop draws fresh batches this way). Two seeds are reserved:
``TRAIN_SEED`` for training and ``HELDOUT_SEED`` for evaluation, so the held-out images never occur
in training.

The models of this course work on these images directly in pixel space (3 channels, 32×32, values in
[-1, 1]); Stable Diffusion works on a VAE's 4-channel latent instead. For a course that trains on a
laptop CPU, pixels are simpler and show the same ideas.

    >>> batch = make_shapes(4, seed=HELDOUT_SEED)
    >>> batch.images.shape, batch.masks.shape        # (4, 3, 32, 32), (4, 1, 32, 32)
    >>> batch.captions[0]                            # e.g. 'a large blue square at the bottom'
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "SHAPES", "COLOURS", "ROWS", "COLUMNS", "POSITIONS", "SIZES", "TRAIN_SEED", "HELDOUT_SEED",
    "ShapeLabel", "ShapesBatch", "ShapesDataset", "make_shapes", "caption", "vocabulary",
    "to_unit_range",
]

SHAPES = ("circle", "square", "triangle", "diamond")
# name -> RGB in [0, 1]; saturated, so every colour stands out from the dark background
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.25),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.65, 0.25, 0.85),
    "white": (0.95, 0.95, 0.95),
}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
SIZES = ("small", "large")
# 3×3 grid names, row-major: ("top left", "top", "top right", "left", "center", ...)
_POSITION_NAMES = {
    ("top", "left"): "top left", ("top", "center"): "top", ("top", "right"): "top right",
    ("middle", "left"): "left", ("middle", "center"): "center", ("middle", "right"): "right",
    ("bottom", "left"): "bottom left", ("bottom", "center"): "bottom", ("bottom", "right"): "bottom right",
}
POSITIONS = tuple(_POSITION_NAMES[(r, c)] for r in ROWS for c in COLUMNS)

TRAIN_SEED = 0
HELDOUT_SEED = 1

# grid cell centres as fractions of the image side; half-sizes (fraction of the side) per size
_CENTRES = (0.25, 0.5, 0.75)
_HALF_SIZE = {"small": 0.11, "large": 0.21}
# supersampling factor: shapes are drawn at 4× resolution and averaged, which anti-aliases the edges
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeLabel:
    """What one image shows: everything a caption needs."""

    shape: str
    colour: str
    row: str
    column: str
    size: str

    @property
    def position(self) -> str:
        """The 3×3 grid position in words, e.g. ``"top left"``, ``"center"``, ``"bottom"``."""
        return _POSITION_NAMES[(self.row, self.column)]

    def caption(self) -> str:
        return caption(self)

    def as_dict(self) -> dict:
        return {**asdict(self), "position": self.position}


def caption(label: ShapeLabel) -> str:
    """``"a small red circle at the top left"`` (``"... in the center"`` for the middle cell)."""
    if not isinstance(label, ShapeLabel):
        raise TypeError(f"caption() expects a ShapeLabel, got {type(label).__name__}")
    where = "in the center" if label.position == "center" else f"at the {label.position}"
    return f"a {label.size} {label.colour} {label.shape} {where}"


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted (for a word-level tokenizer)."""
    words = {"a", "at", "the", "in"}
    for part in (SHAPES, tuple(COLOURS), SIZES, POSITIONS):
        for phrase in part:
            words.update(phrase.split())
    return sorted(words)


@dataclass
class ShapesBatch:
    """``images`` (N, 3, S, S) in [-1, 1]; ``masks`` (N, 1, S, S) shape coverage in [0, 1]; ``labels``."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: list[ShapeLabel]

    @property
    def captions(self) -> list[str]:
        return [caption(label) for label in self.labels]

    def __len__(self) -> int:
        return len(self.labels)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _draw_parameters(seed: int, index: int) -> dict:
    """All random choices for image ``index`` of ``seed``, from its own generator."""
    rng = np.random.default_rng([seed, index])
    label = ShapeLabel(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
        row=ROWS[rng.integers(3)],
        column=COLUMNS[rng.integers(3)],
        size=SIZES[rng.integers(2)],
    )
    return {
        "label": label,
        # small jitter of the centre (fraction of the side) and of the shape colour
        "jitter": rng.uniform(-0.04, 0.04, size=2),
        "tint": rng.uniform(-0.05, 0.05, size=3),
        # background: a dark colour at the top fading into another at the bottom
        "bg_top": rng.uniform(0.0, 0.35, size=3),
        "bg_bottom": rng.uniform(0.0, 0.35, size=3),
    }


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, half: float) -> torch.Tensor:
    """1 inside the shape, 0 outside; ``dx, dy`` are pixel offsets from the centre (y grows downwards)."""
    if shape == "circle":
        inside = dx**2 + dy**2 <= half**2
    elif shape == "square":
        inside = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * half
    elif shape == "diamond":
        inside = dx.abs() + dy.abs() <= 1.15 * half
    elif shape == "triangle":
        # apex at the top, base at the bottom: width grows linearly from apex to base
        top, bottom = -half, 0.85 * half
        inside = (dy >= top) & (dy <= bottom) & (dx.abs() <= (dy - top) / (bottom - top) * half)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.float()


def make_shapes(n: int, seed: int = TRAIN_SEED, size: int = 32, start: int = 0) -> ShapesBatch:
    """Images ``start … start+n-1`` of the stream for ``seed``: a :class:`ShapesBatch`."""
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    start = _check_int("start", start, 0)
    size = _check_int("size", size, 8)
    params = [_draw_parameters(seed, start + i) for i in range(n)]

    fine = size * _SUPERSAMPLE
    # pixel-centre coordinates on the fine grid, in units of output pixels: (fine,)
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    masks = torch.empty(n, 1, size, size)
    images = torch.empty(n, 3, size, size)
    # vertical ramp 0 → 1 for the background gradient: (size, 1)
    ramp = torch.linspace(0.0, 1.0, size)[:, None]
    for i, p in enumerate(params):
        label = p["label"]
        cx = (_CENTRES[COLUMNS.index(label.column)] + p["jitter"][0]) * size
        cy = (_CENTRES[ROWS.index(label.row)] + p["jitter"][1]) * size
        half = _HALF_SIZE[label.size] * size
        # (fine, fine) -> average 4×4 blocks -> (size, size) coverage
        cover = _coverage(label.shape, xs - cx, ys - cy, half)
        masks[i, 0] = cover.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(dim=(1, 3))
        top = torch.as_tensor(p["bg_top"], dtype=torch.float32)
        bottom = torch.as_tensor(p["bg_bottom"], dtype=torch.float32)
        # background (3, size, size): top colour fading into the bottom colour
        background = (top[:, None, None] * (1 - ramp) + bottom[:, None, None] * ramp).expand(3, size, size)
        colour = (torch.tensor(COLOURS[label.colour]) + torch.as_tensor(p["tint"], dtype=torch.float32)).clamp(0, 1)
        # alpha blend: image = mask * colour + (1 - mask) * background, in [0, 1]
        images[i] = masks[i] * colour[:, None, None] + (1 - masks[i]) * background
    # [0, 1] -> [-1, 1], the range diffusion models are trained on
    return ShapesBatch(images=images * 2 - 1, masks=masks, labels=[p["label"] for p in params])


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (for plotting and for PSNR)."""
    return ((images + 1) / 2).clamp(0, 1)


class ShapesDataset(Dataset):
    """A fixed set of ``n`` shapes images as a torch ``Dataset``.

    ``dataset[i]`` is a dict ``{"image": (3, S, S), "mask": (1, S, S), "caption": str, "label": ShapeLabel}``;
    the whole set is also available as ``dataset.images`` / ``dataset.masks`` / ``dataset.labels``.
    """

    def __init__(self, n: int, seed: int = TRAIN_SEED, size: int = 32, start: int = 0):
        batch = make_shapes(n, seed=seed, size=size, start=start)
        self.images, self.masks, self.labels = batch.images, batch.masks, batch.labels
        self.seed, self.size, self.start = seed, size, start

    @property
    def captions(self) -> list[str]:
        return [caption(label) for label in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index],
            "mask": self.masks[index],
            "caption": caption(self.labels[index]),
            "label": self.labels[index],
        }
