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

__all__ = ["check_self_attention", "check_attention_map", "check_aggregation", "check_word_swap",
           "reference_self_attention", "reference_attention_map", "reference_aggregation", "aggregation_records",
           "reference_word_swap", "swap_sample", "SWAP_PROMPTS"]

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


# ---------------------------------------------------------------------------------------------
# 5.3 a DAAM-style aggregation, checked against the package's own AttentionStore.aggregate
# ---------------------------------------------------------------------------------------------
#: (layer path, kind, (h, w), number of calls): non-square grids (a transposed reshape shows), two
#: resolutions (the small one must be upsampled), self-attention records mixed in (they must be left out)
_AGG_LAYERS = (
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1", "self", (4, 6)),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2", "cross", (4, 6)),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", "cross", (2, 3)),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", "cross", (4, 6)),
)
_AGG_STEPS = (900, 500, 100)
_AGG_BATCH, _AGG_HEADS, _AGG_KEYS = 2, 3, 6
#: (token, size) the checker asks for
_AGG_CALLS = ((2, (8, 12)), (4, (12, 18)))


def aggregation_records() -> list:
    """The records :func:`check_aggregation` hands to the learner's function: a list of
    :class:`~unetlab.capture.AttentionRecord` as ``capture_attention`` makes them (three steps; three
    cross-attention layers at 4×6 and 2×3, 3 heads, 6 text tokens, batch 2; one self-attention layer)."""
    return list(_aggregation_store().records)


def _aggregation_store():
    from ..capture import AttentionStore

    g = torch.Generator().manual_seed(53)
    store = AttentionStore({path: kind for path, kind, _ in _AGG_LAYERS})
    for t in _AGG_STEPS:
        store.step = t
        for path, kind, (h, w) in _AGG_LAYERS:
            keys = h * w if kind == "self" else _AGG_KEYS
            # (B, heads, h·w, keys), rows sum to 1; sharpened so that maps differ between layers
            probs = (3 * torch.randn(_AGG_BATCH, _AGG_HEADS, h * w, keys, generator=g)).softmax(-1)
            store._add(path, kind, probs, (h, w))
    return store


def reference_aggregation(records, token: int, size: tuple[int, int]) -> torch.Tensor:
    """DAAM-style map ``(B, H, W)`` of text token ``token``: for every cross-attention layer, the
    probability column of ``token`` averaged over heads and calls (steps), laid on the layer's
    ``(h, w)`` grid (row-major), upsampled bilinearly (``align_corners=False``) to ``size``; then the
    mean over layers. Equals ``AttentionStore.aggregate(token=token, size=size)`` (Tang et al. 2023, DAAM,
    sum over layers, heads and steps up to a constant)."""
    import torch.nn.functional as F

    per_layer: dict[str, list[torch.Tensor]] = {}
    for r in records:
        if r.kind != "cross":
            continue
        h, w = r.size
        # (B, heads, h·w) -> mean over heads -> (B, h, w)
        per_layer.setdefault(r.layer, []).append(r.probs[..., token].float().mean(dim=1).reshape(-1, h, w))
    # {layer: (B, h, w)}, mean over the layer's calls (steps)
    maps = [torch.stack(v).mean(dim=0) for v in per_layer.values()]
    # (layers, B, H, W): bilinear, align_corners=False (as F.interpolate's default for images)
    up = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in maps]
    return torch.stack(up).mean(dim=0)


