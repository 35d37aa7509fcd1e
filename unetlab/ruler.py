"""A pixel ruler that reads a whole caption off an image: colour, shape, 3×3 position, size, number of objects.

No learned classifier: every reading is a measurement on the pixels with the data generator's own
geometry (:mod:`unetlab.data`), so it cannot share a model's mistakes. Calibrated on real held-out
images only (``tests/test_ruler.py``: every reading ≥ 0.99 on 1000 held-out images); its thresholds are
fixed by the data set's geometry, below, and were never tuned on samples.

How one image ``(3, H, W)`` in [-1, 1] is read (:func:`read_image`):

1. **Background**: every training background is a vertical gradient from one dark colour (top) to
   another (bottom). Its two ends are the per-channel medians of the top two and the bottom two rows
   (64 pixels each; no shape covers half a row), and ``bg(y)`` interpolates linearly between them.
2. **Objects**: pixels whose colour lies more than :data:`OBJECT_DISTANCE` (RGB distance, [0, 1] units)
   from ``bg(y)``; 4-connected components of them (``scipy.ndimage.label``) with at least
   :data:`MIN_OBJECT_PIXELS` pixels are objects. Every shape colour lies ≥ 0.5 from every background, so a
   shape's pixels stand out wherever it covers half a pixel or more; the smallest shape covers ~23 pixels,
   a stray speck of a sample fewer than 5.
3. The **largest object** is read:

   * colour: the named colour nearest (RGB) to the median of its core pixels (those at least 80 % as far
     from the background as its farthest pixel, i.e. away from the anti-aliased edge);
   * coverage ``alpha`` per pixel: the pixel's position on the line from ``bg(y)`` to that colour, clamped to
     [0, 1] (an edge pixel half covered reads 0.5), inside the object's bounding box grown by 2 pixels;
   * shape, centre, size: the ideal shape (:func:`unetlab.data._coverage`, drawn 4× supersampled as the
     generator does) of each of the four kinds, over a grid of centres and half-sizes around the one that
     the object's area and centroid imply, whose coverage is closest (sum of squared differences) to
     ``alpha``. The best fit names the shape;
   * position: the 3×3 cell whose generator centre (0.25, 0.5, 0.75 of the side) is nearest the fitted
     centre (cells meet at 0.375 and 0.625);
   * size: "large" when the fitted half-size exceeds 0.16 of the side, midway between the generator's
     0.11 (small) and 0.21 (large).

:func:`read_background` also reports how far the background strays from a clean gradient (RMS of the
residual outside objects, in [0, 1] units; a clean held-out image: ~0.002 from the shape's anti-aliasing
halo) and its brightest channel (training backgrounds are all ≤ 0.35).

:func:`score_readings` compares readings with labels; :func:`wilson_interval` gives 95 % intervals.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Sequence

import numpy as np
import torch

from .data import _CENTRES, _HALF_SIZE, _SUPERSAMPLE, COLOURS, COLUMNS, ROWS, SHAPES, ShapeLabel, _coverage

__all__ = [
    "OBJECT_DISTANCE", "MIN_OBJECT_PIXELS", "SIZE_THRESHOLD", "CORE_FRACTION", "Reading", "read_background",
    "read_image", "read_images", "score_readings", "wilson_interval", "FIGURES",
]

#: a pixel belongs to an object when its RGB distance from the background exceeds this ([0, 1] units).
#: Every shape colour (tint included) lies >= 0.5 from every background colour: half of that.
OBJECT_DISTANCE = 0.25
#: connected regions smaller than this (pixels) are specks, not objects: the smallest shape (a small
#: triangle, ~1.85·3.5² ≈ 23 pixels) is more than four times larger
MIN_OBJECT_PIXELS = 5
#: fitted half-size (fraction of the side) above which an object is "large": midway between 0.11 and 0.21
SIZE_THRESHOLD = (_HALF_SIZE["small"] + _HALF_SIZE["large"]) / 2
#: core pixels (for the colour): at least this fraction of the object's largest distance from the background
CORE_FRACTION = 0.8
#: the readings :func:`score_readings` rates
FIGURES = ("colour", "shape", "position", "size", "one_object", "all_one")

# area of each ideal shape in units of half² (from unetlab.data._coverage): circle π, square (1.7)²,
# diamond 2·1.15², triangle ½ · base 2 · height 1.85
_AREA_PER_HALF2 = {"circle": math.pi, "square": 1.7**2, "diamond": 2 * 1.15**2, "triangle": 1.85}
# centroid of each ideal shape below its centre, in units of half (the triangle's mass sits low:
# apex at -1, base at +0.85, centroid two thirds of the way down: -1 + 2/3 · 1.85)
_CENTROID_DROP = {"circle": 0.0, "square": 0.0, "diamond": 0.0, "triangle": -1 + 2 / 3 * 1.85}
# fit grids: centre offsets (pixels) around the implied centre, half-size factors around the implied one;
# coarse first, then fine around the coarse best
_COARSE_OFFSETS = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
_COARSE_SCALES = torch.tensor([0.85, 0.925, 1.0, 1.075, 1.15])
_FINE_OFFSETS = torch.tensor([-0.25, 0.0, 0.25])
_FINE_SCALES = torch.tensor([0.97, 1.0, 1.03])


@dataclass(frozen=True)
class Reading:
    """What the ruler reads off one image.

    ``objects``: number of objects (components ≥ :data:`MIN_OBJECT_PIXELS`); the other fields describe the
    largest one and are ``None`` when there is none. ``centre`` (x, y) and ``half`` are fractions of the
    side; ``fit_error``: mean squared coverage error of the best ideal shape (0 = a perfect match);
    ``pixels``: the object's pixel count; ``other_pixels``: pixels in the other objects.
    """

    objects: int
    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None
    centre: tuple[float, float] | None = None
    half: float | None = None
    fit_error: float | None = None
    pixels: int = 0
    other_pixels: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _check_image(image) -> np.ndarray:
    """``(3, H, W)`` tensor in [-1, 1] -> ``(3, H, W)`` float64 array in [0, 1]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) tensor in [-1, 1], got {found}")
    if image.shape[1] < 8 or image.shape[2] < 8:
        raise ValueError(f"image must be at least 8×8 pixels, got {tuple(image.shape[1:])}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image holds NaN or inf values")
    # [-1, 1] -> [0, 1]
    return ((image.detach().double().cpu() + 1) / 2).clamp(0, 1).numpy()


