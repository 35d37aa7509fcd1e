"""Figures for chapter 4 (timestep embedding).

* :func:`plot_embedding_heatmap` — one row per timestep, one column per embedding dimension
* :func:`plot_embedding_columns` — a few embedding dimensions as curves over t
* :func:`plot_frequencies` — the frequencies ``w_i`` and periods ``2*pi / w_i`` of each variant
* :func:`plot_similarity_matrix` — cosine similarity between the embeddings of two timesteps
* :func:`plot_similarity_profile` — similarity as a function of ``|t1 - t2|``
* :func:`plot_clean_estimates` — noisy ``x_t`` above the model's clean-image estimate ``x0_hat``

Every helper takes tensors (or arrays) that the notebook computed, draws them, and returns the
``matplotlib`` figure; nothing random happens here, so the same input gives the same figure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from unetlab.embeddings import embedding_frequencies  # re-exported: the plots take its frequencies

__all__ = [
    "plot_embedding_heatmap",
    "plot_embedding_columns",
    "plot_frequencies",
    "plot_similarity_matrix",
    "plot_similarity_profile",
    "plot_clean_estimates",
    "embedding_frequencies",
]


def _as_numpy(x, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {x.shape}")
    return x


def plot_embedding_heatmap(emb, timesteps=None, *, title: str = "", ax=None, colorbar: bool = True):
    """Heatmap of ``emb`` ``(T, dim)``: timestep on the y axis, embedding dimension on the x axis."""
    e = _as_numpy(emb, "emb", ndim=2)
    fig, ax = (plt.subplots(figsize=(8, 4.5)) if ax is None else (ax.figure, ax))
    if timesteps is None:
        t0, t1 = 0, e.shape[0] - 1
    else:
        t = _as_numpy(timesteps, "timesteps", ndim=1)
        if len(t) != e.shape[0]:
            raise ValueError(f"timesteps has {len(t)} entries but emb has {e.shape[0]} rows")
        t0, t1 = t[0], t[-1]
    im = ax.imshow(
        e, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
        extent=(-0.5, e.shape[1] - 0.5, t1, t0), origin="upper",
    )
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("timestep t")
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def plot_embedding_columns(emb, timesteps, columns: Sequence[int], *, title: str = "", ax=None):
    """Curves of a few embedding dimensions over the timesteps (one line per column index)."""
    e = _as_numpy(emb, "emb", ndim=2)
    t = _as_numpy(timesteps, "timesteps", ndim=1)
    if len(t) != e.shape[0]:
        raise ValueError(f"timesteps has {len(t)} entries but emb has {e.shape[0]} rows")
    fig, ax = (plt.subplots(figsize=(8, 3.2)) if ax is None else (ax.figure, ax))
    for c in columns:
        if not 0 <= c < e.shape[1]:
            raise ValueError(f"column {c} is outside 0 .. {e.shape[1] - 1}")
        ax.plot(t, e[:, c], lw=1.2, label=f"dim {c}")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("value")
    ax.set_ylim(-1.1, 1.1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_frequencies(
    variants: Mapping[str, torch.Tensor], *, num_train_timesteps: int = 1000, title: str = ""
):
    """Frequency ``w_i`` and period ``2*pi / w_i`` (log scale) per index ``i``, one line per variant.

    ``variants`` maps a label to a 1-d tensor of frequencies (e.g. from :func:`embedding_frequencies`).
    A dashed line marks ``num_train_timesteps``: dimensions whose period is longer barely turn
    over the whole training range. With exactly two variants of the same length a third panel
    shows their ratio ``w_i(first) / w_i(second)``.
    """
    items = [(label, _as_numpy(w, f"frequencies of {label!r}", ndim=1)) for label, w in variants.items()]
    with_ratio = len(items) == 2 and len(items[0][1]) == len(items[1][1])
    fig, axes = plt.subplots(1, 3 if with_ratio else 2, figsize=(13 if with_ratio else 10, 3.4))
    ax_f, ax_p = axes[0], axes[1]
    for (label, w), style in zip(items, ("-", "--", ":", "-.")):
        ax_f.plot(np.arange(len(w)), w, style, lw=1.5, label=label)
        ax_p.plot(np.arange(len(w)), 2 * np.pi / w, style, lw=1.5, label=label)
    ax_f.set_yscale("log")
    ax_f.set_xlabel("frequency index i")
    ax_f.set_ylabel("w_i (radians per step)")
    ax_f.set_title("frequencies")
    ax_f.legend(fontsize=8)
    ax_p.set_yscale("log")
    ax_p.axhline(num_train_timesteps, color="gray", lw=1, ls="--")
    ax_p.text(0, num_train_timesteps * 1.3, f"{num_train_timesteps} steps", color="gray", fontsize=8)
    ax_p.set_xlabel("frequency index i")
    ax_p.set_ylabel("period 2π / w_i (steps)")
    ax_p.set_title("periods")
    if with_ratio:
        (l0, w0), (l1, w1) = items
        axes[2].plot(np.arange(len(w0)), w0 / w1, lw=1.5, color="C2")
        axes[2].set_xlabel("frequency index i")
        axes[2].set_ylabel("w_i ratio")
        axes[2].set_title(f"ratio: {l0} / {l1}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout(h_pad=1.5)
    return fig


def plot_similarity_matrix(sim, timesteps, *, title: str = "", ax=None, vmin: float | None = None):
    """Cosine-similarity matrix ``(N, N)`` between the embeddings of ``timesteps`` ``(N,)``."""
    s = _as_numpy(sim, "sim", ndim=2)
    t = _as_numpy(timesteps, "timesteps", ndim=1)
    if s.shape != (len(t), len(t)):
        raise ValueError(f"sim must have shape ({len(t)}, {len(t)}) to match timesteps, got {s.shape}")
    fig, ax = (plt.subplots(figsize=(5.2, 4.4)) if ax is None else (ax.figure, ax))
    # pixel i is centred on t[i]: the image reaches half a step beyond the first and last timestep
    half = (t[-1] - t[0]) / (len(t) - 1) / 2 if len(t) > 1 else 0.5
    lo, hi = t[0] - half, t[-1] + half
    im = ax.imshow(
        s, cmap="viridis", vmin=min(float(s.min()), 0.0) if vmin is None else vmin, vmax=1,
        extent=(lo, hi, hi, lo), interpolation="nearest",
    )
    ax.set_xlabel("timestep t2")
    ax.set_ylabel("timestep t1")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    fig.tight_layout()
    return fig


def plot_similarity_profile(deltas, profiles: Mapping[str, torch.Tensor], *, title: str = "", ax=None):
    """Similarity against ``|t1 - t2|``, one line per label in ``profiles``."""
    d = _as_numpy(deltas, "deltas", ndim=1)
    fig, ax = (plt.subplots(figsize=(7, 3.2)) if ax is None else (ax.figure, ax))
    for (label, p), style in zip(profiles.items(), ("-", "--", ":", "-.")):
        p = _as_numpy(p, f"profile {label!r}", ndim=1)
        if len(p) != len(d):
            raise ValueError(f"profile {label!r} has {len(p)} values but there are {len(d)} deltas")
        ax.plot(d, p, style, lw=1.5, label=label)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("|t1 - t2|")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _to_image(x: np.ndarray) -> np.ndarray:
    # (C, H, W) in [-1, 1] -> (H, W, C) or (H, W) in [0, 1]
    x = np.clip((x + 1) / 2, 0, 1)
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def plot_clean_estimates(x_t, x0_hat, timesteps, *, clean=None, title: str = ""):
    """Noisy inputs ``x_t`` (top row) above the clean-image estimates ``x0_hat`` (bottom row).

    ``x_t`` and ``x0_hat`` are ``(N, C, H, W)`` in ``[-1, 1]`` (``C`` = 1 or 3), one per entry of
    ``timesteps``; ``clean`` (``(C, H, W)``), when given, is drawn in an extra first column.
    Estimates outside ``[-1, 1]`` are clipped for display only.
    """
    xt = _as_numpy(x_t, "x_t", ndim=4)
    x0 = _as_numpy(x0_hat, "x0_hat", ndim=4)
    t = [int(v) for v in _as_numpy(timesteps, "timesteps", ndim=1)]
    if xt.shape != x0.shape or xt.shape[0] != len(t):
        raise ValueError(
            f"x_t {xt.shape} and x0_hat {x0.shape} must have the same shape (N, C, H, W) with N = {len(t)}"
        )
    if xt.shape[1] not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels, got {xt.shape[1]}")
    extra = clean is not None
    n_cols = len(t) + int(extra)
    # 4.6 in tall: room for each row's titles, which otherwise touch the images above them
    fig, axes = plt.subplots(2, n_cols, figsize=(1.9 * n_cols, 4.6), squeeze=False)
    cmap = "gray" if xt.shape[1] == 1 else None
    if extra:
        c = _as_numpy(clean, "clean", ndim=3)
        axes[0, 0].imshow(_to_image(c), cmap=cmap, vmin=0, vmax=1)
        axes[0, 0].set_title("x0 (clean)", fontsize=9)
        axes[1, 0].axis("off")
    for j, tj in enumerate(t):
        col = j + int(extra)
        axes[0, col].imshow(_to_image(xt[j]), cmap=cmap, vmin=0, vmax=1)
        axes[0, col].set_title(f"x_t, t={tj}", fontsize=9)
        axes[1, col].imshow(_to_image(x0[j]), cmap=cmap, vmin=0, vmax=1)
        axes[1, col].set_title(f"x0_hat, t={tj}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout(h_pad=1.5)
    return fig
