"""Record the attention probabilities inside a UNet: ``capture_attention`` and ``AttentionStore``.

A context manager hooks the attention layers of a model (``unetlab.attention.Attention``: SD's
self- and cross-attention, in ``SDUNet`` at any config, real SD weights included; and study note 003's
``SelfAttention``), records ``softmax(q kᵀ · scale)`` on every call, and takes every hook off again
on exit, also when the ``with`` body raises.

    >>> with capture_attention(unet, kind="cross") as store:
    ...     for t in timesteps:
    ...         store.step = int(t)                      # tag the records of this call
    ...         eps = unet(x, t, context)
    >>> store.maps_for_token(3)                          # {layer path: (B, h, w)}, mean over heads, steps
    >>> store.aggregate(token=3, size=(32, 32))          # (B, 32, 32): upsampled, mean over layers

What a record holds (``AttentionRecord``)
    ``layer``  full module path, e.g. ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``
    ``kind``   ``"self"`` (attn1: pixels attend to pixels) or ``"cross"`` (attn2: pixels attend to text)
    ``call``   how many times this layer had been recorded before (0, 1, 2, …)
    ``step``   the label set with ``store.step = ...`` (e.g. the timestep); the call index if none was set
    ``probs``  ``(B, heads, N_query, N_key)``, every row sums to 1 (``heads`` is 1 with ``average_heads``)
    ``size``   ``(h, w)`` of the query grid, ``h · w = N_query``

Outputs are unchanged: an SD ``Attention`` call that is recorded takes the explicit-softmax path
(see ``unetlab.attention``), which equals the fused SDPA path up to float rounding (~1e-6 in
float32) and is the *same* computation as ``attention_backend("explicit")``, bit for bit. Seed
003's ``SelfAttention`` is recorded by recomputing its probabilities from its own ``norm``/``qkv``
in a forward pre-hook; its output is not touched at all.

Only what is recorded costs memory. Layers that ``kind`` and ``layers`` leave out carry no hook;
a call that ``max_resolution`` leaves out is refused by the hook's ``wants`` before anything is
computed, so it keeps SDPA and its ``(B, heads, N, N)`` probabilities never exist (measured in
``benchmarks/RESULTS.md``: on the tiny config at 48×48, batch 2, self-attention ≤ 24×24 recorded,
one forward grew 71 MiB, 54 of them the records, where it grew 387 MiB before; on SD 1.5 at 64×64
the same kind of capture costs what it keeps instead of 2.3 GiB more).

Choosing what to record (memory: SD 1.5's self-attention at a 64×64 latent is 8 × 4096 × 4096
floats, 512 MiB, per layer, per image, per step). A selection never comes back empty in silence:
    ``kind``            ``"cross"`` (default), ``"self"`` or ``"both"``
    ``layers``          None (all), a glob on the module path (``"up_blocks.*attn2"``), a compiled
                        ``re.Pattern`` (searched), a callable ``path -> bool``, or a list of these (any
                        may match). A filter that matches no attention layer raises ``ValueError``
                        listing the paths it could have matched.
    ``max_resolution``  record self-attention only where the query grid has at most this many
                        positions (an int such as ``32 * 32``, or ``(h, w)``); larger self-attention
                        layers keep running on SDPA, unrecorded. Cross-attention maps (``N_key`` =
                        text tokens) are small and always kept. A forward of the model in which the
                        limit leaves out every hooked layer raises ``ValueError`` listing the grids;
                        so does a ``max_resolution`` given to a capture that hooks no self-attention.
    ``average_heads``   store the mean over heads (``heads`` = 1): 8× less memory for SD.
    ``batch``           keep only these batch entries (an int, slice or list), e.g. the conditional
                        half of a classifier-free-guidance batch. A call whose batch size the
                        selection does not fit (``batch=1`` on a batch of 1) raises ``ValueError``
                        naming the batch size, before anything is computed.
    ``to_cpu`` / ``dtype``  where and how records are kept (default: CPU, float32).

A ``with`` block that records nothing (the model never called inside it) raises ``ValueError`` at its end.

Reading the records (a ``kind``, ``layers``, ``steps`` or ``size`` that matches no record raises
``ValueError`` listing what the store holds; so does a step label that was never recorded)
    ``store.select(kind=, layers=, steps=, size=)``       the records that match (never empty)
    ``store.maps_for_token(token, ...)``                  ``{layer: (B, h, w)}`` cross-attention to a token
    ``store.maps_for_query(y, x, ...)``                   ``{layer: (B, h, w)}`` self-attention of one pixel
    ``store.aggregate(token=... | query=..., size=...)``  upsample to one size, mean over layers
    ``store.by_resolution(maps)``                         ``{(h, w): (B, h, w)}`` mean per resolution
    ``store.summary()``                                   a text table: layer, kind, size, heads, calls
Free functions ``upsample_maps`` and ``aggregate_maps`` do the same on any ``{name: (…, h, w)}``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.attention import Attention, SelfAttention, Transformer2DModel

__all__ = [
    "capture_attention",
    "AttentionStore",
    "AttentionRecord",
    "attention_layers",
    "attention_layout",
    "upsample_maps",
    "aggregate_maps",
    "short_layer_name",
]

KINDS = ("self", "cross", "both")


# ============================================================================================
# Records and the store
# ============================================================================================
@dataclass
class AttentionRecord:
    """One call of one attention layer: probabilities ``(B, heads, N_query, N_key)`` and where."""

    layer: str
    kind: str
    call: int
    step: Any
    probs: torch.Tensor
    size: tuple[int, int]

    @property
    def heads(self) -> int:
        return self.probs.shape[1]

    @property
    def num_queries(self) -> int:
        return self.probs.shape[2]

    @property
    def num_keys(self) -> int:
        return self.probs.shape[3]

    def __repr__(self) -> str:
        return (
            f"AttentionRecord(layer={self.layer!r}, kind={self.kind!r}, call={self.call}, step={self.step!r}, "
            f"probs={tuple(self.probs.shape)}, size={self.size})"
        )


def short_layer_name(path: str) -> str:
    """A compact name for plots: ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``down1.0.attn2``.

    The transformer-block index is kept only when it is not 0 (``up0.2.t3.attn1`` for SDXL).
    Paths of another form come back unchanged.
    """
    m = re.fullmatch(r"(?:(down|up)_blocks\.(\d+)|(mid)_block)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(\w+)", path)
    if not m:
        return path
    where, block, mid, attn, tblock, leaf = m.groups()
    head = f"{where}{block}" if where else mid
    tpart = f".t{tblock}" if tblock != "0" else ""
    return f"{head}.{attn}{tpart}.{leaf}"


def _shorten(items: list, n: int = 6) -> str:
    """``[a, b, c, … (N in all)]``: a list short enough for an error message."""
    items = list(items)
    shown = ", ".join(repr(i) if not isinstance(i, str) else i for i in items[:n])
    return f"[{shown}{f', … ({len(items)} in all)' if len(items) > n else ''}]"


def _as_size(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return value[0] * value[1]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{name} must be a positive int (number of query positions) or (h, w), got {value!r}")


def _layer_matcher(layers) -> Callable[[str], bool]:
    """Turn a layer filter (glob, regex, callable, list of these) into ``path -> bool``."""
    if layers is None:
        return lambda path: True
    if isinstance(layers, str):
        pattern = layers
        return lambda path: fnmatch.fnmatchcase(path, pattern)
    if isinstance(layers, re.Pattern):
        return lambda path: layers.search(path) is not None
    if callable(layers):
        return lambda path: bool(layers(path))
    if isinstance(layers, (list, tuple, set)):
        if not layers:
            raise ValueError("layers must not be an empty list; use None for every layer")
        matchers = [_layer_matcher(item) for item in layers]
        return lambda path: any(m(path) for m in matchers)
    raise TypeError(
        "layers must be None, a glob string, a compiled re.Pattern, a callable path -> bool, "
        f"or a list of these; got {type(layers).__name__}"
    )


def _check_batch(batch):
    """Validate the type of ``capture_attention(batch=...)``; returns it (a list for sequences)."""
    if batch is None or isinstance(batch, slice):
        return batch
    if isinstance(batch, int) and not isinstance(batch, bool):
        return batch
    if isinstance(batch, (list, tuple, range)):
        rows = list(batch)
        if not rows:
            raise ValueError("batch must not be an empty list; use None for every batch entry")
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in rows):
            raise TypeError(f"batch entries must be ints, got {rows!r}")
        return rows
    raise TypeError(f"batch must be None, an int, a slice or a list of ints, got {type(batch).__name__}")


def _batch_rows(batch, size: int) -> list[int] | None:
    """The rows ``batch`` selects from a call of batch size ``size`` (None: all of them).

    Raises ``ValueError`` naming the batch size when ``batch`` does not fit this call:
    an index outside ``[-size, size)`` or a slice that selects nothing.
    """
    if batch is None:
        return None
    if isinstance(batch, slice):
        rows = list(range(size))[batch]
        if not rows:
            raise ValueError(f"batch={batch!r} selects no entry of a call with batch size {size}")
        return rows
    indices = [batch] if isinstance(batch, int) else batch
    outside = [b for b in indices if not -size <= b < size]
    if outside:
        raise ValueError(
            f"batch={batch!r} does not fit a call with batch size {size}: "
            f"{outside} {'is' if len(outside) == 1 else 'are'} outside [{-size}, {size})"
        )
    return [b % size for b in indices]


class AttentionStore:
    """The records of one ``capture_attention`` block, with helpers to turn them into maps.

    ``hooked``: ``{path: kind}`` of the layers a capture hooked (model order); ``layers``: the paths
    that have records (call order); ``records``: every recorded call. Set ``store.step = label``
    (e.g. the timestep) before a forward to tag the calls that follow.
    """

    def __init__(self, layers: dict[str, str] | None = None):
        # path -> kind of every hooked layer, in model order
        self.hooked: dict[str, str] = dict(layers or {})
        self.records: list[AttentionRecord] = []
        self._step: Any = None
        self._calls: dict[str, int] = {}

    # ---- step labels --------------------------------------------------------------------
    @property
    def step(self) -> Any:
        """The label given to the records of the calls that follow (None: use the call index)."""
        return self._step

    @step.setter
    def step(self, label: Any) -> None:
        if isinstance(label, torch.Tensor):
            if label.numel() != 1:
                raise ValueError(f"a step label must be a single value, got a tensor of shape {tuple(label.shape)}")
            label = label.item()
        self._step = label

    def set_step(self, label: Any) -> "AttentionStore":
        """Same as ``store.step = label``; returns the store."""
        self.step = label
        return self

    # ---- recording ----------------------------------------------------------------------
    def _add(self, layer: str, kind: str, probs: torch.Tensor, size: tuple[int, int]) -> None:
        call = self._calls.get(layer, 0)
        self._calls[layer] = call + 1
        step = self._step if self._step is not None else call
        self.records.append(AttentionRecord(layer, kind, call, step, probs, size))

    def clear(self) -> None:
        """Forget every record (the hooks stay while the ``with`` block runs)."""
        self.records.clear()
        self._calls.clear()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AttentionRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"AttentionStore({len(self.records)} records, {len(self.layers)} layers, {self.nbytes() / 2**20:.1f} MiB)"

    def nbytes(self) -> int:
        """Memory held by the recorded probabilities, in bytes."""
        return sum(r.probs.numel() * r.probs.element_size() for r in self.records)

    # ---- looking things up --------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Paths of the layers that have records, in the order they were first called."""
        return list(dict.fromkeys(r.layer for r in self.records))

    @property
    def steps(self) -> list:
        """Step labels that occur in the records, in order of first occurrence."""
        return list(dict.fromkeys(r.step for r in self.records))

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Query-grid sizes ``(h, w)`` that occur, largest first."""
        return sorted({r.size for r in self.records}, key=lambda s: -s[0] * s[1])

    def select(self, *, kind: str | None = None, layers=None, steps=None, size=None) -> list[AttentionRecord]:
        """Records of one ``kind`` ("self"/"cross"/None: both), ``layers`` (filter as in
        ``capture_attention``), ``steps`` (a label or a list of labels) and ``size`` ((h, w)).

        Never returns an empty list: raises ``ValueError`` when the store is empty, when one
        argument matches none of the records (the message lists the kinds, layers, steps or sizes
        recorded), when a step label was never recorded, or when the arguments together match nothing.
        """
        if kind not in (None, "self", "cross"):
            raise ValueError(f"kind must be 'self', 'cross' or None, got {kind!r}")
        if not self.records:
            raise ValueError(
                "the store holds no records: record inside `with capture_attention(model) as store:` by calling the model there"
            )
        records = self.records
        if kind is not None:
            records = [r for r in records if r.kind == kind]
            if not records:
                kinds = sorted({r.kind for r in self.records})
                raise ValueError(
                    f"no {kind}-attention records: the store holds only {'/'.join(kinds)}-attention records "
                    f"({len(self.records)}); capture with kind={kind!r} or 'both'"
                )
        if layers is not None:
            match = _layer_matcher(layers)
            recorded = list(dict.fromkeys(r.layer for r in records))
            records = [r for r in records if match(r.layer)]
            if not records:
                raise ValueError(
                    f"layers={layers!r} matches none of the {len(recorded)} layers recorded"
                    f"{f' with kind={kind!r}' if kind else ''}: {_shorten(recorded)}"
                )
        if steps is not None:
            wanted = list(steps) if isinstance(steps, (list, tuple, set)) else [steps]
            if not wanted:
                raise ValueError("steps must not be an empty list; use None for every step")
            recorded_steps = list(dict.fromkeys(r.step for r in records))
            missing = [label for label in wanted if label not in recorded_steps]
            if missing:
                where = " for these kinds and layers" if kind is not None or layers is not None else ""
                raise ValueError(
                    f"steps {missing!r} were never recorded{where}; the steps recorded are {_shorten(recorded_steps, 12)} "
                    "(set store.step = label before each forward to label them)"
                )
            records = [r for r in records if r.step in wanted]
        if size is not None:
            size = tuple(size)
            recorded_sizes = sorted({r.size for r in records}, key=lambda s: -s[0] * s[1])
            records = [r for r in records if r.size == size]
            if not records:
                raise ValueError(f"size={size!r} was not recorded; the grids recorded are {recorded_sizes}")
        if not records:
            raise ValueError(
                f"no records match kind={kind!r}, layers={layers!r}, steps={steps!r}, size={size!r} together; "
                f"the store holds {len(self.records)} records of layers {_shorten(self.layers)} and steps "
                f"{_shorten(self.steps, 12)}"
            )
        return records

    # ---- maps ---------------------------------------------------------------------------
    def _per_layer(self, records, column_fn, heads, per_step) -> dict[str, torch.Tensor]:
        """Group records by layer; column_fn(record) -> (B, heads, N_query); reshape to the grid."""
        grouped: dict[str, list[AttentionRecord]] = {}
        for r in records:
            grouped.setdefault(r.layer, []).append(r)
        out = {}
        for layer, recs in grouped.items():
            per_call = []
            for r in recs:
                h, w = r.size
                # (B, heads, N_query) -> (B, heads, h, w)
                maps = column_fn(r).float().reshape(r.probs.shape[0], r.heads, h, w)
                if heads == "mean":
                    # (B, h, w)
                    maps = maps.mean(dim=1)
                elif heads == "all":
                    pass
                else:
                    if not isinstance(heads, int) or not -r.heads <= heads < r.heads:
                        raise ValueError(f"heads must be 'mean', 'all' or a head index below {r.heads}, got {heads!r}")
                    # (B, h, w)
                    maps = maps[:, heads]
                per_call.append(maps)
            # (B, steps, [heads,] h, w) or the mean over steps
            stacked = torch.stack(per_call, dim=1)
            out[layer] = stacked if per_step else stacked.mean(dim=1)
        return out

    def maps_for_token(
        self, token, *, layers=None, steps=None, heads="mean", per_step: bool = False
    ) -> dict[str, torch.Tensor]:
        """Cross-attention paid by every pixel to text token(s) ``token``, per layer.

        ``token``: an index into the text (as the text encoder saw it) or a list of indices (their
        probabilities are added: the attention a word split into several tokens receives).
        ``heads``: "mean" (default), "all" (keep a heads axis) or one head's index.
        ``per_step``: keep a steps axis instead of averaging over the selected calls.

        Returns ``{layer path: (B, [steps,] [heads,] h, w)}``, in call order.
        """
        tokens = [token] if isinstance(token, int) else list(token)
        if not tokens or not all(isinstance(t, int) for t in tokens):
            raise ValueError(f"token must be an int or a list of ints, got {token!r}")
        records = self.select(kind="cross", layers=layers, steps=steps)
        n_keys = records[0].num_keys
        for t in tokens:
            if not -n_keys <= t < n_keys:
                raise ValueError(f"token index {t} is out of range: the text has {n_keys} tokens")
        # (B, heads, N_query): probability mass on the chosen tokens
        return self._per_layer(records, lambda r: r.probs[..., tokens].sum(dim=-1), heads, per_step)

    def maps_for_query(
        self, y, x, *, relative: bool = False, layers=None, steps=None, heads="mean", per_step: bool = False
    ) -> dict[str, torch.Tensor]:
        """Self-attention of one query pixel ``(y, x)`` over all pixels, per layer.

        ``(y, x)`` are grid coordinates of each layer (they must fit every selected layer), or with
        ``relative=True`` fractions in ``[0, 1)`` of height and width, mapped onto each layer's grid.
        Returns ``{layer path: (B, [steps,] [heads,] h, w)}``: row ``y·w + x`` of the probabilities.
        """
        records = self.select(kind="self", layers=layers, steps=steps)

        def row(r: AttentionRecord) -> torch.Tensor:
            h, w = r.size
            if relative:
                if not (0 <= y < 1 and 0 <= x < 1):
                    raise ValueError(f"relative query coordinates must be in [0, 1), got ({y}, {x})")
                qy, qx = int(y * h), int(x * w)
            else:
                if not (isinstance(y, int) and isinstance(x, int) and 0 <= y < h and 0 <= x < w):
                    raise ValueError(
                        f"query ({y}, {x}) is outside layer {r.layer}'s {h}×{w} grid; "
                        "select layers of one size or pass relative=True"
                    )
                qy, qx = y, x
            # (B, heads, N_key): the query's row
            return r.probs[:, :, qy * w + qx, :]

        return self._per_layer(records, row, heads, per_step)

    def aggregate(
        self,
        *,
        token=None,
        query=None,
        size: tuple[int, int] | None = None,
        layers=None,
        steps=None,
        heads="mean",
        normalize: bool = False,
    ) -> torch.Tensor:
        """One map ``(B, H, W)``: every layer's map upsampled to ``size`` (default: the largest grid
        recorded), then averaged over layers (and heads and steps).

        Give ``token`` (cross-attention) or ``query=(fy, fx)`` in relative coordinates (self-attention).
        ``normalize``: rescale each image's map to [0, 1].
        """
        if (token is None) == (query is None):
            raise ValueError("give exactly one of token= (cross-attention) or query=(fy, fx) (self-attention)")
        if heads == "all":
            raise ValueError("aggregate averages over heads: use heads='mean' or one head's index")
        if token is not None:
            maps = self.maps_for_token(token, layers=layers, steps=steps, heads=heads)
        else:
            maps = self.maps_for_query(*query, relative=True, layers=layers, steps=steps, heads=heads)
        return aggregate_maps(maps, size=size, normalize=normalize)

    @staticmethod
    def by_resolution(maps: dict[str, torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """``{layer: (…, h, w)}`` -> ``{(h, w): mean of the layers of that size}``, largest first."""
        groups: dict[tuple[int, int], list[torch.Tensor]] = {}
        for m in maps.values():
            groups.setdefault(tuple(m.shape[-2:]), []).append(m)
        order = sorted(groups, key=lambda s: -s[0] * s[1])
        return {s: torch.stack(groups[s]).mean(dim=0) for s in order}

    def summary(self) -> str:
        """A text table: one line per recorded layer with kind, grid, heads, keys and calls."""
        rows = [("layer", "kind", "grid", "heads", "keys", "calls")]
        for layer in self.layers:
            recs = [r for r in self.records if r.layer == layer]
            r = recs[0]
            rows.append((layer, r.kind, f"{r.size[0]}x{r.size[1]}", str(r.heads), str(r.num_keys), str(len(recs))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ============================================================================================
# Map helpers
# ============================================================================================
def upsample_maps(maps, size: tuple[int, int], mode: str = "bilinear") -> Any:
    """Resize maps ``(…, h, w)`` to ``size`` (a tensor, or a dict/list of tensors)."""
    if isinstance(maps, dict):
        return {k: upsample_maps(v, size, mode) for k, v in maps.items()}
    if isinstance(maps, (list, tuple)):
        return [upsample_maps(v, size, mode) for v in maps]
    if not isinstance(maps, torch.Tensor) or maps.ndim < 2:
        raise ValueError(f"a map must be a tensor of shape (..., h, w), got {getattr(maps, 'shape', type(maps).__name__)}")
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    lead = maps.shape[:-2]
    # (N, 1, h, w) -> (N, 1, H, W)
    flat = maps.float().reshape(-1, 1, *maps.shape[-2:])
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=size, mode=mode, **kwargs)
    return out.reshape(*lead, *size)


def aggregate_maps(maps, size: tuple[int, int] | None = None, normalize: bool = False) -> torch.Tensor:
    """Upsample every map ``(…, h, w)`` to ``size`` (default: the largest) and average them.

    ``maps``: a dict ``{name: tensor}`` or a list of tensors with equal leading shapes.
    ``normalize``: rescale each map of the result to [0, 1] over its last two axes.
    """
    items = list(maps.values()) if isinstance(maps, dict) else list(maps)
    if not items:
        raise ValueError("aggregate_maps needs at least one map")
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in items), key=lambda s: s[0] * s[1])
    # (layers, …, H, W) -> (…, H, W)
    mean = torch.stack([upsample_maps(m, size) for m in items]).mean(dim=0)
    if normalize:
        lo = mean.amin(dim=(-2, -1), keepdim=True)
        hi = mean.amax(dim=(-2, -1), keepdim=True)
        mean = (mean - lo) / (hi - lo).clamp_min(1e-12)
    return mean


# ============================================================================================
# The context manager
# ============================================================================================
def _kind_of(module: nn.Module) -> str:
    if isinstance(module, Attention):
        return "cross" if module.is_cross_attention else "self"
    return "self"  # study note 003's SelfAttention


def attention_layers(model: nn.Module) -> dict[str, str]:
    """``{module path: "self" | "cross"}`` for every attention layer ``capture_attention`` can hook."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {
        name: _kind_of(module)
        for name, module in model.named_modules()
        if isinstance(module, (Attention, SelfAttention))
    }


