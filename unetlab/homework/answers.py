"""Reading the learner's answers and comparing them with the truth, shared by every chapter's checkers.

Parsing never raises: a value that is not what was asked for gives ``None``, and the checker turns
that into a failed check with a hint.

* :func:`as_number` — a finite float from an int, a float, a numpy scalar / 0-d array or a
  one-element tensor (never a bool or a string).
* :func:`as_shape` — a tuple of ints from a tuple, list or ``torch.Size`` of integers.
* :func:`as_bool` — ``True`` / ``False``, also from ``np.bool_`` or a one-element bool tensor.
* :func:`close_values` — every value of a ``{key: number}`` answer within a tolerance of the truth.
* :func:`tensors_close` — a tensor of the reference's shape whose values are ``allclose`` to it.
* :func:`key_check` — a dict answer has exactly the expected keys (missing and unknown ones named).
* :func:`function_check` — the answer is a function (the learner passed it, not its result).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Iterable

import torch

from .feedback import Check

__all__ = ["as_number", "as_shape", "as_bool", "close_values", "tensors_close", "key_check", "function_check"]


def as_number(value: Any) -> float | None:
    """A finite float, or ``None`` when ``value`` is not one number (bools and strings are not numbers)."""
    try:
        return _to_number(value)
    except Exception:  # an object that breaks when touched is not a number either
        return None


def _to_number(value: Any) -> float | None:
    if isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return None
        value = value.item()
    elif not isinstance(value, Real):
        # numpy: a 0-d / one-element array or a scalar of a real, non-bool dtype
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        if kind not in ("i", "u", "f") or getattr(value, "size", None) != 1:
            return None
        value = value.item()
    number = float(value)
    return number if math.isfinite(number) else None


def as_shape(value: Any) -> tuple[int, ...] | None:
    """A tuple of ints from a tuple / list / ``torch.Size`` of integers (numpy ints too, never bools), else ``None``."""
    try:
        if isinstance(value, (tuple, list, torch.Size)) and all(
                isinstance(v, Integral) and not isinstance(v, bool) for v in value):
            return tuple(int(v) for v in value)
    except Exception:  # an object that breaks when touched is not a shape either
        pass
    return None


def as_bool(answer: Any) -> Any:
    """A computed answer counts as a bool too: ``np.True_`` or a one-element bool tensor such as
    ``(sim > 0.9).all()``. Anything else (``"True"``, 1, None) is returned unchanged."""
    if isinstance(answer, torch.Tensor) and answer.dtype == torch.bool and answer.numel() == 1:
        return bool(answer.item())
    if type(answer).__module__ == "numpy" and getattr(answer, "dtype", None) == bool and getattr(answer, "ndim", 1) == 0:
        return bool(answer)
    return answer


def close_values(given: Mapping, truth: Mapping, tol: float) -> bool:
    """True when ``|given[k] − truth[k]| <= tol`` for every key of ``truth`` (``given`` holds numbers)."""
    return all(abs(float(given[k]) - truth[k]) <= tol for k in truth)


def tensors_close(value: Any, reference: torch.Tensor, atol: float, rtol: float = 1e-5) -> bool:
    """True when ``value`` is a tensor of ``reference``'s shape and ``allclose`` to it (compared in float32)."""
    return (isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(reference.shape)
            and bool(torch.allclose(value.detach().float().cpu(), reference.float().cpu(), atol=atol, rtol=rtol)))


def key_check(answer: Mapping, expected: Iterable[str], what: tuple[str, str], hint: tuple[str, str]) -> Check:
    """A check that ``answer`` has exactly the keys ``expected``; the detail names the missing and unknown ones."""
    expected = list(expected)
    missing = [k for k in expected if k not in answer]
    extra = [str(k) for k in answer if k not in expected]
    return Check(*what, not missing and not extra,
                 (f"缺少 {missing}" if missing else "") + (f" 多余 {extra}" if extra else ""),
                 (f"missing {missing}" if missing else "") + (f" unknown {extra}" if extra else ""),
                 *hint)


def function_check(answer: Any, call: str, what: tuple[str, str] = ("答案是一个函数", "the answer is a function")) -> Check:
    """A check that ``answer`` is callable; ``call`` shows how to hand it in, e.g. ``"check_embedding(my_embedding)"``."""
    ok = callable(answer)
    got = type(answer).__name__
    return Check(*what, ok, "" if ok else f"收到的是 {got}。", "" if ok else f"got an object of type {got}.",
                 f"传入函数本身：{call}，不要加括号调用它。", f"Pass the function itself: {call}, without calling it.")