def _aggregation_slips(records, token, size):
    """name -> (map a typical slip produces, hint zh, hint en)."""
    import torch.nn.functional as F

    cross = [r for r in records if r.kind == "cross"]
    largest = max((r.size for r in cross), key=lambda s: s[0] * s[1])

    def agg(recs, column, mode="bilinear", align=False, reshape=None):
        per_layer: dict[str, list[torch.Tensor]] = {}
        for r in recs:
            h, w = r.size
            m = column(r)
            m = reshape(m, h, w) if reshape else m.reshape(-1, h, w)
            per_layer.setdefault(r.layer, []).append(m)
        maps = [torch.stack(v).mean(0) for v in per_layer.values()]
        kw = {"align_corners": align} if mode == "bilinear" else {}
        return torch.stack([F.interpolate(m[:, None], size=size, mode=mode, **kw)[:, 0] for m in maps]).mean(0)

    mean_heads = lambda r: r.probs[..., token].mean(1)  # noqa: E731
    right = reference_aggregation(records, token, size)
    lo, hi = right.amin((-2, -1), keepdim=True), right.amax((-2, -1), keepdim=True)
    n_layers = len({r.layer for r in cross})
    return {
        "self_included": (
            agg(records, mean_heads),
            "把自注意力的记录也算进去了。自注意力的键是像素，不是文本 token：先只保留 r.kind == \"cross\" 的记录。",
            "You included the self-attention records. Their keys are pixels, not text tokens: keep only records with r.kind == \"cross\".",
        ),
        "largest_only": (
            agg([r for r in cross if r.size == largest], mean_heads),
            "只用了最大分辨率的层，低分辨率的层被漏掉了。把每一层都上采样到 size，再对所有层取平均。",
            "Only the layers at the largest grid went in; the low-resolution layers were left out. "
            "Upsample every layer to size, then average over all layers.",
        ),
        "nearest": (
            agg(cross, mean_heads, mode="nearest"),
            "上采样用了最近邻。DAAM 和 AttentionStore.aggregate 用双线性插值：F.interpolate(..., mode=\"bilinear\", align_corners=False)。",
            "Nearest-neighbour upsampling. DAAM and AttentionStore.aggregate upsample bilinearly: "
            "F.interpolate(..., mode=\"bilinear\", align_corners=False).",
        ),
        "align_corners": (
            agg(cross, mean_heads, align=True),
            "双线性插值用了 align_corners=True；包里用 align_corners=False（把像素当作小方格，而不是格点）。",
            "Bilinear with align_corners=True; the package uses align_corners=False (pixels as little squares, not grid points).",
        ),
        "one_head": (
            agg(cross, lambda r: r.probs[:, 0, :, token]),
            "只取了第 0 个头。每个头的图都要：对头这一维（dim=1）取平均。",
            "You took head 0 only. Every head counts: average over the heads axis (dim=1).",
        ),
        "transposed_grid": (
            agg(cross, mean_heads, reshape=lambda m, h, w: m.reshape(-1, w, h).transpose(-2, -1)),
            "网格的高和宽弄反了：查询像素按行展开，编号 y·w + x，所以要 reshape(B, h, w)，不是 reshape(B, w, h) 再转置。",
            "Height and width of the grid are mixed up: queries are flattened row by row (index y·w + x), "
            "so reshape to (B, h, w), not to (B, w, h) and transpose.",
        ),
        "off_by_one": (
            agg(cross, lambda r: r.probs[..., token + 1].mean(1)),
            "取错了 token：用的是 token + 1 那一列。概率的最后一维就是 token 的编号，直接用 r.probs[..., token]。",
            "Wrong token: you took column token + 1. The last axis of the probabilities is the token index: use r.probs[..., token].",
        ),
        "summed_layers": (
            right * n_layers,
            f"对层求和而不是取平均（结果正好大了 {n_layers} 倍）。DAAM 的论文写的是求和，包里取平均（只差一个常数）；这里按包的约定取平均。",
            f"You summed over layers instead of averaging (exactly {n_layers}× too large). The DAAM paper sums; "
            "the package averages (a constant apart); here, average as the package does.",
        ),
        "normalized": (
            (right - lo) / (hi - lo),
            "把图拉伸到了 [0, 1]。不要归一化：要的是注意力概率本身的平均（它能和别的图比较大小）。",
            "You stretched the map to [0, 1]. Do not normalise: the mean of the probabilities themselves is asked "
            "for (it can be compared with other maps).",
        ),
    }