def attention_layout(model: nn.Module, *args, **kwargs) -> list[tuple[str, str, tuple[int, int]]]:
    """Run ``model(*args, **kwargs)`` once and list ``(attention layer path, "self" | "cross", (h, w))``
    in call order, ``(h, w)`` being the grid of query pixels the layer saw.

    Only shapes are read, so a model and inputs on the meta device work (SD 1.5 in no memory):
    the grid is the input ``(B, C, h, w)`` of the layer's ``Transformer2DModel`` (or of study note 003's
    ``SelfAttention``). Every hook is removed on exit. Raises ``ValueError`` when the model has no
    attention layer.
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layer (unetlab Attention or SelfAttention)")
    grid: dict[str, tuple[int, int]] = {}
    out: list[tuple[str, str, tuple[int, int]]] = []

    def remember(module, args):
        # (B, C, h, w) -> (h, w)
        grid["hw"] = tuple(int(v) for v in args[0].shape[-2:])

    def note(path: str):
        def pre_hook(module, args):
            if isinstance(module, SelfAttention):
                remember(module, args)
            out.append((path, layers[path], grid["hw"]))
        return pre_hook

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, Transformer2DModel):
                handles.append(module.register_forward_pre_hook(remember))
        for path in layers:
            handles.append(model.get_submodule(path).register_forward_pre_hook(note(path)))
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out


def _grid_size(n: int, hint: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) with h·w = n: the owning transformer's input size if known, else a square, else (1, n)."""
    if hint is not None and hint[0] * hint[1] == n:
        return hint
    s = math.isqrt(n)
    return (s, s) if s * s == n else (1, n)


