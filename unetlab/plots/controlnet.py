"""Plots for chapter 7: where ControlNet, T2I-Adapter and IP-Adapter enter the UNet, what they cost, what they do.

Every function draws a new figure and returns the ``Figure``. Images are expected in [-1, 1] (the data's
range) and shown in [0, 1]; control images in [0, 1].
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data import to_unit_range

__all__ = ["plot_entry_points", "plot_adapter_params", "plot_residual_norms", "show_controls"]

_COLOURS = {"ControlNet": "tab:blue", "T2I-Adapter": "tab:orange", "IP-Adapter": "tab:green"}


def plot_entry_points(skips: Sequence[tuple[str, tuple]], mid: tuple[str, tuple], intrablock: Sequence[tuple[str, tuple]],
                      cross_attentions: Sequence[str], title: str = ""):
    """The down path as a row of skips (bar height = channels, label = H×W) with each method's entry points.

    ``skips``: :func:`unetlab.skip_shapes`; ``mid``: ``mid_shape``; ``intrablock``: :func:`unetlab.intrablock_shapes`
    (its last entry, after the mid block, is used only by adapters with one feature more than down blocks, and
    is not drawn); ``cross_attentions``: the names of the UNet's ``attn2`` modules (down, mid and up path; the
    up path's are counted in the legend).
    """
    names = [n for n, _ in skips] + ["mid_block"]
    shapes = [s for _, s in skips] + [mid[1]]
    x = np.arange(len(names))
    channels = np.array([s[1] for s in shapes], dtype=float)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.bar(x, channels, color="0.85", edgecolor="0.4", label="skip / mid block (height: channels)")
    for i, s in enumerate(shapes):
        ax.text(x[i], channels[i] * 1.02, f"{s[2]}×{s[3]}", ha="center", va="bottom", fontsize=7)
    # ControlNet: one residual per skip + the mid block
    ax.scatter(x, channels * 0.5, marker="v", s=60, color=_COLOURS["ControlNet"], zorder=3,
               label=f"ControlNet: {len(skips)} skip residuals + mid")
    # T2I-Adapter: inside each down block (after its last ResNet+attention pair, or on its output)
    block_of = [n.split(".")[1] if n.startswith("down_blocks") else None for n in names]
    t2i_x = []
    for where, _ in intrablock[:-1]:
        block = where.split()[0].split(".")[1]
        idx = [i for i, b in enumerate(block_of) if b == block and "downsamplers" not in names[i]]
        t2i_x.append(idx[-1])
    ax.scatter(np.array(t2i_x) + 0.25, channels[t2i_x] * 0.75, marker="D", s=45, color=_COLOURS["T2I-Adapter"], zorder=3,
               label=f"T2I-Adapter: {len(t2i_x)} features, inside the down blocks")
    # IP-Adapter: every cross-attention, counted per place
    down_ca = {}
    for n in cross_attentions:
        if n.startswith("down_blocks"):
            key = ".".join(n.split(".")[:4])  # down_blocks.i.attentions.j
            down_ca[key] = down_ca.get(key, 0) + 1
    ip_x = [i for i, n in enumerate(names) if n in down_ca]
    if any(n.startswith("mid_block") for n in cross_attentions):
        ip_x.append(len(names) - 1)
    n_up = sum(1 for n in cross_attentions if n.startswith("up_blocks"))
    ax.scatter(np.array(ip_x) - 0.25, channels[ip_x] * 0.25, marker="*", s=90, color=_COLOURS["IP-Adapter"], zorder=3,
               label=f"IP-Adapter: all {len(cross_attentions)} cross-attentions ({n_up} more on the up path, not drawn)")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("down_blocks.", "d").replace("attentions.", "a").replace("resnets.", "r")
                        .replace("downsamplers.0", "down") for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("channels")
    ax.set_xlabel("skip (d1.a0 = down_blocks.1.attentions.0, d3.r1 = down_blocks.3.resnets.1, down = the block's downsampler)",
                  fontsize=8)
    ax.set_ylim(0, channels.max() * 1.25)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "where each method enters the UNet (down path and mid block)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_adapter_params(tables: Mapping[str, Mapping[str, int]], unets: Mapping[str, int]):
    """Parameters each method adds, as a fraction of its UNet: one group of bars per model.

    ``tables``: model name -> {method: parameters} (``adapter_params(name).counts``); ``unets``: model name ->
    the UNet's own parameters.
    """
    models = list(tables)
    methods = list(next(iter(tables.values())))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        share = [100 * tables[m][method] / unets[m] for m in models]
        bars = ax.bar(np.arange(len(models)) + (j - (len(methods) - 1) / 2) * width, share, width,
                      color=_COLOURS.get(method), label=method)
        for b, m in zip(bars, models):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{tables[m][method] / 1e6:.1f} M", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(models)))
    ax.set_xticklabels([f"{m}\n(UNet {unets[m] / 1e6:.0f} M)" for m in models], fontsize=8)
    ax.set_ylabel("% of the UNet's parameters")
    ax.legend(fontsize=8)
    ax.set_title("what steering the UNet costs (labels: parameters added)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_residual_norms(norms: Mapping[str, Sequence[float]], names: Sequence[str], title: str = ""):
    """RMS of each residual (down residuals and the mid one), one line per setting (label -> values)."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(names))
    for label, values in norms.items():
        ax.plot(x, values, marker="o", markersize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("down_blocks.", "d").replace("attentions.", "a").replace("resnets.", "r")
                        .replace("downsamplers.0", "down") for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("RMS of the residual")
    ax.set_xlabel("skip (d1.a0 = down_blocks.1.attentions.0, down = the block's downsampler)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title or "residual size per skip", fontsize=10)
    fig.tight_layout()
    return fig


def show_controls(controls: torch.Tensor, rows: Mapping[str, torch.Tensor], n: int = 6, size: float = 1.4,
                  title: str | None = None):
    """First row: control images ``(N, 1, H, W)`` in [0, 1]; then one row per entry of ``rows`` (label -> images)."""
    labels = ["control"] + list(rows)
    fig, axes = plt.subplots(len(labels), n, figsize=(n * size + 1.8, len(labels) * size), squeeze=False)
    for r, label in enumerate(labels):
        for c in range(n):
            ax = axes[r, c]
            if r == 0:
                ax.imshow(controls[c, 0].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                img = to_unit_range(rows[label][c].detach().float().cpu()).permute(1, 2, 0).numpy()
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
