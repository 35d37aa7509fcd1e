"""Figures for chapter 5 (attention inside the UNet).

* :func:`overlay` — one attention map drawn over an image (the map is upsampled to the image)
* :func:`plot_maps` — a grid of maps: one panel per layer / head / step / token, optionally over an image
* :func:`plot_query_map` — a self-attention map with its query pixel marked
* :func:`plot_token_maps` — one image with the aggregated map of each word next to it

Maps are ``(h, w)`` tensors or arrays (e.g. one image's entry of ``AttentionStore.maps_for_token``);
images are ``(3, H, W)`` / ``(H, W, 3)`` / ``(H, W)`` with values in ``[-1, 1]`` (the course's data
range) or ``[0, 1]``: a tensor with negative values is taken to be in ``[-1, 1]``. Every helper
returns the ``matplotlib`` figure; nothing random happens here.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["overlay", "plot_maps", "plot_query_map", "plot_token_maps", "image_to_display"]


def _map_tensor(m, name: str = "map") -> torch.Tensor:
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(m)
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or array of shape (h, w), got {type(m).__name__}")
    m = m.detach().float().cpu()
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{name} must have shape (h, w), got {tuple(m.shape)}; pick one image / head first")
    return m


def image_to_display(image) -> np.ndarray:
    """``(3, H, W)``, ``(H, W, 3)`` or ``(H, W)`` in [-1, 1] or [0, 1] -> ``(H, W, 3)`` array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.transpose(img, (1, 2, 0))
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {np.shape(image)}")
    if img.min() < 0:
        img = (img + 1) / 2
    return np.clip(img, 0, 1)


