"""Recognising an exercise's untouched stub, so that it gets "还没有作答 | not attempted yet".

Every exercise cell in the chapter notebooks starts as a stub: a function that raises
``NotImplementedError`` or returns a placeholder, a dict of ``None``. Run as it is, a checker
must not diagnose mistakes the learner never made (before this rule, chapter 6's ``return
eps_text`` got "the halves are swapped"). The rule looks at what the answer *does*, and each
checker applies the rule of its own stub; only ``check_ddim_step`` also reads the learner's source
(:func:`answer_node`), because one real attempt there does exactly what its stub does. Each
checker, its notebook stub, and when the answer counts as "not attempted":

* ``check_unet_shapes`` — ``forward`` raises ``NotImplementedError``: the first forward raises it.
* ``check_own_trace`` — ``my_trace = {}`` (with the learner's ``MyUNet``): the predictions are blank, or
  ``MyUNet``'s forward still raises ``NotImplementedError`` (exercise 1.1 not done yet).
* ``check_param_scaling`` — ``{"quadratic": {part: None ...}, "at_128": {part: None ...}}``: every value blank.
* ``check_sd21_params`` — every value of ``sd21_answer`` ``None`` and ``extra_params`` raising
  ``NotImplementedError``: the dict is blank and the function raises it (or returns a blank).
* ``check_shape_predictions`` — every point ``None`` but the example ``conv_in output``: every point
  there, every value blank but the unchanged example.
* ``check_skip_channels`` — ``return []``: ``fn(SD 1.5's config)`` is blank or raises ``NotImplementedError``.
* ``check_skip_ablation`` — ``my_replacement`` raises ``NotImplementedError`` and the table and the
  verdict are blank (``None`` everywhere).
* ``check_crossover`` — ``{"skips": None, "noskips": None}``: both values blank.
* ``check_embedding``, ``check_self_attention``, ``check_attention_map``, ``check_aggregation``,
  ``check_word_swap`` — ``raise
  NotImplementedError``: the function raises it.
* ``check_similarity_matrix`` — ``hw_sim = None``: ``sim`` is blank.
* ``check_gap_prediction`` — ``my_variant`` raises ``NotImplementedError`` and ``predicted`` and
  ``measured`` are ``None``.
* ``check_smooth_embedding`` — ``raise NotImplementedError``: the function raises it.
* ``check_guidance`` — ``return eps_text``: the output equals ``eps_text`` at s = 0 and at s = 3
  (it ignores s), or is blank, or the function raises ``NotImplementedError``.
* ``check_ddim_step`` — ``return x_t``: the output equals ``x_t`` in every case *and* the source,
  where Python has it, is only ``return <first parameter>`` (docstring and comments aside; a lambda
  whose body is only its first parameter counts too), or the output is blank, or the function raises
  ``NotImplementedError``. Without source (a function made by ``exec``, a callable object) the output
  alone decides.
* ``check_negative_prompt`` — ``raise NotImplementedError``: the function raises it.
* ``check_ddim_sigma`` — ``return torch.zeros(())``: σ = 0 at η = 1 and at η = 0.5 (it ignores η), or
  blank, or ``NotImplementedError``.
* ``check_residual_shapes`` — ``{"down": [], "mid": None}`` (the stub does not give the number of skips
  away): the dict is blank (an empty list, or shapes that are all ``None``, and ``mid`` ``None``).
* ``check_add_at_skip`` — ``raise NotImplementedError``: the function raises it (or returns a blank).

"Blank" (:func:`is_blank`) is ``None``, ``...``, an empty container, or a container whose every
value is blank. ``NotImplementedError`` is the Python convention for "not written yet", so every
function answer that raises it counts as not attempted. A partly filled answer is an attempt: the
blank parts get the checker's usual "not filled in" checks.

Two answers cannot be told from a stub by what they do. A DDIM step that uses ā_t in both lines
returns x_t exactly; its source tells it apart (an attempt, whose hint says the second line needs
ā_prev), and only where there is no source does it get "not attempted" with a hint that names this
case. A guidance function that returns ``eps_text`` whatever the scale gets "not attempted" with a
hint that says s must change the result.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any, Callable

import torch

from .feedback import Check

__all__ = ["is_blank", "Outcome", "call_answer", "returns_unchanged", "answer_node", "body_statements", "STUB_WHAT"]

#: what a stub check says it checked
STUB_WHAT = ("答案还是练习给的样子", "the answer is still the exercise's stub")


def stub_check(detail_zh: str, detail_en: str, hint_zh: str, hint_en: str) -> Check:
    """The check that reports an untouched stub: ``detail`` says what was seen, ``hint`` what to do."""
    return Check(*STUB_WHAT, False, detail_zh, detail_en, hint_zh, hint_en, stub=True)


def is_blank(value: Any) -> bool:
    """True for ``None``, ``...``, an empty dict / list / tuple / set, or a container of blanks (recursively)."""
    if value is None or value is Ellipsis:
        return True
    if isinstance(value, dict):
        return all(is_blank(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(is_blank(v) for v in value)
    return False


class Outcome:
    """What calling a learner's function gave: its return ``value``, or the ``error`` it raised."""

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value = value
        self.error = error

    @property
    def not_implemented(self) -> bool:
        return isinstance(self.error, NotImplementedError)

    @property
    def blank(self) -> bool:
        return self.error is None and is_blank(self.value)


def call_answer(fn: Callable, *args, **kwargs) -> Outcome:
    """Call the learner's ``fn``; any exception is kept in ``Outcome.error``, never raised."""
    try:
        return Outcome(value=fn(*args, **kwargs))
    except Exception as exc:  # the learner's code may raise anything
        return Outcome(error=exc)


def returns_unchanged(value: Any, original: torch.Tensor) -> bool:
    """True when ``value`` is a tensor equal to ``original`` up to float32 round-off: an input handed back.

    Round-off is allowed so that a computation that cancels to its input (ā_t used twice in a DDIM
    step) is recognised too; its checker's hint names that case.
    """
    if not isinstance(value, torch.Tensor) or value.shape != original.shape or value.is_complex():
        return False
    return bool(torch.allclose(value.detach().float().cpu(), original.float().cpu(), rtol=1e-5, atol=1e-6))


def answer_node(fn: Callable) -> ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None:
    """The syntax tree of the learner's function ``fn``, or None where Python cannot give its source.

    ``inspect.getsource`` works for functions in files and in notebook cells (IPython keeps each cell's
    code); it fails (``OSError``, ``TypeError``) for functions made by ``exec``, built-ins and callable
    objects, and then the caller falls back on what the function does. For a lambda ``getsource`` gives
    the whole line(s) it stands on: the node is the one lambda there with ``fn``'s parameters, None when
    that is not one, or when the lines do not parse on their own.
    """
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    params = list(code.co_varnames[:code.co_argcount])
    if fn.__name__ == "<lambda>":
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and [a.arg for a in n.args.args] == params]
    else:
        found = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == fn.__name__ and [a.arg for a in n.args.args] == params]
    return found[0] if len(found) == 1 else None


def body_statements(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.stmt]:
    """The statements of a function's body that do something: without its docstring, ``pass`` and ``...``
    (comments are not in the tree anyway). A lambda's body is one ``return`` of its expression."""
    if isinstance(node, ast.Lambda):
        return [ast.Return(value=node.body)]
    return [s for s in node.body
            if not isinstance(s, ast.Pass)
            and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                     and (isinstance(s.value.value, str) or s.value.value is Ellipsis))]