def _background(rgb: np.ndarray) -> np.ndarray:
    """The fitted background gradient ``(3, H, 1)`` of an image ``(3, H, W)`` in [0, 1]."""
    H = rgb.shape[1]
    # (3,) each: per-channel medians of the top two and bottom two rows
    top = np.median(rgb[:, :2].reshape(3, -1), axis=1)
    bottom = np.median(rgb[:, -2:].reshape(3, -1), axis=1)
    # row centres of the two bands, where those medians belong: y = 0.5 and y = H - 1.5
    ramp = (np.arange(H) - 0.5) / (H - 2)
    # (3, H, 1): bg(y) = top + (bottom - top) · ramp(y)
    return (top[:, None] + (bottom - top)[:, None] * ramp[None, :])[:, :, None]


def _objects(rgb: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(distance (H, W), object masks largest first, labelled map) for an image and its background."""
    from scipy import ndimage

    # (H, W): RGB distance of each pixel from the background
    distance = np.sqrt(((rgb - bg) ** 2).sum(axis=0))
    # 4-connected components (scipy's default structure is the cross)
    labelled, count = ndimage.label(distance > OBJECT_DISTANCE)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= MIN_OBJECT_PIXELS]
    return distance, [labelled == k for k in keep], labelled


def read_background(image: torch.Tensor) -> dict:
    """How clean the background of one image ``(3, H, W)`` in [-1, 1] is.

    Returns ``{"residual_rms": float, "brightest": float, "top": (3,), "bottom": (3,)}``: RMS (over pixels
    and channels, [0, 1] units) of the image minus the fitted gradient, outside the objects grown by two
    pixels; the brightest channel of the fitted gradient (training backgrounds: ≤ 0.35); its two ends.
    """
    from scipy import ndimage

    rgb = _check_image(image)
    bg = _background(rgb)
    _, masks, _ = _objects(rgb, bg)
    outside = np.ones(rgb.shape[1:], dtype=bool)
    for m in masks:
        # the object and its anti-aliased halo are not background
        outside &= ~ndimage.binary_dilation(m, iterations=2)
    residual = (rgb - bg)[:, outside]
    rms = float(np.sqrt((residual**2).mean())) if residual.size else float("nan")
    return {"residual_rms": rms, "brightest": float(bg.max()), "top": bg[:, 0, 0].tolist(),
            "bottom": bg[:, -1, 0].tolist()}


def _coverage_error(shape: str, target: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor, ccx: torch.Tensor,
                    ccy: torch.Tensor, halves: torch.Tensor) -> torch.Tensor:
    """Mean squared difference ``(N,)`` between ``target`` (h, w) and the ideal ``shape`` at N (centre, half)."""
    h, w = target.shape
    # (N, F_h, F_w): offsets of each fine sample from each candidate centre
    dy = fy[None, :, None] - ccy[:, None, None]
    dx = fx[None, None, :] - ccx[:, None, None]
    # (N, F_h, F_w) -> average 4×4 blocks -> (N, h, w) coverage, as make_shapes does
    fine = _coverage(shape, dx, dy, halves[:, None, None])
    cover = fine.reshape(-1, h, _SUPERSAMPLE, w, _SUPERSAMPLE).mean(dim=(2, 4))
    return ((cover - target) ** 2).mean(dim=(1, 2))


def _grid(cx: float, cy: float, half: float, offsets: torch.Tensor, scales: torch.Tensor):
    """Every (centre, half) of a grid: (N,) each for ccx, ccy, halves."""
    oy, ox, sc = torch.meshgrid(offsets, offsets, scales, indexing="ij")
    return cx + ox.flatten(), cy + oy.flatten(), half * sc.flatten()


def _fit_shape(alpha: np.ndarray, y0: int, x0: int, area: float, cy: float, cx: float):
    """Best ideal shape for the coverage ``alpha`` (h, w) whose top-left pixel is (y0, x0) in the image.

    ``area`` (pixels) and the coverage-weighted centroid (cy, cx) (pixel units, pixel centres at k + 0.5)
    give each shape's implied half-size and centre. Per shape, a coarse grid around them (centre ±1 pixel
    in steps of 0.5, half-size ×0.85 … ×1.15), then a fine one around the coarse best (±0.25 pixel,
    ×0.97 … ×1.03). Returns ``(shape, cx, cy, half, mse)`` in pixels.
    """
    h, w = alpha.shape
    target = torch.from_numpy(alpha).float()
    # fine-grid pixel-centre coordinates of the crop, in image pixels, as unetlab.data draws them
    fy = y0 + (torch.arange(h * _SUPERSAMPLE, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    fx = x0 + (torch.arange(w * _SUPERSAMPLE, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    best = None
    for shape in SHAPES:
        # implied half from the area, implied centre from the centroid (the triangle's centroid sits low)
        half0 = math.sqrt(max(area, 1.0) / _AREA_PER_HALF2[shape])
        cx0, cy0 = cx, cy - _CENTROID_DROP[shape] * half0
        for offsets, scales in ((_COARSE_OFFSETS, _COARSE_SCALES), (_FINE_OFFSETS, _FINE_SCALES)):
            ccx, ccy, halves = _grid(cx0, cy0, half0, offsets, scales)
            err = _coverage_error(shape, target, fy, fx, ccx, ccy, halves)
            k = int(err.argmin())
            # the best so far: the next grid is centred on it
            cx0, cy0, half0 = float(ccx[k]), float(ccy[k]), float(halves[k])
        if best is None or float(err[k]) < best[4]:
            best = (shape, cx0, cy0, half0, float(err[k]))
    return best


def read_image(image: torch.Tensor) -> Reading:
    """Read one image ``(3, H, W)`` in [-1, 1] (see the module docstring for how). Returns a :class:`Reading`.

    Raises ``ValueError`` for anything but a finite ``(3, H, W)`` tensor of at least 8×8 pixels.
    """
    rgb = _check_image(image)
    H, W = rgb.shape[1:]
    bg = _background(rgb)
    distance, masks, _ = _objects(rgb, bg)
    if not masks:
        return Reading(objects=0)
    obj = masks[0]
    # colour: the median of the core pixels (away from the anti-aliased edge)
    core = obj & (distance >= CORE_FRACTION * distance[obj].max())
    # (3,)
    colour_rgb = np.median(rgb[:, core], axis=1)
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names])
    colour = names[int(((palette - colour_rgb) ** 2).sum(axis=1).argmin())]
    # coverage in a window around the object: the pixel's position on the line bg(y) -> object colour
    ys, xs = np.nonzero(obj)
    y0, y1 = max(0, ys.min() - 2), min(H, ys.max() + 3)
    x0, x1 = max(0, xs.min() - 2), min(W, xs.max() + 3)
    # (3, h, w) pixel minus background; (3, h, 1) object colour minus background
    diff = (rgb - bg)[:, y0:y1, x0:x1]
    span = colour_rgb[:, None, None] - bg[:, y0:y1]
    # (h, w): alpha = <pixel - bg, colour - bg> / |colour - bg|², clamped to [0, 1]
    alpha = np.clip((diff * span).sum(axis=0) / np.maximum((span**2).sum(axis=0), 1e-6), 0, 1)
    # other objects inside the window do not belong to this one
    window_other = np.zeros_like(obj)
    for m in masks[1:]:
        window_other |= m
    alpha[window_other[y0:y1, x0:x1]] = 0.0
    area = float(alpha.sum())
    gy, gx = np.mgrid[y0:y1, x0:x1]
    # coverage-weighted centroid, pixel centres at k + 0.5
    cy = float((alpha * (gy + 0.5)).sum() / max(area, 1e-6))
    cx = float((alpha * (gx + 0.5)).sum() / max(area, 1e-6))
    shape, fcx, fcy, half, err = _fit_shape(alpha, y0, x0, area, cy, cx)
    # 3×3 cell: the nearest of the generator's cell centres
    row = ROWS[int(np.argmin([abs(fcy / H - c) for c in _CENTRES]))]
    column = COLUMNS[int(np.argmin([abs(fcx / W - c) for c in _CENTRES]))]
    position = ShapeLabel(shape=shape, colour=colour, row=row, column=column, size="small").position
    size = "large" if half / W > SIZE_THRESHOLD else "small"
    return Reading(objects=len(masks), colour=colour, shape=shape, position=position, size=size,
                   centre=(fcx / W, fcy / H), half=half / W, fit_error=err, pixels=int(obj.sum()),
                   other_pixels=int(sum(int(m.sum()) for m in masks[1:])))


def read_images(images: torch.Tensor) -> list[Reading]:
    """:func:`read_image` for each image of a batch ``(B, 3, H, W)``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    return [read_image(img) for img in images]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval (default ``z``) for ``successes`` out of ``n`` trials: ``(low, high)``.

    Wilson 1927; better than the normal approximation near 0 and 1 (it never leaves [0, 1]).
    ``n`` must be a positive int and ``0 <= successes <= n``.
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got successes={successes}, n={n}")
    p = successes / n
    # centre and half-width of the score interval
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    # k = 0 and k = n give exactly 0 and 1 (the formula can round a hair inside them, e.g. 0.9999999999999999 at n = 128)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def score_readings(readings: Sequence[Reading], labels: Sequence[ShapeLabel]) -> dict:
    """Rates of right readings against the labels, each with its count and 95 % Wilson interval.

    Returns ``{figure: {"rate", "k", "n", "low", "high"}}`` for the figures of :data:`FIGURES`:
    ``colour``, ``shape``, ``position``, ``size`` (of the largest object), ``one_object`` (exactly one
    object), ``all_one`` (all four right and exactly one object); plus ``"ok"``: per-image booleans.
    """
    if len(readings) != len(labels) or not readings:
        raise ValueError(f"need as many readings as labels (at least one), got {len(readings)} and {len(labels)}")
    ok = {f: [] for f in FIGURES}
    for r, lab in zip(readings, labels):
        right = {"colour": r.colour == lab.colour, "shape": r.shape == lab.shape,
                 "position": r.position == lab.position, "size": r.size == lab.size, "one_object": r.objects == 1}
        right["all_one"] = all(right.values())
        for f in FIGURES:
            ok[f].append(bool(right[f]))
    out = {}
    n = len(readings)
    for f in FIGURES:
        k = sum(ok[f])
        low, high = wilson_interval(k, n)
        out[f] = {"rate": k / n, "k": k, "n": n, "low": low, "high": high}
    out["ok"] = ok
    return out
