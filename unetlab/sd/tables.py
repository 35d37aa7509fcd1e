"""Study-note-000-style tables of the SD UNet, computed live by tracing the model on the meta device.

Study note 000 describes the SD 1.5 UNet with hand-written tables (resolution and channels per block,
ResNets and transformers, inputs). Here the same tables are *measured*: the UNet is built on the
meta device (no weights, no memory), one forward runs on meta tensors — shapes only, instant even
for SDXL — and :func:`unetlab.trace_shapes` records every block's input and output shapes.

API
---
``block_table(config_or_name, latent=None, batch=1)``
    One row per down block, the mid block and each up block: type, resolution in→out,
    channels in→out, number of ResNets and transformers, BasicTransformerBlocks per transformer
    (``layers``: SDXL's 1/2/10), how many skips the block saves (down) or takes (up), and which
    inputs it really reads (``h`` — the hidden state from the block before —, ``time_emb``,
    ``context``, ``skips``): a block without attention is handed ``context`` and ignores it.
``skip_table(config_or_name, latent=None, batch=1)``
    One row per up-block ResNet: channels of the hidden state + channels of the skip it
    concatenates = the ResNet's input channels, and which down-path output the skip came from.
    (Study note 000's "1280 + 1280 -> 1280" column simplifies exactly this.)
``io_table(config_or_name, latent=None, batch=1)``
    The modules around the blocks: ``time_proj`` (sinusoidal, (1, 320)), ``time_embedding``
    (MLP, ``time_emb`` (1, 1280) — the width every ResNet sees), SDXL's ``add_embedding``,
    ``conv_in``, ``conv_norm_out``, ``conv_out``.
``Table``
    What the functions return: ``str(table)`` is a deterministic plain-text table (for
    notebooks and the CLI), ``table.records()`` the rows as dicts, ``table.columns``/``.rows``.
``cli_trace(args)``
    ``python -m unetlab trace sd15|sd21|sdxl|tiny``: prints the io, block and skip tables.

``config_or_name`` is a preset name (``"sd15"``, ``"sd21"``, ``"sdxl"``, ``"tiny"`` …), a
:class:`unetlab.UNetConfig`, or an :class:`unetlab.SDUNet` (traced on the meta device as a copy
of its config). ``latent`` is the latent's height = width; ``None`` means the config's
``sample_size`` (SD 1.5: 64 for 512×512 images, SD 2.1: 96, SDXL: 128). The three functions share
one cached trace per (config, latent, batch), so printing all three costs one meta forward.

Column names (stable; the chapter 2 checkers read them):
``block_table``: block, type, resolution, channels, resnets, transformers, layers, skips, inputs.
``skip_table``: resnet, resolution, h, + skip, = in, out, skip from.
``io_table``: module, class, input, output, params.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from unetlab.configs import resolve_config

__all__ = ["Table", "block_table", "skip_table", "io_table", "cli_trace"]


def _format_cell(value: Any, spec: str | None) -> str:
    if value is None:
        return ""
    if spec and not isinstance(value, str):
        return format(value, spec)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class Table:
    """A small table: a title, column names, rows of values, and per-column format specs.

    ``str(table)`` renders plain text with right-aligned numbers (deterministic, so a notebook
    output can be compared by nbval); ``records()`` gives the rows as dicts.
    """

    title: str
    columns: list[str]
    rows: list[tuple]
    formats: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(self.columns)} columns")

    def records(self) -> list[dict]:
        """The rows as a list of ``{column: value}`` dicts."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def column(self, name: str) -> list:
        """All values of one column."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns are {self.columns}")
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        cells = [[_format_cell(v, self.formats.get(c)) for c, v in zip(self.columns, row)] for row in self.rows]
        numeric = [
            all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in self.rows if row[i] is not None)
            and any(row[i] is not None for row in self.rows)
            for i in range(len(self.columns))
        ]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

        out = [self.title] if self.title else []
        out.append(line(self.columns))
        out.append("  ".join("-" * w for w in widths))
        out += [line(r) for r in cells]
        out += self.notes
        return "\n".join(out)

    __repr__ = __str__


# ---- tracing the UNet on the meta device ----------------------------------------------------
_BLOCK_PATH = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)$")


@dataclass
class _Traced:
    """One meta-device forward of an SDUNet and the shapes everybody needs."""

    config: Any
    trace: Any  # unetlab.tracing.ShapeTrace
    latent: int
    time_emb: tuple  # shape of time_emb, e.g. (1, 1280)
    context: tuple  # shape of context, e.g. (1, 77, 768)

    def row(self, path: str):
        rows = self.trace.find(path)
        if not rows:
            raise RuntimeError(f"the trace has no call of {path!r}")
        return rows[0]

    def children(self, block: str, kind: str) -> list:
        """Rows of ``block.kind.<i>`` (e.g. the resnets of ``up_blocks.1``), in call order."""
        pattern = re.compile(rf"^{re.escape(block)}\.{kind}\.\d+$")
        return [r for r in self.trace if pattern.match(r.path)]

    def descendants(self, block: str) -> list:
        return [r for r in self.trace if r.path.startswith(block + ".")]


def _meta_inputs(config, latent: int, batch: int = 1, tokens: int = 77) -> tuple[tuple, dict]:
    """Meta tensors for one forward: sample, timestep, context (+ SDXL's added_cond)."""
    meta = torch.device("meta")
    sample = torch.empty(batch, config.in_channels, latent, latent, device=meta)
    timestep = torch.empty(batch, device=meta)
    context = torch.empty(batch, tokens, config.cross_attention_dim, device=meta)
    kwargs = {}
    if config.addition_embed_type == "text_time":
        kwargs["added_cond"] = {
            "text_embeds": torch.empty(batch, config.text_embeds_dim, device=meta),
            "time_ids": torch.empty(batch, 6, device=meta),
        }
    return (sample, timestep, context), kwargs


def _traced(config_or_name: Any, latent: int | None, batch: int = 1) -> _Traced:
    config = resolve_config(config_or_name)
    latent = config.sample_size if latent is None else latent
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise ValueError(f"latent must be a positive int (height = width of the latent), got {latent!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return _traced_cached(config, config.name, latent, batch)


@functools.lru_cache(maxsize=8)
def _traced_cached(config, name: str, latent: int, batch: int) -> _Traced:
    # one trace serves block_table, skip_table and io_table (meta tensors: no memory kept)
    from unetlab.sd.unet import SDUNet
    from unetlab.tracing import trace_shapes

    with torch.device("meta"):
        model = SDUNet(config)
    args, kwargs = _meta_inputs(config, latent, batch)
    trace = trace_shapes(model, *args, **kwargs)
    if not trace.ok:
        raise ValueError(
            f"{config.name} UNet cannot run on a {latent}×{latent} latent: {trace.failed_module} raised "
            f"{type(trace.error).__name__}: {trace.error}"
        )
    time_emb = trace.find("time_embedding")[0].output_shapes[0]
    return _Traced(config, trace, latent, tuple(time_emb), tuple(args[2].shape))


def _hw(shape: tuple) -> str:
    return f"{shape[-2]}×{shape[-1]}"


def _skip_stack(t: _Traced) -> list[tuple[str, tuple]]:
    """The skips as the down path pushes them: (module whose output it is, shape).

    ``conv_in``'s output first, then per down block one per layer — the output of the
    layer's last module (its attention if it has one, else its ResNet) — and the downsampler's.
    The shapes come from the down block's traced output ``(h, skips)``.
    """
    stack = [("conv_in", tuple(t.row("conv_in").output_shapes[0]))]
    for row in t.trace:
        if not row.path.startswith("down_blocks.") or not _BLOCK_PATH.match(row.path):
            continue
        # layer groups in call order: resnets.j (+ attentions.j), then downsamplers.0
        names: list[str] = []
        for child in t.descendants(row.path):
            rel = child.path[len(row.path) + 1:].split(".")
            if len(rel) != 2:
                continue
            if rel[0] == "attentions" and names:
                names[-1] = child.path  # the attention's output is the layer's output
            elif rel[0] in ("resnets", "downsamplers"):
                names.append(child.path)
        skip_shapes = row.output_shapes[1:]
        if len(skip_shapes) != len(names):
            raise RuntimeError(f"{row.path} returned {len(skip_shapes)} skips for {len(names)} layers")
        stack += [(n, tuple(s)) for n, s in zip(names, skip_shapes)]
    return stack


def _inputs_taken(t: _Traced, path: str, takes_skips: bool) -> str:
    """Which of h, time_emb, context, skips the block really reads (seen inside it)."""
    inside = [tuple(s) for r in t.descendants(path) for s in r.input_shapes]
    taken = ["h"]
    if t.time_emb in inside:
        taken.append("time_emb")
    if t.context in inside:
        taken.append("context")
    if takes_skips:
        taken.append("skips")
    return ", ".join(taken)


def block_table(config_or_name: Any = "sd15", latent: int | None = None, batch: int = 1) -> Table:
    """Study note 000's block tables, measured: one row per down block, the mid block, each up block.

    ``latent`` defaults to the config's ``sample_size`` (SD 1.5: 64, SD 2.1: 96, SDXL: 128).
    Columns: block, type, resolution (in → out), channels (of ``h``, in → out), resnets,
    transformers, layers per transformer (``BasicTransformerBlock``s), skips (how many tensors
    the block saves for the up path / takes from it), inputs (what the block really reads:
    ``h``, ``time_emb``, ``context``, ``skips``).
    """
    t = _traced(config_or_name, latent, batch)
    rows = []
    for row in t.trace:
        if not _BLOCK_PATH.match(row.path):
            continue
        h_in, h_out = row.input_shapes[0], row.output_shapes[0]
        resnets = t.children(row.path, "resnets")
        attentions = t.children(row.path, "attentions")
        depth = len([r for r in t.descendants(row.path) if re.search(r"\.attentions\.\d+\.transformer_blocks\.\d+$", r.path)])
        if row.path.startswith("down_blocks"):
            skips = f"saves {len(row.output_shapes) - 1}"
        elif row.path.startswith("up_blocks"):
            skips = f"takes {len(resnets)}"
        else:
            skips = ""
        rows.append(
            (
                row.path,
                row.cls,
                f"{_hw(h_in)} → {_hw(h_out)}",
                f"{h_in[1]} → {h_out[1]}",
                len(resnets),
                len(attentions),
                depth // len(attentions) if attentions else None,
                skips,
                _inputs_taken(t, row.path, row.path.startswith("up_blocks")),
            )
        )
    return Table(
        title=f"{t.config.name} UNet blocks, latent {t.latent}×{t.latent} (traced on the meta device)",
        columns=["block", "type", "resolution", "channels", "resnets", "transformers", "layers", "skips", "inputs"],
        rows=rows,
        notes=[
            "layers: BasicTransformerBlocks inside each transformer; channels: of the hidden state h.",
            f"time_emb is {t.time_emb}, context {t.context}.",
        ],
    )


def skip_table(config_or_name: Any = "sd15", latent: int | None = None, batch: int = 1) -> Table:
    """What every up-block ResNet concatenates: ``h`` channels + skip channels = ResNet input.

    The skip's source is found by replaying the skip stack the down path traced (last in,
    first out), and the sum is checked against the input the ResNet really received.
    """
    t = _traced(config_or_name, latent, batch)
    stack = _skip_stack(t)
    rows = []
    for block in t.trace:
        if not (block.path.startswith("up_blocks.") and _BLOCK_PATH.match(block.path)):
            continue
        resnets = t.children(block.path, "resnets")
        taken, stack = stack[-len(resnets):], stack[: -len(resnets)]
        h_channels = block.input_shapes[0][1]
        for resnet in resnets:
            source, skip_shape = taken.pop()  # the skip saved last is used first
            x = resnet.input_shapes[0]
            if x[1] != h_channels + skip_shape[1] or tuple(x[-2:]) != tuple(skip_shape[-2:]):
                raise RuntimeError(
                    f"{resnet.path} received {x}, not h ({h_channels} channels) + skip {skip_shape} from {source}"
                )
            out = resnet.output_shapes[0]
            rows.append((resnet.path, _hw(x), h_channels, skip_shape[1], x[1], out[1], source))
            # the next ResNet's h is this layer's output (attention keeps the width)
            h_channels = out[1]
    if stack:
        raise RuntimeError(f"{len(stack)} skip(s) were saved but never used: {[s for s, _ in stack]}")
    return Table(
        title=f"{t.config.name} UNet: what each up-block ResNet concatenates, latent {t.latent}×{t.latent}",
        columns=["resnet", "resolution", "h", "+ skip", "= in", "out", "skip from"],
        rows=rows,
        notes=["h + skip = the ResNet's input channels (torch.cat along channels), checked against the trace."],
    )


def io_table(config_or_name: Any = "sd15", latent: int | None = None, batch: int = 1) -> Table:
    """The modules outside the blocks: time_proj, time_embedding, (add_embedding), conv_in, conv_out …"""
    t = _traced(config_or_name, latent, batch)
    rows = []
    for row in t.trace:
        if row.depth == 0 or (row.depth == 1 and not _BLOCK_PATH.match(row.path)):
            if row.path in ("down_blocks", "up_blocks"):
                continue
            rows.append((row.display_path, row.cls, row.inputs, row.outputs, row.params_total))
    proj = tuple(t.row("time_proj").output_shapes[0])
    return Table(
        title=f"{t.config.name} UNet: inputs, time embedding and output layers, latent {t.latent}×{t.latent}",
        columns=["module", "class", "input", "output", "params"],
        rows=rows,
        formats={"params": ","},
        notes=[
            f"time_emb {t.time_emb} (time_embedding's output) is what every ResNet receives; "
            f"{proj} is the sinusoidal time_proj before the MLP."
        ],
    )


# ---- CLI ------------------------------------------------------------------------------------
def cli_trace(args) -> int:
    """``python -m unetlab trace sd15|sd21|sdxl|tiny``: io, block and skip tables (meta device)."""
    from unetlab.sd.unet import SDUNet
    from unetlab.tracing import trace_shapes

    latent = getattr(args, "size", None)
    batch = getattr(args, "batch", None) or 1
    for table in (io_table, block_table, skip_table):
        print(table(args.model, latent, batch))
        print()
    depth, pattern = getattr(args, "depth", None), getattr(args, "filter", None)
    if depth is not None or pattern is not None:
        config = resolve_config(args.model)
        with torch.device("meta"):
            model = SDUNet(config)
        inputs, kwargs = _meta_inputs(config, config.sample_size if latent is None else latent, batch)
        print(trace_shapes(model, *inputs, depth=depth, filter=pattern, **kwargs))
    return 0