def _resize(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(m.shape) != size:
        m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return m.numpy()


def overlay(ax, image, attn_map, *, alpha: float = 0.6, cmap: str = "jet", normalize: bool = True, title: str = "",
            vmin: float | None = None, vmax: float | None = None, colorbar: bool = False):
    """Draw ``image`` with ``attn_map`` (upsampled bilinearly to the image) on top; returns ``ax``.

    ``normalize``: each map's colours span its own min … max (shapes, not strengths, are compared);
    the values themselves are never changed, so a ``colorbar`` shows the map's real numbers
    (attention probabilities). ``vmin``/``vmax`` fix the colour range instead (shared between panels).
    With ``image=None`` only the map is drawn (at its own resolution, nearest-neighbour pixels).
    """
    m = _map_tensor(attn_map)
    if vmin is None and vmax is None and normalize:
        vmin, vmax = float(m.min()), float(m.max())
        if vmax <= vmin:
            vmax = vmin + 1e-12
    if image is None:
        im = ax.imshow(m.numpy(), cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    else:
        img = image_to_display(image)
        ax.imshow(img, interpolation="nearest")
        im = ax.imshow(_resize(m, img.shape[:2]), cmap=cmap, alpha=alpha, interpolation="bilinear", vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=6)
        cb.formatter.set_powerlimits((-4, 4))
    return ax


def plot_maps(
    maps: Mapping[str, object] | Sequence,
    *,
    titles: Sequence[str] | None = None,
    image=None,
    ncols: int | None = None,
    normalize: bool = True,
    cmap: str = "jet",
    panel_size: float = 1.9,
    suptitle: str = "",
    colorbar: bool = True,
):
    """A grid of attention maps, one panel each; a dict's keys become the panel titles.

    ``image``: drawn under every map (then each map is upsampled to it). ``normalize``: each panel's
    colours span its own min … max (with ``colorbar``, one bar per panel in the map's own units);
    ``normalize=False``: all panels share one colour scale from 0 to the largest value, so their
    strengths compare (with ``colorbar``, one bar per panel, all equal).
    """
    if isinstance(maps, Mapping):
        titles = list(maps.keys()) if titles is None else list(titles)
        items = list(maps.values())
    else:
        items = list(maps)
        titles = [""] * len(items) if titles is None else list(titles)
    if not items:
        raise ValueError("plot_maps needs at least one map")
    if len(titles) != len(items):
        raise ValueError(f"{len(titles)} titles for {len(items)} maps")
    tensors = [_map_tensor(m, f"map {i}") for i, m in enumerate(items)]
    n = len(tensors)
    ncols = ncols or min(n, 6)
    nrows = math.ceil(n / ncols)
    # each row: the panel plus room for its title
    height = (panel_size + 0.3) * nrows + (0.4 if suptitle else 0)
    # a colour bar widens each panel by about a quarter
    width = panel_size * ncols * (1.3 if colorbar else 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    vmax = max(float(t.max()) for t in tensors)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, t, title in zip(axes.flat, tensors, titles):
        if normalize:
            overlay(ax, image, t, cmap=cmap, title=str(title), colorbar=colorbar)
        else:
            overlay(ax, image, t, cmap=cmap, normalize=False, vmin=0.0, vmax=max(vmax, 1e-12), title=str(title),
                    colorbar=colorbar)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def plot_query_map(
    attn_map, query: tuple[int, int], *, image=None, title: str = "", ax=None, cmap: str = "viridis"
):
    """A self-attention map with its query pixel ``(y, x)`` (in the map's grid) marked by a cross.

    Next to it (when ``image`` is given) the image with the same query marked, so one sees which
    pixel asked and where it looked.
    """
    m = _map_tensor(attn_map)
    h, w = m.shape
    y, x = query
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"query {query} is outside the {h}×{w} map")
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        fig, axes = plt.subplots(1, 2 if image is not None else 1, figsize=(6.4 if image is not None else 3.4, 3.2), squeeze=False)
        axes = list(axes.flat)
    if image is not None:
        img = image_to_display(image)
        axes[0].imshow(img, interpolation="nearest")
        sy, sx = img.shape[0] / h, img.shape[1] / w
        axes[0].plot([(x + 0.5) * sx - 0.5], [(y + 0.5) * sy - 0.5], marker="x", color="white", markersize=10, mew=2.5)
        axes[0].set_xticks([])
        axes[0].set_yticks([])
        axes[0].set_title("query pixel", fontsize=9)
        target = axes[1]
    else:
        target = axes[0]
    im = target.imshow(m.numpy(), cmap=cmap, interpolation="nearest")
    target.plot([x], [y], marker="x", color="red", markersize=10, mew=2.5)
    target.set_xticks([])
    target.set_yticks([])
    target.set_title(title or f"attention of pixel ({y}, {x})", fontsize=9)
    fig.colorbar(im, ax=target, fraction=0.046, pad=0.03)
    fig.tight_layout()
    return fig


def plot_token_maps(image, word_maps: Mapping[str, object], *, title: str = "", panel_size: float = 1.9, cmap: str = "jet",
                    shared_scale: bool = True, colorbar: bool = True):
    """The image, then one panel per word with that word's map over the image.

    ``shared_scale``: every word's colours span 0 … the largest value of all maps, so the words'
    strengths compare (a word no pixel reads stays dark); ``False``: each panel spans its own
    min … max. ``colorbar``: a bar per panel, in the maps' own units (attention probabilities).
    """
    if not word_maps:
        raise ValueError("plot_token_maps needs at least one word's map")
    n = len(word_maps) + 1
    width = panel_size * n * (1.3 if colorbar else 1.0)
    fig, axes = plt.subplots(1, n, figsize=(width, panel_size + (0.4 if title else 0.1)), squeeze=False)
    top = max(float(_map_tensor(m).max()) for m in word_maps.values())
    axes = axes[0]
    axes[0].imshow(image_to_display(image), interpolation="nearest")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("image", fontsize=9)
    for ax, (word, m) in zip(axes[1:], word_maps.items()):
        if shared_scale:
            overlay(ax, image, m, cmap=cmap, title=str(word), vmin=0.0, vmax=max(top, 1e-12), colorbar=colorbar)
        else:
            overlay(ax, image, m, cmap=cmap, title=str(word), colorbar=colorbar)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
