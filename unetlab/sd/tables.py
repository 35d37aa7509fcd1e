"""Seed-000-style tables of the SD UNet, computed live by tracing the model on the meta device.

Seed 000 describes the SD 1.5 UNet with hand-written tables (resolution and channels per block,
ResNets and transformers, inputs). Here the same tables are *measured*: the UNet is built on the
meta device (no weights, no memory), one forward runs on meta tensors — shapes only, instant even
for SDXL — and :func:`unetlab.trace_shapes` records every block's input and output shapes.

API
---
``block_table(config_or_name, latent=64)``
    One row per down block, the mid block and each up block: type, resolution in→out,
    channels in→out, number of ResNets and transformers, and which inputs the block takes
    (``sample``, ``time_emb``, ``context``, ``skips``). The number of skips is the number of
    tensors the block pushes to (down) or pops from (up) the skip stack.
``skip_table(config_or_name, latent=64)``
    One row per up-block ResNet: channels of the hidden state + channels of the skip it
    concatenates = the ResNet's input channels, and which down-path output the skip came from.
    (Seed 000's "1280 + 1280 -> 1280" column simplifies exactly this.)
``io_table(config_or_name, latent=64)``
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
of its config). ``latent`` is the latent's height = width (SD 1.5: 64 for 512×512 images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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
