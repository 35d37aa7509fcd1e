"""Shape tracing: run a model once and record, for every module call, what went in and what came out.

    trace = trace_shapes(model, x, timestep)           # any nn.Module, any inputs
    print(trace)                                        # a text table, one row per module call
    trace.records()                                     # the same rows as a list of dicts
    trace.error, trace.failed_module                    # when the forward raised

How it works: a forward pre-hook on every submodule opens a row (module path, class,
input shapes, own parameter count) when the module is called, and a forward hook fills
in the output shapes when it returns. Rows are in call order (a parent before its
children); a module called several times gets one row per call.

When the forward raises, the exception is caught (unless ``raise_errors=True``) and the
rows traced so far are returned. The modules that were running when it happened are
marked ``failed``; the innermost of them is ``trace.failed_module``: that is where the
shapes stopped fitting. Chapter 1 finds seed 003's second bug this way.

Only shapes are read, never values, so tracing works on the meta device: a full Stable
Diffusion UNet built on ``torch.device("meta")`` traces instantly, without memory.

The ``trace`` command (``python -m unetlab trace simple``) lives in :mod:`unetlab.trace_command`:
it also prints the SD UNet's tables, which :mod:`unetlab.sd.tables` builds on this module.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["trace_shapes", "ShapeTrace", "TraceRow"]

#: the columns ``ShapeTrace.table()`` shows unless told otherwise
DEFAULT_COLUMNS = ("path", "class", "input", "output", "params")
# column name -> (header, TraceRow -> text, right-aligned?)
_COLUMNS: dict[str, tuple[str, Callable[["TraceRow"], str], bool]] = {
    "index": ("#", lambda r: str(r.index), True),
    "path": ("module", lambda r: r.display_path, False),
    "class": ("class", lambda r: r.cls, False),
    "depth": ("depth", lambda r: str(r.depth), True),
    "call": ("call", lambda r: str(r.call), True),
    "input": ("input", lambda r: r.inputs, False),
    "output": ("output", lambda r: r.outputs if r.status == "ok" else f"✗ {r.status}", False),
    "params": ("params", lambda r: f"{r.params:,}", True),
    "total": ("params (total)", lambda r: f"{r.params_total:,}", True),
}


@dataclass
class TraceRow:
    """One call of one module.

    ``index`` is the call's position among all traced calls (kept when rows are filtered out);
    ``path`` is the dotted name in ``model.named_modules()`` (``""`` for the model itself);
    ``call`` counts calls of the same module (1, 2, ...). ``input_shapes`` / ``output_shapes``
    list the shape of every tensor among the arguments / in the output, in order, nested
    containers flattened; ``inputs`` / ``outputs`` are the same as readable text, keeping
    non-tensor arguments and the nesting. ``params`` counts the module's own parameters
    (not its children's), ``params_total`` all of them. ``status`` is ``"ok"``, ``"failed"``
    (the module raised, or a module inside it did) or ``"running"`` (never returned).
    """

    index: int
    path: str
    cls: str
    depth: int
    call: int
    input_shapes: list[tuple[int, ...]]
    inputs: str
    params: int
    params_total: int
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    outputs: str = ""
    status: str = "running"
    error: str | None = None

    @property
    def display_path(self) -> str:
        name = self.path or "(model)"
        return name if self.call == 1 else f"{name} (call {self.call})"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ShapeTrace(Sequence):
    """The rows of one traced forward pass: a sequence of :class:`TraceRow`.

    ``str(trace)`` is a text table (deterministic, so notebooks can show it);
    ``trace.records()`` gives plain dicts, ``trace.to_pandas()`` a DataFrame if pandas is
    installed. After a failed forward, ``trace.error`` holds the exception and
    ``trace.failed_module`` the path of the innermost module that was running when it
    was raised (``""`` is the model itself); ``trace.ok`` is False.
    """

    def __init__(self, rows: list[TraceRow], model_name: str, error: BaseException | None = None,
                 failed_module: str | None = None, failed_class: str | None = None):
        self.rows = rows
        self.model_name = model_name
        self.error = error
        self.failed_module = failed_module
        self.failed_class = failed_class

    # --- sequence protocol -------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        return self.rows[item]

    # --- data --------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.error is None

    def records(self) -> list[dict[str, Any]]:
        """The rows as a list of dicts (keys: the :class:`TraceRow` fields)."""
        return [row.as_dict() for row in self.rows]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (pandas is optional: ImportError says so)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas (pip install pandas); records() gives the same rows as dicts") from exc
        return pd.DataFrame(self.records())

    def find(self, path: str) -> list[TraceRow]:
        """All rows (one per call) of the module at ``path``."""
        return [row for row in self.rows if row.path == path]

    # --- text --------------------------------------------------------------
    def table(self, columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
        """The rows as a text table. Columns among: index, path, class, depth, call, input, output, params, total."""
        unknown = [c for c in columns if c not in _COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; choose from {list(_COLUMNS)}")
        headers = [_COLUMNS[c][0] for c in columns]
        cells = [[_COLUMNS[c][1](row) for c in columns] for row in self.rows]
        widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(headers)]

        def fmt(values):
            parts = [v.rjust(w) if _COLUMNS[c][2] else v.ljust(w) for v, w, c in zip(values, widths, columns)]
            return "  ".join(parts).rstrip()

        lines = [fmt(headers), "  ".join("-" * w for w in widths)]
        lines += [fmt(line) for line in cells]
        return "\n".join(lines)

    def __str__(self) -> str:
        text = self.table()
        if self.error is not None:
            where = self.failed_module or "(model)"
            text += (
                f"\n✗ forward failed in {where} ({self.failed_class}): "
                f"{type(self.error).__name__}: {self.error}"
            )
        return text

    __repr__ = __str__


def _spec(value) -> tuple[str, list[tuple[int, ...]]]:
    """Readable text for one argument / output, and the shapes of the tensors inside it."""
    if isinstance(value, torch.Tensor):
        shape = tuple(value.shape)
        return str(shape) if len(shape) != 1 else f"({shape[0]},)", [shape]
    if isinstance(value, Mapping):
        texts, shapes = [], []
        for key, item in value.items():
            text, inner = _spec(item)
            texts.append(f"{key}: {text}")
            shapes += inner
        return "{" + ", ".join(texts) + "}", shapes
    if isinstance(value, (tuple, list)):
        texts, shapes = [], []
        for item in value:
            text, inner = _spec(item)
            texts.append(text)
            shapes += inner
        return "[" + ", ".join(texts) + "]", shapes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _spec({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value), []
    if isinstance(value, str):
        return repr(value if len(value) <= 20 else value[:17] + "..."), []
    return type(value).__name__, []


def _spec_args(args: tuple, kwargs: Mapping[str, Any]) -> tuple[str, list[tuple[int, ...]]]:
    texts, shapes = [], []
    for arg in args:
        text, inner = _spec(arg)
        texts.append(text)
        shapes += inner
    for key, arg in kwargs.items():
        text, inner = _spec(arg)
        texts.append(f"{key}={text}")
        shapes += inner
    return ", ".join(texts), shapes


def _spec_output(output) -> tuple[str, list[tuple[int, ...]]]:
    # a tuple output reads like several outputs: "(B, C, H, W), (B, C, 2H, 2W)"
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        return _spec_args(output, {})
    return _spec(output)


def _make_filter(filter, module_types: dict[int, type]) -> Callable[[TraceRow], bool]:
    if filter is None:
        return lambda row: True
    if isinstance(filter, str):
        return lambda row: fnmatch.fnmatchcase(row.path, filter) or fnmatch.fnmatchcase(row.cls, filter)
    if isinstance(filter, type) or (isinstance(filter, tuple) and filter and all(isinstance(f, type) for f in filter)):
        classes = filter if isinstance(filter, tuple) else (filter,)
        return lambda row: issubclass(module_types[row.index], classes)
    if callable(filter):
        return filter
    raise TypeError(
        "filter must be None, a glob pattern matched against the module path or class name (e.g. 'up1.*', "
        f"'ResBlock'), a module class, or a function TraceRow -> bool; got {type(filter).__name__}"
    )


def trace_shapes(model: nn.Module, *inputs, depth: int | None = None, filter=None,
                 raise_errors: bool = False, **kwargs) -> ShapeTrace:
    """Call ``model(*inputs, **kwargs)`` once and return one :class:`TraceRow` per module call.

    ``depth``: keep only modules at most this deep (the model is depth 0, ``down1`` depth 1,
    ``down1.res`` depth 2, ...). ``filter``: keep only rows that match: a glob pattern on the
    module path or class name (``"up1.*"``, ``"ResBlock"``), a module class or tuple of
    classes (``isinstance``), or a function ``TraceRow -> bool``. Neither changes what is run or how
    ``failed_module`` is found: every module is hooked, then rows are selected.

    If the forward raises, the exception is kept in ``.error`` and the innermost running
    module in ``.failed_module``; with ``raise_errors=True`` it is re-raised instead.
    The forward runs under ``torch.no_grad()``; the model's train/eval mode is left as is.
    ``depth``, ``filter`` and ``raise_errors`` are this function's; all other keyword
    arguments go to the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace_shapes needs an nn.Module, got {type(model).__name__}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be None or an int >= 0, got {depth!r}")
    module_types: dict[int, type] = {}  # row index -> class of the module it traced
    keep = _make_filter(filter, module_types)

    rows: list[TraceRow] = []
    open_rows: dict[int, list[TraceRow]] = {}  # id(module) -> rows of its calls still running
    calls: dict[int, int] = {}
    failures: list[tuple[TraceRow, BaseException]] = []  # in the order the failures were seen
    handles = []

    def pre_hook(path, module, args, kw):
        key = id(module)
        calls[key] = calls.get(key, 0) + 1
        text, shapes = _spec_args(args, kw)
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = sum(p.numel() for p in module.parameters())
        row = TraceRow(index=len(rows), path=path, cls=type(module).__name__,
                       depth=0 if path == "" else path.count(".") + 1, call=calls[key],
                       input_shapes=shapes, inputs=text, params=own, params_total=total)
        rows.append(row)
        module_types[row.index] = type(module)
        open_rows.setdefault(key, []).append(row)

    def post_hook(module, args, kw, output):
        stack = open_rows.get(id(module))
        if not stack:
            return None
        row = stack.pop()
        exc = sys.exc_info()[1]
        if output is None and exc is not None:
            # called by torch while the exception propagates (always_call=True)
            row.status = "failed"
            row.error = f"{type(exc).__name__}: {exc}"
            failures.append((row, exc))
        else:
            row.status = "ok"
            row.outputs, row.output_shapes = _spec_output(output)
        return None

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, _p=path: pre_hook(_p, m, a, k), with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True, always_call=True))

    error: BaseException | None = None
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    except Exception as exc:
        if raise_errors:
            raise
        error = exc
    finally:
        for handle in handles:
            handle.remove()

    failed_module = failed_class = None
    if error is not None:
        # innermost module that failed with this exception (or one it was raised from)
        chain, e = [], error
        while e is not None and len(chain) < 20:
            chain.append(e)
            e = e.__cause__ or e.__context__
        culprit = next((row for row, exc in failures if exc is error), None)
        if culprit is None:
            culprit = next((row for row, exc in failures if any(exc is c for c in chain)), None)
        if culprit is None and rows:
            culprit = rows[0]
        if culprit is not None:
            failed_module, failed_class = culprit.path, culprit.cls

    selected = [row for row in rows if (depth is None or row.depth <= depth) and keep(row)]
    return ShapeTrace(selected, type(model).__name__, error, failed_module, failed_class)
