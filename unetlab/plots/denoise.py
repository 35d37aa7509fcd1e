"""Plots for denoising experiments: image grids, loss curves, quality against noise level.

Every function draws into a new figure (or the ``ax`` given) and returns the ``Figure``.
Images are expected in [-1, 1] (the data's range) and shown in [0, 1].
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data import to_unit_range

__all__ = ["show_images", "show_reconstructions", "plot_loss_curves", "plot_quality_vs_t"]


def _as_rgb(image: torch.Tensor) -> np.ndarray:
    # (3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]
    return to_unit_range(image.detach().float().cpu()).permute(1, 2, 0).numpy()


def show_images(images: torch.Tensor, titles: list[str] | None = None, ncols: int = 8, size: float = 1.6):
    """A grid of images (N, 3, H, W) with optional titles (e.g. captions)."""
    n = images.shape[0]
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.35)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_as_rgb(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def show_reconstructions(rows: dict[str, torch.Tensor], n: int = 6, size: float = 1.4, title: str | None = None):
    """One row per entry of ``rows`` (label -> (N, 3, H, W)), the first ``n`` images side by side."""
    labels = list(rows)
    fig, axes = plt.subplots(len(labels), n, figsize=(n * size + 1.6, len(labels) * size), squeeze=False)
    for r, label in enumerate(labels):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(_as_rgb(rows[label][c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: dict[str, list[float]], smooth: int = 20, ax=None, title: str = "training loss"):
    """Per-step losses (label -> list), with a moving average of ``smooth`` steps drawn on top."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5))
    for label, losses in curves.items():
        losses = np.asarray(losses, dtype=float)
        (line,) = ax.plot(losses, alpha=0.25, linewidth=0.8)
        if len(losses) >= smooth:
            avg = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth - 1, len(losses)), avg, color=line.get_color(), label=f"{label} (mean of {smooth})")
        else:
            line.set_label(label)
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_quality_vs_t(results: dict[str, dict[int, dict[str, float]]], metric: str = "psnr", ax=None, title: str | None = None,
                      styles: dict[str, dict] | None = None):
    """``results``: label -> {t: {"psnr": .., "mse": ..}} (from ``denoising_quality``); one line per label.

    ``styles``: optional label -> matplotlib line keywords (e.g. ``{"ls": ":", "color": "gray"}`` for a
    baseline); a label not in it gets solid lines with round markers. ``ValueError`` for an unknown metric.
    """
    if metric not in ("psnr", "mse"):
        raise ValueError(f"metric must be 'psnr' or 'mse', got {metric!r}")
    unknown = set(styles or {}) - set(results)
    if unknown:
        raise ValueError(f"styles names labels that are not in results: {sorted(unknown)}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.8))
    for label, per_t in results.items():
        ts = sorted(per_t)
        style = {"marker": "o", "markersize": 4, **(styles or {}).get(label, {})}
        ax.plot(ts, [per_t[t][metric] for t in ts], label=label, **style)
    ax.set_xlabel("timestep t (more noise →)")
    ax.set_ylabel("PSNR of predicted x0 (dB)" if metric == "psnr" else "MSE of predicted x0")
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_title(title or f"{metric.upper()} of the clean-image estimate vs t")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