@exercise(5, "5.3", "DAAM 式的聚合：层、头、步", "A DAAM-style aggregation: layers, heads, steps")
def check_aggregation(fn: Callable) -> Feedback:
    """Check ``fn(records, token, size) -> (B, H, W)`` against ``AttentionStore.aggregate(token=, size=)``.

    ``records``: a list of :class:`~unetlab.capture.AttentionRecord` (self- and cross-attention mixed,
    two grid sizes, three steps: :func:`aggregation_records`); ``token``: a text-token index;
    ``size``: ``(H, W)``. The learner may not call the store's own helpers (they get a plain list).
    A function that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    """
    store = _aggregation_store()
    answers: dict[int, object] = {}

    def answer(i: int):
        if i not in answers:
            token, size = _AGG_CALLS[i]
            # a fresh copy every call: an answer that edits the records in place cannot spoil the next case
            recs = [type(r)(r.layer, r.kind, r.call, r.step, r.probs.clone(), r.size) for r in store.records]
            answers[i] = fn(recs, token, size)
        return answers[i]

    def runs():
        what = ("函数可以运行", "the function runs")
        if not callable(fn):
            return function_check(fn, "check_aggregation(my_aggregate)")
        try:
            answer(0)
        except NotImplementedError:
            return Check(
                *what, False, detail_zh="函数抛出了 NotImplementedError。", detail_en="the function raised NotImplementedError.",
                hint_zh="对每条交叉注意力记录取 probs[..., token]，对头取平均，摆成 (h, w)；每层对步取平均，上采样到 size，再对层取平均。",
                hint_en="For every cross-attention record take probs[..., token], average the heads, lay it on (h, w); "
                        "average each layer over its steps, upsample to size, then average the layers.",
                stub=True,  # the notebook's stub
            )
        except Exception as exc:
            return Check(
                *what, False, detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="每条记录 r 有 r.layer、r.kind、r.step、r.size = (h, w)、r.probs = (B, heads, h·w, keys)。",
                hint_en="Every record r has r.layer, r.kind, r.step, r.size = (h, w), r.probs = (B, heads, h·w, keys).",
            )
        return Check(*what, True)

    def shape():
        token, size = _AGG_CALLS[0]
        out = answer(0)
        want = (_AGG_BATCH, *size)
        ok = isinstance(out, torch.Tensor) and tuple(out.shape) == want
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Check(
            f"返回形状 (B, H, W) = {want} 的张量", f"returns a tensor of shape (B, H, W) = {want}", ok,
            detail_zh="" if ok else f"得到 {got}。", detail_en="" if ok else f"got {got}.",
            hint_zh="每张图一张 size 大小的图：对层、头、步都取了平均，只剩批次这一维。",
            hint_en="One size-sized map per image: layers, heads and steps are averaged away, the batch axis stays.",
        )

    def values():
        what = ("与 AttentionStore.aggregate 一致", "equals AttentionStore.aggregate")
        for i, (token, size) in enumerate(_AGG_CALLS):
            out = answer(i)
            ref = store.aggregate(token=token, size=size)
            if _close(out, ref):
                continue
            for slip, hint_zh, hint_en in _aggregation_slips(store.records, token, size).values():
                if _close(out, slip):
                    return Check(*what, False, detail_zh=f"token {token}、size {size} 时不一致。",
                                 detail_en=f"they differ for token {token}, size {size}.", hint_zh=hint_zh, hint_en=hint_en)
            err = (out.float() - ref).abs().max().item() if isinstance(out, torch.Tensor) and out.shape == ref.shape else float("nan")
            return Check(
                *what, False, detail_zh=f"token {token}、size {size}：最大误差 {err:.3g}。",
                detail_en=f"token {token}, size {size}: largest error {err:.3g}.",
                hint_zh="顺序：只留交叉注意力 → probs[..., token] 对头平均 → reshape(B, h, w) → 每层对步平均 → 双线性上采样 → 对层平均。",
                hint_en="In order: cross-attention only -> probs[..., token] averaged over heads -> reshape(B, h, w) -> "
                        "each layer averaged over steps -> bilinear upsampling -> mean over layers.",
            )
        return Check(*what, True, detail_zh=f"{len(_AGG_CALLS)} 组 (token, size) 都一致。",
                     detail_en=f"equal for {len(_AGG_CALLS)} (token, size) pairs.")

    return run_checks("DAAM 式的聚合", "A DAAM-style aggregation", [runs, shape, values], stop_at_failure=True)


# ---------------------------------------------------------------------------------------------
# 5.4 a prompt-to-prompt word swap through the attention probabilities hook
# ---------------------------------------------------------------------------------------------
#: (source prompt, target prompt, random seed of the starting noise) the checker runs
SWAP_PROMPTS = (("a large red square at the bottom left", "a large red circle at the bottom left", 0),
                ("a small blue triangle at the top", "a small green triangle at the top", 1))
#: DDIM steps and guidance scale of :func:`swap_sample`
SWAP_STEPS, SWAP_GUIDANCE = 10, 3.0


