"""Chapter 5 homework: study note 003's "implement self-attention and visualise its attention map", made checkable.

* :func:`check_self_attention` — the learner writes single-head self-attention
  ``fn(x, w_q, w_k, w_v) -> (out, weights)`` on tokens ``x`` ``(B, N, C)``:
  ``q = x w_q``, ``k = x w_k``, ``v = x w_v``, ``weights = softmax(q kᵀ / √d)`` over the keys,
  ``out = weights v``. Compared with the reference on random inputs, with hints for the usual
  slips: no ``1/√d``, dividing by ``d`` or by ``√C``, softmax over the wrong axis, transposed
  scores or weights, keys made with ``w_q``, ``out`` without ``v``. A module works too: an
  ``nn.Module`` with ``to_q``, ``to_k``, ``to_v`` (``nn.Linear``) whose ``forward(x)`` returns
  ``(out, weights)``.
* :func:`check_attention_map` — the learner turns ``weights`` ``(N, N)`` of an ``h × w`` feature
  map into the map of one query pixel: ``fn(weights, (y, x), (h, w)) -> (h, w)``; hints for a
  column instead of a row, column-major flattening, swapped ``h``/``w``.

Every checker returns a :class:`~unetlab.homework.feedback.Feedback` and never raises because
of the answer.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .answers import function_check, tensors_close
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks

__all__ = ["check_self_attention", "check_attention_map", "reference_self_attention", "reference_attention_map"]

_ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def reference_self_attention(
    x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-head self-attention: ``(out (B, N, d_v), weights (B, N, N))``; rows of weights sum to 1."""
    # (B, N, d)
    q, k = x @ w_q, x @ w_k
    # (B, N, d_v)
    v = x @ w_v
    # (B, N, N) = q kᵀ / √d: row i says how well query i matches every key
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    # (B, N, N), softmax over the keys: every row sums to 1
    weights = scores.softmax(dim=-1)
    # (B, N, d_v)
    return weights @ v, weights