def _self_attention_probs(module: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Study note 003's SelfAttention's probabilities, recomputed with its own layers: (B, 1, HW, HW)."""
    B, C, H, W = x.shape
    q, k, _ = module.qkv(module.norm(x)).chunk(3, dim=1)
    # (B, HW, C)
    q = q.reshape(B, C, H * W).transpose(1, 2)
    k = k.reshape(B, C, H * W).transpose(1, 2)
    # (B, HW, HW), the same operations as SelfAttention.forward
    weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / (C**0.5), dim=-1)
    return weights[:, None]


@contextlib.contextmanager
def capture_attention(
    model: nn.Module,
    kind: str = "cross",
    layers=None,
    max_resolution=None,
    *,
    average_heads: bool = False,
    batch=None,
    to_cpu: bool = True,
    dtype: torch.dtype | None = torch.float32,
    store: AttentionStore | None = None,
) -> Iterator[AttentionStore]:
    """Record attention probabilities of ``model`` inside a ``with`` block; yields an ``AttentionStore``.

    See the module docstring for the arguments. Only what is recorded costs memory: layers that
    ``kind`` and ``layers`` leave out carry no hook at all, and a call that ``max_resolution``
    leaves out keeps SDPA (the hook's ``wants`` says no before anything is computed), so the
    ``(B, heads, N, N)`` probabilities of an unrecorded layer are never built.

    Raises ``ValueError`` (the message names what it saw and what would fit):
      * at entry: ``kind`` unknown; the model has no attention layers of that kind; ``layers``
        matches none of them (the paths that exist are listed); ``max_resolution`` not positive, or
        given while no self-attention layer is hooked;
        ``batch`` an empty list (``TypeError`` for a ``batch`` of another type);
      * at a call: ``batch`` does not fit the call's batch size; a forward of ``model`` ran hooked
        layers but recorded none of them (``max_resolution`` below every grid in that forward);
      * at the end of the ``with`` block: nothing was recorded (the model was never called inside).
    Every hook is removed on exit, also on an exception; the records stay in the store.
    ``store=`` appends to an existing store (e.g. a second capture).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    max_queries = _as_size(max_resolution, "max_resolution")
    batch = _check_batch(batch)
    available = attention_layers(model)
    if not available:
        raise ValueError(
            f"{type(model).__name__} has no attention layers (unetlab.attention.Attention or SelfAttention) to record"
        )
    wanted_kinds = ("self", "cross") if kind == "both" else (kind,)
    of_kind = {p: k for p, k in available.items() if k in wanted_kinds}
    if not of_kind:
        raise ValueError(
            f"{type(model).__name__} has no {kind}-attention layers; it has {len(available)} "
            f"{'/'.join(sorted(set(available.values())))}-attention layers"
        )
    match = _layer_matcher(layers)
    chosen = {p: k for p, k in of_kind.items() if match(p)}
    if not chosen:
        raise ValueError(
            f"layers={layers!r} matches none of the {kind}-attention layers of {type(model).__name__}. "
            f"Layer paths look like: {_shorten(of_kind)}. Strings are globs on the full path (use '*', "
            "e.g. '*attn2' or 'up_blocks.*'); pass re.compile(...) for a regular expression."
        )
    if max_queries is not None and "self" not in chosen.values():
        raise ValueError(
            f"max_resolution={max_resolution!r} bounds self-attention only, and this capture hooks none "
            f"(kind={kind!r}, layers={layers!r} select {len(chosen)} cross-attention layers); "
            "drop max_resolution, or record kind='self' or 'both'"
        )

    store = store if store is not None else AttentionStore()
    store.hooked.update(chosen)
    modules = dict(model.named_modules())
    handles: list = []

    # query-grid size (H, W) of the feature map entering each Transformer2DModel, so that an
    # attention layer inside it knows how its N_query tokens lie on the grid
    current_size: dict[int, tuple[int, int]] = {}
    owner: dict[str, nn.Module] = {}
    for path in chosen:
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            parent = modules[".".join(parts[:i])]
            if isinstance(parent, Transformer2DModel):
                owner[path] = parent
                break

    # what this capture saw: calls of hooked layers and how many were recorded, in all and in
    # the model forward now running (a forward that records nothing is an error, not a silence)
    seen = {"calls": 0, "recorded": 0}
    this_forward = {"skipped": [], "recorded": 0}

    def remember_size(module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            current_size[id(module)] = (int(x.shape[-2]), int(x.shape[-1]))

    def wanted(path: str, layer_kind: str, batch_size: int, num_queries: int) -> bool:
        # asked before a hooked layer computes anything: True = build and record the probabilities
        seen["calls"] += 1
        _batch_rows(batch, batch_size)  # raises when the selection does not fit this call
        if layer_kind == "self" and max_queries is not None and num_queries > max_queries:
            this_forward["skipped"].append((path, num_queries))
            return False
        return True

    def keep(probs: torch.Tensor) -> torch.Tensor:
        # (B, heads, N_query, N_key): detached, optionally fewer images / heads, moved, cast
        rows = _batch_rows(batch, probs.shape[0])
        kept = probs.detach() if rows is None else probs.detach()[rows]
        if average_heads:
            kept = kept.float().mean(dim=1, keepdim=True)
        if to_cpu:
            kept = kept.to("cpu")
        if dtype is not None:
            kept = kept.to(dtype)
        if kept.untyped_storage().data_ptr() == probs.untyped_storage().data_ptr():
            # still the model's own tensor (or a view of it): keep a compact copy of our own
            kept = kept.clone()
        return kept

    def record(path: str, layer_kind: str, probs: torch.Tensor, size: tuple[int, int]) -> None:
        store._add(path, layer_kind, keep(probs), size)
        seen["recorded"] += 1
        this_forward["recorded"] += 1

    def make_wants(path: str, layer_kind: str):
        def wants(module: Attention, batch_size: int, num_queries: int, num_keys: int) -> bool:
            return wanted(path, layer_kind, batch_size, num_queries)

        return wants

    def make_attention_hook(path: str, layer_kind: str):
        def hook(module: Attention, probs: torch.Tensor):
            n = probs.shape[2]
            size = _grid_size(n, current_size.get(id(owner[path])) if path in owner else None)
            record(path, layer_kind, probs, size)
            return None

        return hook

    def make_self_attention_hook(path: str):
        def pre_hook(module: SelfAttention, args):
            x = args[0]
            if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == module.channels):
                return None  # let SelfAttention.forward raise its own clear error
            if not wanted(path, "self", x.shape[0], x.shape[-2] * x.shape[-1]):
                return None
            with torch.no_grad():
                probs = _self_attention_probs(module, x)
            record(path, "self", probs, (int(x.shape[-2]), int(x.shape[-1])))
            return None

        return pre_hook

    def forward_starts(module, args):
        this_forward["skipped"], this_forward["recorded"] = [], 0

    def forward_ends(module, args, output):
        if this_forward["skipped"] and not this_forward["recorded"]:
            grids = sorted({n for _, n in this_forward["skipped"]}, reverse=True)
            raise ValueError(
                f"capture_attention recorded nothing in this forward of {type(model).__name__}: "
                f"max_resolution={max_resolution!r} ({max_queries} query positions) is below every hooked "
                f"self-attention layer it ran, whose query grids had {grids} positions "
                f"({len(this_forward['skipped'])} calls, e.g. {this_forward['skipped'][0][0] or type(model).__name__}). "
                "Raise max_resolution, or record kind='cross'."
            )

    try:
        for transformer in {id(m): m for m in owner.values()}.values():
            handles.append(transformer.register_forward_pre_hook(remember_size))
        for path, layer_kind in chosen.items():
            module = modules[path]
            if isinstance(module, Attention):
                handles.append(
                    module.register_probs_hook(make_attention_hook(path, layer_kind), wants=make_wants(path, layer_kind))
                )
            else:
                handles.append(module.register_forward_pre_hook(make_self_attention_hook(path)))
        # prepend: the count must restart before the layer hooks of the same module run (a model that is one layer)
        handles.append(model.register_forward_pre_hook(forward_starts, prepend=True))
        handles.append(model.register_forward_hook(forward_ends))
        yield store
        if not seen["recorded"]:
            if seen["calls"]:
                why = (
                    f"the hooked layers ran {seen['calls']} times but max_resolution={max_resolution!r} "
                    "left every call out"
                )
            else:
                why = "no hooked layer ran inside the with block: call the model inside it"
            raise ValueError(f"capture_attention recorded nothing ({len(chosen)} {kind}-attention layers hooked): {why}")
    finally:
        for handle in handles:
            handle.remove()