def swap_sample(model, prompt: str, seed: int, on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """One image ``(1, 3, 32, 32)`` of the small text-to-image model: DDIM, :data:`SWAP_STEPS` steps,
    classifier-free guidance :data:`SWAP_GUIDANCE`, starting noise from ``torch.Generator().manual_seed(seed)``.

    The sampler is the model's own (:meth:`unetlab.text2img.TextToImage.make_sampler`): its noise schedule,
    its ``prediction_type`` (v for the shipped model) and its timestep spacing ("trailing" on a zero-terminal-SNR
    schedule). The guided UNet call runs on the batch ``[empty prompt; prompt]`` (row 1 is the text half);
    guidance combines the two halves of the raw output linearly, whatever it predicts.
    ``on_step(t)`` (an int timestep) is called before each UNet call: set a step label or a hook's state there.
    """
    from ..guidance import guided_eps

    with torch.no_grad():
        # (1, L, D) each
        text, empty = model.encode([prompt]), model.encode([""])

        def model_fn(x, t):
            if on_step is not None:
                on_step(int(t.reshape(-1)[0]))
            return guided_eps(model.unet, x, t, text, empty, guidance_scale=SWAP_GUIDANCE)

        # the model's schedule, prediction type and timestep spacing (a fresh NoiseSchedule() would be SD's eps one)
        sampler = model.make_sampler(SWAP_STEPS)
        return sampler.sample(model_fn, (1, 3, 32, 32), generator=torch.Generator().manual_seed(seed), progress=False)


def _swap(model, source: str, target: str, seed: int, *, rows=(1,), shift: int = 0, inject: bool = True):
    """The reference and its slips: record source's cross-attention per (layer, step), then sample ``target``
    with the recorded probabilities of batch ``rows`` put back (``shift``: take them from another step)."""
    from ..capture import attention_layers, capture_attention

    with capture_attention(model.unet, "cross") as store:
        src = swap_sample(model, source, seed, on_step=store.set_step)
    # {(layer, step): (2, heads, h·w, keys)}: both halves of the guided batch
    recorded = {(r.layer, r.step): r.probs for r in store.records}
    steps = list(store.steps)
    state = {"t": None}
    handles = []
    if inject:
        for path, kind in attention_layers(model.unet).items():
            if kind != "cross":
                continue

            def hook(module, probs, path=path):
                i = steps.index(state["t"])
                old = recorded[(path, steps[min(max(i + shift, 0), len(steps) - 1)])]
                new = probs.clone()
                # the text half (row 1) of [empty; prompt] takes the source's map
                new[list(rows)] = old[list(rows)].to(probs.dtype)
                return new

            handles.append(model.unet.get_submodule(path).register_probs_hook(hook))
    try:
        edited = swap_sample(model, target, seed, on_step=lambda t: state.__setitem__("t", t))
    finally:
        for h in handles:
            h.remove()
    return src, edited


def reference_word_swap(model, source: str, target: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-to-prompt's word swap (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention
    Control", §3.2 "word swap"): sample ``source`` with :func:`swap_sample`, recording every cross-attention
    layer's probabilities at every step; then sample ``target`` from the same noise, and in every
    cross-attention layer at every step replace the text half's probabilities (batch row 1 of the
    guided batch) with the source's, through :meth:`unetlab.attention.Attention.register_probs_hook`.
    The two prompts must have equally many tokens. Returns ``(source image, edited image)``, each ``(1, 3, 32, 32)``."""
    return _swap(model, source, target, seed)


def _swap_model():
    from ..text2img import load_text2img

    return load_text2img()


@exercise(5, "5.4", "prompt-to-prompt：换一个词", "Prompt-to-prompt: swap one word")
def check_word_swap(fn: Callable, model=None) -> Feedback:
    """Check ``fn(model, source, target, seed) -> (source image, edited image)`` against
    :func:`reference_word_swap` on :data:`SWAP_PROMPTS` (the shipped small text-to-image model unless
    ``model`` is given). Diagnoses: no injection (the plain target image), the source sampled twice,
    both halves of the guided batch replaced, the maps of the neighbouring step. A function that
    raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet"."""
    model = _swap_model() if model is None else model
    answers: dict[int, object] = {}

    def answer(i: int):
        if i not in answers:
            source, target, seed = SWAP_PROMPTS[i]
            answers[i] = fn(model, source, target, seed)
        return answers[i]

    def runs():
        what = ("函数可以运行", "the function runs")
        if not callable(fn):
            return function_check(fn, "check_word_swap(word_swap)")
        try:
            answer(0)
        except NotImplementedError:
            return Check(
                *what, False, detail_zh="函数抛出了 NotImplementedError。", detail_en="the function raised NotImplementedError.",
                hint_zh="先用 capture_attention 记录源描述每一步、每一层的交叉注意力；再给每个交叉注意力层注册概率钩子，"
                        "在生成目标描述时把记录下的概率换进去。",
                hint_en="First record the source prompt's cross-attention at every step and layer with capture_attention; then "
                        "register a probabilities hook on every cross-attention layer that puts the recorded probabilities "
                        "in while the target prompt is sampled.",
                stub=True,  # the notebook's stub
            )
        except Exception as exc:
            return Check(
                *what, False, detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="钩子的签名是 hook(module, probs)，返回同形状的新张量（不要原地修改 probs）；用完要 handle.remove()。",
                hint_en="A hook is hook(module, probs) and returns a new tensor of the same shape (do not edit probs in place); "
                        "call handle.remove() afterwards.",
            )
        return Check(*what, True)

    def pair():
        out = answer(0)
        ok = (isinstance(out, (tuple, list)) and len(out) == 2
              and all(isinstance(x, torch.Tensor) and tuple(x.shape) == (1, 3, 32, 32) for x in out))
        return Check(
            "返回 (源图, 编辑后的图)，各 (1, 3, 32, 32)", "returns (source image, edited image), each (1, 3, 32, 32)", ok,
            detail_zh="" if ok else f"得到 {type(out).__name__}。", detail_en="" if ok else f"got {type(out).__name__}.",
            hint_zh="return source_image, edited_image：两张都用 swap_sample 生成。",
            hint_en="return source_image, edited_image: both made with swap_sample.",
        )

    def values():
        what = ("编辑后的图与参考一致", "the edited image equals the reference")
        for i, (source, target, seed) in enumerate(SWAP_PROMPTS):
            src, edited = answer(i)
            ref_src, ref_edit = _swap(model, source, target, seed)
            if not tensors_close(src, ref_src, atol=1e-4):
                return Check(*what, False, detail_zh=f"“{source}”的源图就不一致。", detail_en=f"the source image of '{source}' differs.",
                             hint_zh=f"源图要用 swap_sample(model, source, seed) 生成（随机种子 {seed}）。",
                             hint_en=f"Make the source image with swap_sample(model, source, seed) (random seed {seed}).")
            if tensors_close(edited, ref_edit, atol=1e-4):
                continue
            slips = {
                "plain": (swap_sample(model, target, seed),
                          "编辑后的图就是直接生成目标描述的图：注意力图没有被换进去。钩子注册了吗？它返回新的概率了吗？",
                          "The edited image is the target prompt sampled plainly: no map was injected. Were the hooks "
                          "registered, and do they return the new probabilities?"),
                "source": (ref_src,
                           "编辑后的图和源图一模一样：第二次生成用的还是源描述。第二次要用目标描述。",
                           "The edited image is the source image: the second run used the source prompt again. Use the target prompt."),
                "both_rows": (_swap(model, source, target, seed, rows=(0, 1))[1],
                              "把批次的两半都换了。引导批次是 [空描述; 描述]，只有第 1 行（有文字的那一半）读目标描述，只换它。",
                              "You replaced both halves of the batch. The guided batch is [empty prompt; prompt]; only row 1 "
                              "(the text half) reads the target prompt: replace that one."),
                "next_step": (_swap(model, source, target, seed, shift=1)[1],
                              "用的是下一步记录的图。每一步要用同一个时间步 t 记录的图：用 on_step 记下当前的 t。",
                              "You used the maps of the next step. Each step takes the maps recorded at the same timestep t: "
                              "keep the current t with on_step."),
                "prev_step": (_swap(model, source, target, seed, shift=-1)[1],
                              "用的是上一步记录的图。每一步要用同一个时间步 t 记录的图：用 on_step 记下当前的 t。",
                              "You used the maps of the previous step. Each step takes the maps recorded at the same timestep t: "
                              "keep the current t with on_step."),
            }
            for slip, hint_zh, hint_en in slips.values():
                if tensors_close(edited, slip, atol=1e-4):
                    return Check(*what, False, detail_zh=f"“{source}” → “{target}” 不一致。",
                                 detail_en=f"'{source}' -> '{target}' differs.", hint_zh=hint_zh, hint_en=hint_en)
            err = (edited.float() - ref_edit).abs().max().item() if isinstance(edited, torch.Tensor) and edited.shape == ref_edit.shape else float("nan")
            return Check(*what, False, detail_zh=f"“{source}” → “{target}”：最大误差 {err:.3g}。",
                         detail_en=f"'{source}' -> '{target}': largest error {err:.3g}.",
                         hint_zh="每个交叉注意力层、每一步：新概率 = probs 的拷贝，第 1 行换成源描述同一层同一步记录的第 1 行。",
                         hint_en="In every cross-attention layer at every step: new probs = a copy of probs whose row 1 is "
                                 "row 1 recorded for the source at the same layer and step.")
        return Check(*what, True, detail_zh=f"{len(SWAP_PROMPTS)} 对描述都一致。", detail_en=f"equal on {len(SWAP_PROMPTS)} prompt pairs.")

    return run_checks("prompt-to-prompt：换一个词", "Prompt-to-prompt: swap one word", [runs, pair, values], stop_at_failure=True)