def reference_attention_map(weights: torch.Tensor, query: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Row ``y·w + x`` of ``weights`` ``(N, N)``, laid out on the ``(h, w)`` grid (row-major, like ``reshape``)."""
    h, w = size
    y, x = query
    return weights[y * w + x].reshape(h, w)


# ---------------------------------------------------------------------------------------------
# self-attention
# ---------------------------------------------------------------------------------------------
# (B, N, C, d, d_v): d != C and d_v != d, so every width slip shows up; a second case of another size
_CASES = ((2, 6, 8, 4, 5), (1, 9, 6, 3, 2))


def _case(i: int):
    B, N, C, d, dv = _CASES[i]
    g = torch.Generator().manual_seed(50 + i)
    x = torch.randn(B, N, C, generator=g)
    w_q = torch.randn(C, d, generator=g)
    w_k = torch.randn(C, d, generator=g)
    w_v = torch.randn(C, dv, generator=g)
    return x, w_q, w_k, w_v


def _scores(q, k, scale):
    return q @ k.transpose(-2, -1) * scale


def _weight_slips(x, w_q, w_k):
    """name -> (weights a typical slip produces, hint zh, hint en)."""
    q, k = x @ w_q, x @ w_k
    C, d = x.shape[-1], q.shape[-1]
    right = 1 / math.sqrt(d)
    return {
        "no_scale": (
            _scores(q, k, 1.0).softmax(-1),
            "忘了除以 √d：scores = q @ kᵀ / √d。不缩放时 d 越大分数越大，softmax 会变得过于尖锐。",
            "You forgot to divide by √d: scores = q @ kᵀ / √d. Without it the scores grow with d and the softmax becomes too peaked.",
        ),
        "scale_d": (
            _scores(q, k, 1 / d).softmax(-1),
            "除以了 d，应该除以 √d（math.sqrt(d)）。",
            "You divided by d; divide by √d (math.sqrt(d)).",
        ),
        "scale_C": (
            _scores(q, k, 1 / math.sqrt(C)).softmax(-1),
            "除以了 √C（输入通道数），应除以 √d，d 是 q、k 的宽度（w_q.shape[1]）。学习笔记 003 里两者相等，这里不相等。",
            "You divided by √C (the input width); divide by √d, the width of q and k (w_q.shape[1]). "
            "They are equal in study note 003, not here.",
        ),
        "wrong_axis": (
            _scores(q, k, right).softmax(-2),
            "softmax 的维度错了：要对键（最后一维，dim=-1）做 softmax，使每一行（每个查询）加起来为 1。",
            "softmax over the wrong axis: take it over the keys (last axis, dim=-1) so that every row (query) sums to 1.",
        ),
        "transposed_scores": (
            _scores(k, q, right).softmax(-1),
            "分数被转置了：应该是 q @ kᵀ（行 = 查询，列 = 键），不是 k @ qᵀ。",
            "The scores are transposed: use q @ kᵀ (rows = queries, columns = keys), not k @ qᵀ.",
        ),
        "transposed_weights": (
            _scores(q, k, right).softmax(-1).transpose(-2, -1),
            "返回的权重被转置了：weights[b, i, j] 是查询 i 对键 j 的注意力，每一行加起来为 1。",
            "The returned weights are transposed: weights[b, i, j] is query i's attention to key j, and rows sum to 1.",
        ),
        "keys_from_w_q": (
            _scores(q, q, right).softmax(-1),
            "键用了 w_q：k 应该是 x @ w_k。",
            "The keys were made with w_q: k must be x @ w_k.",
        ),
    }


def _close(a, b) -> bool:
    return tensors_close(a, b, atol=_ATOL, rtol=1e-4)


@exercise(5, "5.1", "自注意力", "Self-attention")
def check_self_attention(fn_or_module) -> Feedback:
    """Check single-head self-attention (see the module docstring for the contract).

    A function that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    The checks run in order and stop at the first failure: the later ones assume the earlier pass.
    """
    is_module = isinstance(fn_or_module, nn.Module)
    results: dict[int, object] = {}

    def inputs(i: int):
        if not is_module:
            return _case(i)
        # module: random tokens of its input width; "weights" are its linear layers' matrices
        lin = [getattr(fn_or_module, n) for n in ("to_q", "to_k", "to_v")]
        B, N = _CASES[i][:2]
        g = torch.Generator().manual_seed(60 + i)
        x = torch.randn(B, N, lin[0].in_features, generator=g)
        return (x, *lin)

    def reference(i: int):
        x, *rest = inputs(i)
        if not is_module:
            return reference_self_attention(x, *rest)
        with torch.no_grad():
            q, k, v = (layer(x) for layer in rest)
            weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
            return weights @ v, weights

    def answer(i: int):
        if i not in results:
            x, *rest = inputs(i)
            with torch.no_grad():
                results[i] = fn_or_module(x.clone()) if is_module else fn_or_module(x.clone(), *(w.clone() for w in rest))
        return results[i]

    def runs():
        what = ("函数可以运行", "the function runs")
        if not callable(fn_or_module):
            return function_check(fn_or_module, "check_self_attention(self_attention)",
                                  ("答案是一个函数或模块", "the answer is a function or a module"))
        if is_module and not all(isinstance(getattr(fn_or_module, n, None), nn.Linear) for n in ("to_q", "to_k", "to_v")):
            return Check(
                "模块有 to_q、to_k、to_v", "the module has to_q, to_k, to_v", False,
                detail_zh="检查器需要 nn.Linear 类型的 to_q、to_k、to_v 属性来算参考答案。",
                detail_en="the checker needs nn.Linear attributes to_q, to_k, to_v to compute the reference.",
                hint_zh="在 __init__ 里定义 self.to_q = nn.Linear(C, d) 等，或者改交函数形式 fn(x, w_q, w_k, w_v)。",
                hint_en="Define self.to_q = nn.Linear(C, d) etc. in __init__, or hand in the function form fn(x, w_q, w_k, w_v).",
            )
        try:
            answer(0)
        except NotImplementedError:
            return Check(
                *what, False,
                detail_zh="函数抛出了 NotImplementedError。", detail_en="the function raised NotImplementedError.",
                hint_zh="把 raise NotImplementedError 换成你的实现：q、k、v → 分数 → softmax → 加权求和。",
                hint_en="Replace raise NotImplementedError with your implementation: q, k, v -> scores -> softmax -> weighted sum.",
                stub=True,  # the notebook's stub
            )
        except Exception as exc:
            return Check(
                *what, False,
                detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="x 的形状是 (B, N, C)，w_q、w_k 是 (C, d)，w_v 是 (C, d_v)；矩阵乘法用 @，转置用 k.transpose(-2, -1)。",
                hint_en="x is (B, N, C), w_q and w_k are (C, d), w_v is (C, d_v); multiply with @, transpose with k.transpose(-2, -1).",
            )
        return Check(*what, True)

    def returns_pair():
        res = answer(0)
        ok = isinstance(res, (tuple, list)) and len(res) == 2 and all(isinstance(t, torch.Tensor) for t in res)
        if ok:
            return Check("返回 (out, weights) 两个张量", "returns two tensors (out, weights)", True)
        got = type(res).__name__ if not isinstance(res, (tuple, list)) else f"{type(res).__name__} of {len(res)}"
        return Check(
            "返回 (out, weights) 两个张量", "returns two tensors (out, weights)", False,
            detail_zh=f"返回的是 {got}。", detail_en=f"returned a {got}.",
            hint_zh="最后一行写 return out, weights：可视化需要注意力权重本身。",
            hint_en="End with return out, weights: the visualisation needs the attention weights themselves.",
        )

    def weights_shape_and_rows():
        _, weights = answer(0)
        _, ref_w = reference(0)
        what = ("weights 形状 (B, N, N)，每行和为 1", "weights have shape (B, N, N) and rows that sum to 1")
        if tuple(weights.shape) != tuple(ref_w.shape):
            return Check(
                *what, False,
                detail_zh=f"形状是 {tuple(weights.shape)}，应为 {tuple(ref_w.shape)}。",
                detail_en=f"shape is {tuple(weights.shape)}, expected {tuple(ref_w.shape)}.",
                hint_zh="分数是 q @ k.transpose(-2, -1)：(B, N, d) @ (B, d, N) → (B, N, N)。",
                hint_en="The scores are q @ k.transpose(-2, -1): (B, N, d) @ (B, d, N) -> (B, N, N).",
            )
        rows = weights.float().sum(-1)
        if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
            cols = weights.float().sum(-2)
            if torch.allclose(cols, torch.ones_like(cols), atol=1e-4):
                hint = ("每一列加起来为 1，行却不是：softmax 用了 dim=-2（或返回了转置的权重）。应当对最后一维（键）做 softmax。",
                        "Columns sum to 1 but rows do not: softmax ran over dim=-2 (or the weights were transposed). "
                        "Take it over the last axis (the keys).")
            else:
                hint = ("权重要经过 softmax：weights = scores.softmax(dim=-1)。",
                        "The weights must go through a softmax: weights = scores.softmax(dim=-1).")
            return Check(
                *what, False,
                detail_zh=f"行和在 {rows.min():.3f} 到 {rows.max():.3f} 之间。",
                detail_en=f"row sums range from {rows.min():.3f} to {rows.max():.3f}.",
                hint_zh=hint[0], hint_en=hint[1],
            )
        return Check(*what, True)

    def weights_values():
        what = ("注意力权重与参考一致", "attention weights equal the reference")
        for i in range(len(_CASES)):
            _, weights = answer(i)
            _, ref_w = reference(i)
            if _close(weights, ref_w):
                continue
            if not is_module:
                x, w_q, w_k, _ = inputs(i)
                for name, (slip, hint_zh, hint_en) in _weight_slips(x, w_q, w_k).items():
                    if _close(weights, slip):
                        return Check(
                            *what, False,
                            detail_zh=f"在第 {i + 1} 组随机输入上不一致。", detail_en=f"they differ on random input {i + 1}.",
                            hint_zh=hint_zh, hint_en=hint_en,
                        )
            err = (weights.float() - ref_w).abs().max().item() if weights.shape == ref_w.shape else float("nan")
            return Check(
                *what, False,
                detail_zh=f"第 {i + 1} 组随机输入 {tuple(inputs(i)[0].shape)}：最大误差 {err:.3g}。",
                detail_en=f"random input {i + 1} {tuple(inputs(i)[0].shape)}: largest error {err:.3g}.",
                hint_zh="按顺序检查：q = x @ w_q，k = x @ w_k，scores = q @ kᵀ / √d（d = q.shape[-1]），softmax(dim=-1)。",
                hint_en="Check in order: q = x @ w_q, k = x @ w_k, scores = q @ kᵀ / √d (d = q.shape[-1]), softmax(dim=-1).",
            )
        return Check(*what, True, detail_zh=f"{len(_CASES)} 组随机输入都一致。", detail_en=f"equal on {len(_CASES)} random inputs.")

    def output_values():
        what = ("输出 out 与参考一致", "the output out equals the reference")
        for i in range(len(_CASES)):
            out, weights = answer(i)
            ref_out, ref_w = reference(i)
            if _close(out, ref_out):
                continue
            hint = ("out = weights @ v，其中 v = x @ w_v；形状 (B, N, d_v)。",
                    "out = weights @ v with v = x @ w_v; shape (B, N, d_v).")
            if not is_module:
                x, _, _, w_v = inputs(i)
                if _close(out, ref_w.transpose(-2, -1) @ (x @ w_v)):
                    hint = ("用了转置的权重去加权：应为 weights @ v（行 = 查询）。",
                            "The values were mixed with transposed weights: use weights @ v (rows = queries).")
                elif _close(out, ref_w @ x):
                    hint = ("忘了值投影：加权求和的是 v = x @ w_v，不是 x 本身。",
                            "You forgot the value projection: mix v = x @ w_v, not x itself.")
            shape_zh = f"形状 {tuple(out.shape)}，应为 {tuple(ref_out.shape)}" if out.shape != ref_out.shape else "数值不一致"
            shape_en = f"shape {tuple(out.shape)}, expected {tuple(ref_out.shape)}" if out.shape != ref_out.shape else "values differ"
            return Check(
                *what, False,
                detail_zh=f"第 {i + 1} 组随机输入：{shape_zh}。", detail_en=f"random input {i + 1}: {shape_en}.",
                hint_zh=hint[0], hint_en=hint[1],
            )
        return Check(*what, True)

    def no_input_change():
        x, *rest = inputs(0)
        before = [t.clone() for t in (x, *[r for r in rest if isinstance(r, torch.Tensor)])]
        with torch.no_grad():
            fn_or_module(x) if is_module else fn_or_module(x, *rest)
        after = [x, *[r for r in rest if isinstance(r, torch.Tensor)]]
        ok = all(torch.equal(a, b) for a, b in zip(before, after))
        return Check(
            "不修改输入", "leaves its inputs unchanged", ok,
            detail_zh="" if ok else "调用后 x 或权重矩阵变了。", detail_en="" if ok else "x or a weight matrix changed during the call.",
            hint_zh="不要用原地操作（如 x /= ... 或 x.mul_()）改输入。",
            hint_en="Do not modify the inputs in place (e.g. x /= ... or x.mul_()).",
        )

    steps = [runs, returns_pair, weights_shape_and_rows, weights_values, output_values, no_input_change]
    return run_checks("自注意力", "Self-attention", steps, stop_at_failure=True)


# ---------------------------------------------------------------------------------------------
# one query pixel's map
# ---------------------------------------------------------------------------------------------
_MAP_SIZE = (3, 5)
_MAP_QUERIES = ((0, 0), (1, 3), (2, 4), (2, 1))


def _map_weights() -> torch.Tensor:
    g = torch.Generator().manual_seed(55)
    n = _MAP_SIZE[0] * _MAP_SIZE[1]
    return torch.randn(n, n, generator=g).mul(2).softmax(-1)


@exercise(5, "5.2", "单个查询像素的注意力图", "One query pixel's attention map")
def check_attention_map(fn: Callable) -> Feedback:
    """Check ``fn(weights, (y, x), (h, w)) -> (h, w)``: the attention of query pixel ``(y, x)``.

    ``weights`` is ``(N, N)`` with ``N = h·w`` (rows = queries, columns = keys, pixels flattened
    row-major as ``reshape`` does: index ``y·w + x``). Checked on a 3×5 grid (h ≠ w). A function
    that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    """
    weights = _map_weights()
    h, w = _MAP_SIZE

    def call(query):
        return fn(weights.clone(), query, _MAP_SIZE)

    def runs():
        what = ("函数可以运行", "the function runs")
        if not callable(fn):
            return function_check(fn, "check_attention_map(attention_map)")
        try:
            call(_MAP_QUERIES[0])
        except NotImplementedError:
            return Check(
                *what, False, detail_zh="函数抛出了 NotImplementedError。", detail_en="the function raised NotImplementedError.",
                hint_zh="取出查询像素那一行，再 reshape 成 (h, w)。", hint_en="Take the query pixel's row, then reshape it to (h, w).",
                stub=True,  # the notebook's stub
            )
        except Exception as exc:
            return Check(
                *what, False, detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="weights 是 (N, N)，query 是 (y, x)，size 是 (h, w)。", hint_en="weights is (N, N), query is (y, x), size is (h, w).",
            )
        return Check(*what, True)

    def shape():
        out = call(_MAP_QUERIES[1])
        ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (h, w)
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        hint = ("reshape(h, w)：先高后宽。" if got == (w, h) else "返回一张 (h, w) 的张量：row.reshape(h, w)。",
                "reshape(h, w): height first, then width." if got == (w, h) else "Return an (h, w) tensor: row.reshape(h, w).")
        return Check(
            f"返回形状 ({h}, {w}) 的张量", f"returns a tensor of shape ({h}, {w})", ok,
            detail_zh="" if ok else f"得到 {got}。", detail_en="" if ok else f"got {got}.",
            hint_zh=hint[0], hint_en=hint[1],
        )

    def values():
        what = ("每个查询像素的注意力图都正确", "the map is right for every query pixel")
        for y, x in _MAP_QUERIES:
            out = call((y, x))
            ref = reference_attention_map(weights, (y, x), _MAP_SIZE)
            if _close(out, ref):
                continue
            slips = {
                "column": (weights[:, y * w + x].reshape(h, w),
                           "取成了列：行是查询、列是键，一个查询像素的注意力是 weights[i] 这一行。",
                           "You took a column: rows are queries, columns are keys; a query pixel's attention is row weights[i]."),
                "col_major": (weights[x * h + y].reshape(h, w),
                              "像素的编号错了：reshape 按行展开，像素 (y, x) 的编号是 y·w + x，不是 x·h + y。",
                              "Wrong pixel index: reshape flattens row by row, so pixel (y, x) is index y·w + x, not x·h + y."),
                "y_times_h": (weights[(y * h + x) % (h * w)].reshape(h, w),
                              "像素编号应为 y·w + x（乘以宽度 w），不是 y·h + x。",
                              "The pixel index is y·w + x (times the width w), not y·h + x."),
            }
            for slip, hint_zh, hint_en in slips.values():
                if _close(out, slip):
                    return Check(*what, False, detail_zh=f"查询像素 ({y}, {x}) 出错。", detail_en=f"wrong for query pixel ({y}, {x}).",
                                 hint_zh=hint_zh, hint_en=hint_en)
            return Check(
                *what, False, detail_zh=f"查询像素 ({y}, {x}) 出错。", detail_en=f"wrong for query pixel ({y}, {x}).",
                hint_zh="i = y * w + x；map = weights[i].reshape(h, w)。", hint_en="i = y * w + x; map = weights[i].reshape(h, w).",
            )
        return Check(*what, True, detail_zh=f"在 {h}×{w} 网格上的 {len(_MAP_QUERIES)} 个查询像素都对。",
                     detail_en=f"right for {len(_MAP_QUERIES)} query pixels on a {h}×{w} grid.")

    def sums_to_one():
        out = call(_MAP_QUERIES[2])
        total = float(out.sum())
        ok = abs(total - 1) < 1e-4
        return Check(
            "一张图的注意力加起来为 1", "one map's attention sums to 1", ok,
            detail_zh=f"总和 {total:.4f}。", detail_en=f"sum {total:.4f}.",
            hint_zh="不要对图做归一化或 softmax：一行注意力本身就加起来为 1。",
            hint_en="Do not normalise or softmax the map: one row of attention already sums to 1.",
        )

    return run_checks("单个查询像素的注意力图", "One query pixel's attention map", [runs, shape, values, sums_to_one],
                      stop_at_failure=True)
