"""Chapter 4 homework: timestep embeddings (study note 003's "visualise the embedding at different
timesteps and describe the pattern", made checkable).

* :func:`check_embedding` — the learner writes Stable Diffusion's sinusoidal embedding
  ``fn(timesteps, dim) -> (B, dim)``; compared with the reference on several ``t`` and ``dim``,
  with hints for the usual slips (sin/cos order, ``half - 1`` instead of ``half``, dtype, shape).
* :func:`check_similarity_matrix` — the learner's cosine-similarity matrix between the
  embeddings of given timesteps; hints for a raw dot product, a dims x dims matrix, distances,
  the wrong formula variant.
* :func:`check_gap_prediction` — the learner's *own* embedding variant (their frequencies): they
  predict the mean cosine similarity of timesteps ``GAP`` steps apart from the frequencies alone
  (``mean_i cos(w_i·GAP)``), then measure it; both are compared with a recomputation, with hints
  for a raw dot product, the wrong gap, SD's frequencies instead of theirs, one frequency only.
* :func:`check_smooth_embedding` — an embedding designed to a specification (:data:`SMOOTH_SPEC`):
  neighbours ``GAP`` steps apart alike, timesteps far apart told apart; the hints say which
  frequencies break which half of it.

The reference is :func:`unetlab.embeddings.sinusoidal_embedding` with SD's settings
(``flip_sin_to_cos=True``, ``downscale_freq_shift=0``). Every checker returns a
:class:`~unetlab.homework.feedback.Feedback` and never raises because of the answer.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..embeddings import sinusoidal_embedding
from .answers import as_number, function_check
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks, run_gated
from .stubs import is_blank

__all__ = ["check_embedding", "check_similarity_matrix", "check_gap_prediction", "check_smooth_embedding",
           "gap_similarity", "GAP", "VARIANT_DIM", "SMOOTH_SPEC"]

# t values and dims the embedding checker tries: t = 0 (all cos = 1), small t (fast dims move),
# large t (slow dims move) and a fractional t; 320 is SD 1.x/2.x's width, 256 SDXL's add_time_proj
_CHECK_TIMESTEPS = torch.tensor([0, 1, 7, 50, 333, 999])
_CHECK_DIMS = (320, 64, 8)
_ATOL = 1e-4
# one name for the type/shape/dtype check, whichever part of it fails, so a re-run shows the same line
_RETURNS = ("返回 float32 张量，形状 (B, dim)", "returns a float32 tensor of shape (B, dim)")


def _sd(t: torch.Tensor, dim: int) -> torch.Tensor:
    return sinusoidal_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


# (name, flip, shift) of the variants a learner most often writes instead of SD's
_VARIANTS = {
    "seed003": (False, 1.0),  # study note 003's TimeEmbedding: [sin | cos], i / (half - 1)
    "no_flip": (False, 0.0),  # right frequencies, [sin | cos] order
    "shift1": (True, 1.0),  # right order, i / (half - 1)
}

_VARIANT_HINTS = {
    "seed003": (
        "这是学习笔记 003 的公式（先 sin 后 cos，指数除以 half − 1）。SD 用 flip_sin_to_cos=True（先 cos 后 sin）"
        "和 downscale_freq_shift=0（指数除以 half）。",
        "This is study note 003's formula ([sin | cos], exponent divided by half − 1). SD uses "
        "flip_sin_to_cos=True ([cos | sin]) and downscale_freq_shift=0 (divide by half).",
    ),
    "no_flip": (
        "频率对了，但 sin 和 cos 的顺序反了：SD 把 cos 放在前半，sin 放在后半。",
        "The frequencies are right but sin and cos are swapped: SD puts cos in the first half, sin in the second.",
    ),
    "shift1": (
        "顺序对了，但指数除以了 half − 1；SD 的 downscale_freq_shift=0，应除以 half：w_i = 10000^(−i/half)。",
        "The order is right but the exponent is divided by half − 1; SD's downscale_freq_shift=0 "
        "divides by half: w_i = 10000^(−i/half).",
    ),
}


def _which_variant(x: torch.Tensor, t: torch.Tensor, dim: int) -> str | None:
    for name, (flip, shift) in _VARIANTS.items():
        ref = sinusoidal_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        if x.shape == ref.shape and torch.allclose(x, ref, atol=_ATOL):
            return name
    return None


def _first_mismatch(x: torch.Tensor, ref: torch.Tensor, t: torch.Tensor) -> tuple[str, str]:
    diff = (x - ref).abs()
    row, col = divmod(int(diff.argmax()), diff.shape[1])
    zh = (
        f"最大误差 {diff.max():.3g}，出现在 t={t[row].item():g}、第 {col} 维："
        f"你的值 {x[row, col]:.4f}，参考值 {ref[row, col]:.4f}。"
    )
    en = (
        f"largest error {diff.max():.3g} at t={t[row].item():g}, dimension {col}: "
        f"yours {x[row, col]:.4f}, reference {ref[row, col]:.4f}."
    )
    return zh, en


@exercise(4, "4.1", "练习 4.1：SD 的正弦时间步嵌入", "Exercise 4.1: SD's sinusoidal timestep embedding")
def check_embedding(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Feedback:
    """Check ``fn(timesteps, dim)`` against SD's sinusoidal embedding.

    ``timesteps`` is a ``(B,)`` tensor (int64, and once float32 with a fractional value), ``dim``
    is even; ``fn`` must return a float32 tensor ``(B, dim)`` laid out as ``[cos | sin]``.
    A function that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    """
    outputs: dict[str, object] = {}

    def call(t: torch.Tensor, dim: int):
        key = f"{dim}:{t.dtype}"
        if key not in outputs:
            outputs[key] = fn(t.clone(), dim)
        return outputs[key]

    def runs():
        if not callable(fn):
            return function_check(fn, "check_embedding(my_embedding)")
        try:
            out = call(_CHECK_TIMESTEPS, 320)
        except NotImplementedError:
            return Check(
                "函数可以运行", "the function runs", False,
                detail_zh="函数抛出了 NotImplementedError。", detail_en="the function raised NotImplementedError.",
                hint_zh="把 raise NotImplementedError 换成你的实现。",
                hint_en="Replace raise NotImplementedError with your implementation.",
                stub=True,  # the notebook's stub
            )
        except Exception as exc:
            return Check(
                "函数可以运行", "the function runs", False,
                detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="先在一个小例子上单独运行：my_embedding(torch.tensor([0, 1, 999]), 8)。",
                hint_en="Run it on its own on a small case first: my_embedding(torch.tensor([0, 1, 999]), 8).",
            )
        return Check("函数可以运行", "the function runs", True)

    def output_type_shape_dtype():
        out = call(_CHECK_TIMESTEPS, 320)
        if not isinstance(out, torch.Tensor):
            return Check(
                *_RETURNS, False,
                detail_zh=f"返回的是 {type(out).__name__}。", detail_en=f"returned a {type(out).__name__}.",
                hint_zh="用 torch 运算（torch.sin、torch.cos、torch.cat）并返回张量。",
                hint_en="Use torch operations (torch.sin, torch.cos, torch.cat) and return the tensor.",
            )
        want = (len(_CHECK_TIMESTEPS), 320)
        if tuple(out.shape) != want:
            hint = ("t[:, None] * freqs[None, :] 得到 (B, half)，再在最后一维拼接 cos 和 sin。",
                    "t[:, None] * freqs[None, :] gives (B, half); then concatenate cos and sin on the last dim.")
            if tuple(out.shape) == want[::-1]:
                hint = ("形状转置了：行对应时间步，列对应维度。", "The shape is transposed: rows are timesteps, columns are dims.")
            elif tuple(out.shape) == (want[0], 160):
                hint = ("只有一半的维度：cos 和 sin 要拼接起来（torch.cat(..., dim=-1)）。",
                        "Only half the dims: concatenate cos and sin (torch.cat(..., dim=-1)).")
            return Check(
                *_RETURNS, False,
                detail_zh=f"B={want[0]}、dim=320 时得到 {tuple(out.shape)}，应为 {want}。",
                detail_en=f"for B={want[0]}, dim=320 got {tuple(out.shape)}, expected {want}.",
                hint_zh=hint[0], hint_en=hint[1],
            )
        if out.dtype != torch.float32:
            return Check(
                *_RETURNS, False,
                detail_zh=f"输入是 int64 的时间步，返回的 dtype 是 {out.dtype}。",
                detail_en=f"with int64 timesteps the result has dtype {out.dtype}.",
                hint_zh="先把时间步转成浮点：t.float()；频率也用 float32 计算。",
                hint_en="Convert the timesteps to float first (t.float()) and compute the frequencies in float32.",
            )
        return Check(*_RETURNS, True)

    def values(dim: int):
        def step():
            out = call(_CHECK_TIMESTEPS, dim)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(_CHECK_TIMESTEPS), dim):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                return Check(
                    f"dim={dim} 的数值与 SD 一致", f"values match SD's for dim={dim}", False,
                    detail_zh=f"形状不对：{shape}。", detail_en=f"wrong shape: {shape}.",
                    hint_zh="先让形状正确（见上一项）。", hint_en="Get the shape right first (see above).",
                )
            x = out.detach().float().cpu()
            ref = _sd(_CHECK_TIMESTEPS, dim)
            if torch.allclose(x, ref, atol=_ATOL):
                return Check(f"dim={dim} 的数值与 SD 一致", f"values match SD's for dim={dim}", True)
            zh, en = _first_mismatch(x, ref, _CHECK_TIMESTEPS)
            variant = _which_variant(x, _CHECK_TIMESTEPS, dim)
            if variant is not None:
                hint_zh, hint_en = _VARIANT_HINTS[variant]
            elif not torch.allclose(x[0], ref[0], atol=_ATOL):
                hint_zh = "t=0 时前半（cos）应全为 1、后半（sin）全为 0。检查拼接顺序和 t 的用法。"
                hint_en = "At t=0 the first half (cos) must be all 1 and the second half (sin) all 0. Check the order and how t enters."
            else:
                hint_zh = "检查频率：w_i = exp(−ln(10000)·i/half)，i = 0 … half−1；角度是 t·w_i。"
                hint_en = "Check the frequencies: w_i = exp(−ln(10000)·i/half), i = 0 … half−1; the angle is t·w_i."
            return Check(
                f"dim={dim} 的数值与 SD 一致", f"values match SD's for dim={dim}", False,
                detail_zh=zh, detail_en=en, hint_zh=hint_zh, hint_en=hint_en,
            )

        step.__name__ = f"values_dim{dim}"
        return step

    def fractional_float_timesteps():
        t = torch.tensor([0.5, 12.25, 500.0])
        out = call(t, 64)
        ref = _sd(t, 64)
        ok = isinstance(out, torch.Tensor) and out.shape == ref.shape and torch.allclose(out.detach().float(), ref, atol=_ATOL)
        return Check(
            "float 时间步（可以是小数）也正确", "float (fractional) timesteps work too", ok,
            hint_zh="不要把 t 取整；直接用 t.float() 乘以频率。",
            hint_en="Do not round t; multiply t.float() by the frequencies.",
        )

    title = ("练习 4.1：SD 的正弦时间步嵌入", "Exercise 4.1: SD's sinusoidal timestep embedding")
    rest = [values(d) for d in _CHECK_DIMS] + [fractional_float_timesteps]
    return run_gated(*title, gates=[runs, output_type_shape_dtype], rest=rest)


def _cosine_similarity(emb: torch.Tensor) -> torch.Tensor:
    # unit rows, then all pairwise dot products: (N, D) -> (N, N)
    unit = torch.nn.functional.normalize(emb, dim=1)
    return unit @ unit.T


def _as_timesteps(timesteps) -> torch.Tensor:
    t = torch.as_tensor(timesteps)
    if t.ndim != 1 or len(t) < 2 or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be a 1-d list or tensor of at least 2 numbers, got shape {tuple(t.shape)}")
    return t


@exercise(4, "4.2", "练习 4.2：时间步之间的余弦相似度矩阵", "Exercise 4.2: cosine-similarity matrix between timesteps")
def check_similarity_matrix(sim, timesteps, dim: int = 320) -> Feedback:
    """Check a cosine-similarity matrix ``sim[a, b] = cos(e(t_a), e(t_b))`` of SD's embedding.

    ``timesteps`` are the ``N`` timesteps the learner embedded (list or ``(N,)`` tensor), ``dim``
    the embedding width they used; ``sim`` must be ``(N, N)``. A blank ``sim`` (the notebook's stub
    ``hw_sim = None``) is "not attempted yet".
    """
    title = ("练习 4.2：时间步之间的余弦相似度矩阵", "Exercise 4.2: cosine-similarity matrix between timesteps")
    if is_blank(sim):
        shown = "None" if sim is None else repr(sim)
        return run_checks(*title, [lambda: Check(
            "sim 是 (N, N) 张量", "sim is an (N, N) tensor", False, detail_zh=f"sim 还是 {shown}。",
            detail_en=f"sim is still {shown}.",
            hint_zh="把相似度矩阵算出来并赋值给 sim。", hint_en="Compute the similarity matrix and assign it to sim.",
            stub=True,
        )])
    try:
        t = _as_timesteps(timesteps)
    except Exception as exc:
        return run_checks(*title, [lambda: Check(
            "timesteps 是一维的时间步列表", "timesteps is a 1-d list of timesteps", False,
            detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
            hint_zh="传入你嵌入的那些时间步，例如 torch.arange(0, 1000, 50)。",
            hint_en="Pass the timesteps you embedded, e.g. torch.arange(0, 1000, 50).",
        )])
    if not isinstance(dim, int) or dim < 4 or dim % 2:
        return run_checks(*title, [lambda: Check(
            "dim 是偶数", "dim is an even number", False, detail_zh=f"dim={dim!r}", detail_en=f"dim={dim!r}",
            hint_zh="传入你用的嵌入维度，例如 dim=64。", hint_en="Pass the embedding width you used, e.g. dim=64.",
        )])
    n = len(t)
    emb = _sd(t, dim)
    ref = _cosine_similarity(emb)
    state: dict[str, torch.Tensor] = {}

    def is_square_tensor():
        try:
            s = torch.as_tensor(sim.detach() if isinstance(sim, torch.Tensor) else sim, dtype=torch.float32)
        except Exception as exc:
            return Check(
                "sim 是 (N, N) 张量", "sim is an (N, N) tensor", False,
                detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                hint_zh="sim 应是 torch.Tensor（或 numpy 数组）。", hint_en="sim should be a torch.Tensor (or a numpy array).",
            )
        if tuple(s.shape) != (n, n):
            hint = ("每个时间步一行一列：用 E @ E.T，E 的形状是 (N, dim)。",
                    "One row and one column per timestep: use E @ E.T with E of shape (N, dim).")
            if tuple(s.shape) == (dim, dim):
                hint = ("你比较的是维度而不是时间步：E.T @ E 是 (dim, dim)，要的是 E @ E.T。",
                        "You compared dimensions, not timesteps: E.T @ E is (dim, dim); you want E @ E.T.")
            return Check(
                "sim 是 (N, N) 张量", "sim is an (N, N) tensor", False,
                detail_zh=f"N={n} 个时间步，sim 的形状却是 {tuple(s.shape)}。",
                detail_en=f"{n} timesteps but sim has shape {tuple(s.shape)}.",
                hint_zh=hint[0], hint_en=hint[1],
            )
        state["sim"] = s.cpu()
        return Check("sim 是 (N, N) 张量", "sim is an (N, N) tensor", True, detail_zh=f"N = {n}", detail_en=f"N = {n}")

    def diagonal_is_one():
        s = state["sim"]
        diag = s.diagonal()
        if torch.allclose(diag, torch.ones(n), atol=1e-3):
            return Check("对角线全为 1（每个嵌入与自己完全相似）", "the diagonal is 1 (each embedding is fully similar to itself)", True)
        # cdist leaves ~1e-3 of float round-off on its zero diagonal
        if torch.allclose(diag, torch.zeros(n), atol=1e-2):
            hint = ("对角线为 0，像是距离而不是相似度。余弦相似度 = 单位向量的点积。",
                    "A zero diagonal looks like a distance, not a similarity. Cosine similarity = dot product of unit vectors.")
        elif torch.allclose(diag, torch.full((n,), dim / 2), rtol=1e-3):
            hint = (f"对角线是 {dim // 2}：你算的是未归一化的点积。先把每一行除以它的长度（F.normalize(E, dim=1)）。",
                    f"The diagonal is {dim // 2}: that is the raw dot product. Divide each row by its length first (F.normalize(E, dim=1)).")
        else:
            hint = ("余弦相似度：把每个嵌入归一化为单位长度，再两两点积。",
                    "Cosine similarity: normalise every embedding to unit length, then take all dot products.")
        return Check(
            "对角线全为 1（每个嵌入与自己完全相似）", "the diagonal is 1 (each embedding is fully similar to itself)", False,
            detail_zh=f"对角线的值在 {diag.min():.3f} 到 {diag.max():.3f} 之间。",
            detail_en=f"diagonal values range from {diag.min():.3f} to {diag.max():.3f}.",
            hint_zh=hint[0], hint_en=hint[1],
        )

    def symmetric():
        s = state["sim"]
        ok = torch.allclose(s, s.T, atol=1e-4)
        return Check(
            "矩阵对称：sim[a, b] = sim[b, a]", "symmetric: sim[a, b] = sim[b, a]", ok,
            hint_zh="余弦相似度与顺序无关；E @ E.T 自然是对称的。", hint_en="Cosine similarity does not depend on order; E @ E.T is symmetric.",
        )

    def matches_reference():
        s = state["sim"]
        if torch.allclose(s, ref, atol=1e-3):
            return Check(
                "数值与参考一致（SD 公式）", "values match the reference (SD's formula)", True,
                detail_zh=f"例如 sim[0, 1] = {ref[0, 1]:.4f}", detail_en=f"e.g. sim[0, 1] = {ref[0, 1]:.4f}",
            )
        err = (s - ref).abs().max()
        hint = ("用 SD 的嵌入（flip_sin_to_cos=True, downscale_freq_shift=0，宽度为 dim），再算余弦相似度。",
                "Use SD's embedding (flip_sin_to_cos=True, downscale_freq_shift=0, width dim), then cosine similarity.")
        if torch.allclose(s, ref * (dim / 2), rtol=1e-3, atol=1e-2):
            hint = ("每个值都是参考的 dim/2 倍：少了归一化。", "Every value is dim/2 times the reference: the normalisation is missing.")
        else:
            seed_sim = _cosine_similarity(sinusoidal_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1))
            if torch.allclose(s, seed_sim, atol=1e-3):
                hint = ("这是学习笔记 003 公式的相似度（除以 half − 1）。用 SD 的 downscale_freq_shift=0。",
                        "This is the similarity of study note 003's formula (divides by half − 1). Use SD's downscale_freq_shift=0.")
            else:
                for other in {64, 128, 256, 320} - {dim}:
                    if torch.allclose(s, _cosine_similarity(_sd(t, other)), atol=1e-3):
                        hint = (f"这像是 dim={other} 的结果；调用检查器时传入你用的 dim。",
                                f"This looks like dim={other}; pass the dim you used to the checker.")
                        break
        return Check(
            "数值与参考一致（SD 公式）", "values match the reference (SD's formula)", False,
            detail_zh=f"最大误差 {err:.3g}。", detail_en=f"largest error {err:.3g}.",
            hint_zh=hint[0], hint_en=hint[1],
        )

    return run_gated(*title, gates=[is_square_tensor], rest=[diagonal_is_one, symmetric, matches_reference])


# ---------------------------------------------------------------------------------------------
# 4.3 and 4.4: the learner's own embedding
# ---------------------------------------------------------------------------------------------
#: the gap (in steps) of exercises 4.3 and 4.4
GAP = 5
#: the embedding width of the learner's variant
VARIANT_DIM = 64
#: exercise 4.4: mean similarity at ``GAP`` at least ``near``; every pair at least ``far_gap``
#: steps apart (t = 0 … 999) at most ``far``
SMOOTH_SPEC = {"near": 0.95, "far_gap": 200, "far": 0.5}
_ALL_T = torch.arange(1000)


def gap_similarity(emb: torch.Tensor, gap: int) -> float:
    """Mean cosine similarity of rows ``gap`` apart: ``mean_t cos(emb[t], emb[t + gap])`` for ``emb`` (T, dim)."""
    # (T, dim) unit rows; sum over dim of products of rows gap apart -> (T - gap,)
    unit = torch.nn.functional.normalize(emb.double(), dim=1)
    return float((unit[:-gap] * unit[gap:]).sum(dim=1).mean())


def _learner_embedding(fn, dim: int):
    """(emb (1000, dim) float64, None) or (None, Check) for t = 0 … 999; NotImplementedError -> a stub check."""
    if not callable(fn):
        return None, function_check(fn, "check_gap_prediction(my_variant, ...)")
    try:
        out = fn(_ALL_T.clone(), dim)
    except NotImplementedError:
        return None, Check("你的嵌入函数", "your embedding function", False, "函数抛出了 NotImplementedError。",
                           "the function raised NotImplementedError.",
                           "写出你自己的频率 w_i（例如换一个最长周期，或者线性间隔），返回 [cos | sin]。",
                           "Write your own frequencies w_i (e.g. another longest period, or linear spacing) and return [cos | sin].",
                           stub=True)
    except Exception as exc:  # the learner's code may raise anything
        return None, Check(*_RETURNS, False, describe_exception(exc), describe_exception(exc),
                           "先单独运行 fn(torch.arange(1000), 64)。", "Run fn(torch.arange(1000), 64) on its own first.")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(_ALL_T), dim) or not out.is_floating_point():
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return None, Check(*_RETURNS, False, f"fn(torch.arange(1000), {dim}) 给出 {got}。", f"fn(torch.arange(1000), {dim}) gave {got}.",
                           f"返回浮点张量，形状 (B, dim) = (1000, {dim})。", f"Return a floating-point tensor of shape (B, dim) = (1000, {dim}).")
    out = out.detach().double().cpu()
    if not torch.isfinite(out).all() or (out.norm(dim=1) == 0).any():
        return None, Check(*_RETURNS, False, "有 NaN、inf 或全零的行。", "some rows are NaN, inf or all zeros.",
                           "每个时间步都要有一个非零、有限的向量。", "Every timestep needs a finite, non-zero vector.")
    return out, None


def _is_standard(emb: torch.Tensor, dim: int) -> bool:
    for flip in (True, False):
        for shift in (0.0, 1.0):
            if torch.allclose(emb, sinusoidal_embedding(_ALL_T, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).double(),
                              atol=1e-4):
                return True
    return False


@exercise(4, "4.3", "练习 4.3：先预测，再测量", "Exercise 4.3: predict, then measure")
def check_gap_prediction(fn, predicted, measured, gap: int = GAP, dim: int = VARIANT_DIM) -> Feedback:
    """Check a prediction and a measurement of the mean similarity ``gap`` steps apart for the learner's embedding.

    ``fn(timesteps, dim) -> (B, dim)``: the learner's own variant (not one of the four standard
    ones, :func:`unetlab.embeddings.sinusoidal_embedding` with ``flip_sin_to_cos`` in {True, False}
    and ``downscale_freq_shift`` in {0, 1}). ``predicted``: the value worked out from the
    frequencies alone; ``measured``: ``mean_t cos(fn(t), fn(t + gap))`` over ``t = 0 … 999 − gap``.
    Both must be within 0.01 of the recomputation (:func:`gap_similarity`). A function that raises
    ``NotImplementedError`` with ``predicted`` and ``measured`` still ``None`` is "not attempted yet".
    """
    title = ("练习 4.3：先预测，再测量", "Exercise 4.3: predict, then measure")
    emb, problem = _learner_embedding(fn, dim)
    if problem is not None and problem.stub and predicted is None and measured is None:
        return run_checks(*title, [lambda: problem])
    if problem is not None:
        problem.stub = False
        return run_checks(*title, [lambda: problem])
    truth = gap_similarity(emb, gap)
    state = {}

    def own_variant():
        what = ("是你自己的变体", "it is your own variant")
        if _is_standard(emb, dim):
            return Check(*what, False, "这是四种标准写法之一（SD 或学习笔记 003，flip 和 shift 的组合）。",
                         "this is one of the four standard variants (SD's or study note 003's, a flip/shift combination).",
                         "换掉频率：例如最长周期用 1000 而不是 10000，或让 w_i 线性间隔。这样答案就不在本章里。",
                         "Change the frequencies: e.g. a longest period of 1000 instead of 10000, or linearly spaced w_i. "
                         "Then the answer is nowhere in this chapter.")
        return Check(*what, True)

    def is_number(value, name):
        v = as_number(value)
        ok = v is not None and -1.0 - 1e-6 <= v <= 1.0 + 1e-6
        state[name] = v
        return ok, v

    def measured_check():
        what = (f"测量值：间隔 {gap} 的平均余弦相似度", f"measured: mean cosine similarity {gap} steps apart")
        ok, v = is_number(measured, "measured")
        if v is None:
            return Check(*what, False, f"收到 {measured!r}。", f"got {measured!r}.", "填一个数（float）。", "Fill in one number (a float).")
        if abs(v - truth) <= 0.01:
            return Check(*what, True, f"重新计算得 {truth:.4f}。", f"recomputed: {truth:.4f}.")
        hint = ("对 t = 0 … 999 − gap，把 fn(t) 和 fn(t + gap) 都归一化成单位长度，逐对点积，再取平均。",
                "For t = 0 … 999 − gap, normalise fn(t) and fn(t + gap) to unit length, take each pair's dot product, and average.")
        raw = float((emb[:-gap] * emb[gap:]).sum(dim=1).mean())
        if abs(v - raw) <= 0.01 * max(1.0, abs(raw)):
            hint = ("这是没有归一化的点积：先把每个向量除以它的长度。", "That is the raw dot product: divide each vector by its length first.")
        else:
            for g in (1, 2, 10, 50, 100):
                if g != gap and abs(v - gap_similarity(emb, g)) <= 1e-3:
                    hint = (f"这是间隔 {g} 的值，题目要的间隔是 {gap}。", f"That is the value at gap {g}; the exercise asks for gap {gap}.")
                    break
        return Check(*what, False, f"你的值 {v:.4f}，重新计算得 {truth:.4f}。", f"yours {v:.4f}, recomputed {truth:.4f}.", *hint)

    def predicted_check():
        what = ("预测值与测量一致（±0.01）", "the prediction agrees with the measurement (±0.01)")
        ok, v = is_number(predicted, "predicted")
        if v is None:
            return Check(*what, False, f"收到 {predicted!r}。", f"got {predicted!r}.",
                         "在嵌入任何时间步之前，只用你的频率算出预测：mean_i cos(w_i · gap)。",
                         "Before embedding any timestep, work the prediction out from your frequencies alone: mean_i cos(w_i · gap).")
        if abs(v - truth) <= 0.01:
            return Check(*what, True, f"预测 {v:.4f}，测量 {truth:.4f}。", f"predicted {v:.4f}, measured {truth:.4f}.")
        hint = ("对 [cos | sin] 成对的嵌入，sim(t, t + gap) = mean_i cos(w_i · gap)，与 t 无关；如果你的变体不是每个频率一对等幅的 "
                "cos/sin，这个公式就不成立，想想为什么。",
                "For an embedding of equal-amplitude [cos | sin] pairs, sim(t, t + gap) = mean_i cos(w_i · gap), whatever t is; "
                "if your variant is not one cos/sin pair of equal amplitude per frequency, the formula does not hold: think about why.")
        sd_value = gap_similarity(sinusoidal_embedding(_ALL_T, dim, flip_sin_to_cos=True, downscale_freq_shift=0).double(), gap)
        sd320 = gap_similarity(sinusoidal_embedding(_ALL_T, 320, flip_sin_to_cos=True, downscale_freq_shift=0).double(), gap)
        if abs(v - sd_value) <= 1e-3 or abs(v - sd320) <= 1e-3:
            hint = ("这是 SD 频率的值，不是你的：用你自己的 w_i。", "That is the value for SD's frequencies, not yours: use your own w_i.")
        else:
            for g in (1, 2, 10):
                if g != gap and abs(v - gap_similarity(emb, g)) <= 1e-3:
                    hint = (f"这是间隔 {g} 的值，题目要的间隔是 {gap}。", f"That is the value at gap {g}; the exercise asks for gap {gap}.")
                    break
            else:
                # the fastest pair alone: cos(w_0 gap), w_0 read off the first cos column (its angle after one step)
                w0 = float(torch.arccos(torch.clamp(emb[1, 0] / emb[0, 0], -1, 1))) if abs(float(emb[0, 0])) > 1e-6 else None
                if w0 is not None and abs(v - math.cos(w0 * gap)) <= 1e-3:
                    hint = ("你只用了最快的那个频率：相似度是所有频率的 cos(w_i · gap) 的平均。",
                            "You used the fastest frequency only: the similarity is the mean of cos(w_i · gap) over all frequencies.")
        off = v - truth
        return Check(*what, False, f"预测 {v:.4f}，测量 {truth:.4f}（差 {off:+.4f}）。",
                     f"predicted {v:.4f}, measured {truth:.4f} (off by {off:+.4f}).", *hint)

    return run_gated(*title, gates=[own_variant], rest=[measured_check, predicted_check])


@exercise(4, "4.4", "练习 4.4：设计一个平滑的嵌入", "Exercise 4.4: design a smooth embedding")
def check_smooth_embedding(fn, dim: int = VARIANT_DIM) -> Feedback:
    """Check that the learner's embedding ``fn(timesteps, dim) -> (B, dim)`` meets :data:`SMOOTH_SPEC` on t = 0 … 999.

    Near: the mean similarity ``GAP`` steps apart (:func:`gap_similarity`) is at least
    ``SMOOTH_SPEC["near"]``; far: every pair at least ``SMOOTH_SPEC["far_gap"]`` steps apart has
    cosine similarity at most ``SMOOTH_SPEC["far"]``. SD's 320-dim embedding fails the first (about
    0.74). A function that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    """
    title = ("练习 4.4：设计一个平滑的嵌入", "Exercise 4.4: design a smooth embedding")
    emb, problem = _learner_embedding(fn, dim)
    if problem is not None:
        return run_checks(*title, [lambda: problem])
    near, far_gap, far = SMOOTH_SPEC["near"], SMOOTH_SPEC["far_gap"], SMOOTH_SPEC["far"]
    unit = torch.nn.functional.normalize(emb, dim=1)
    # (1000, 1000) similarities; pairs at least far_gap apart
    sim = unit @ unit.T
    gaps = (_ALL_T[:, None] - _ALL_T[None, :]).abs()
    far_sim = sim.masked_fill(gaps < far_gap, -2.0)
    worst = int(far_sim.argmax())
    t1, t2 = divmod(worst, len(_ALL_T))
    worst_value = float(far_sim.max())

    def near_check():
        value = gap_similarity(emb, GAP)
        what = (f"相隔 {GAP} 步的平均相似度 ≥ {near}", f"mean similarity {GAP} steps apart ≥ {near}")
        if value >= near:
            return Check(*what, True, f"{value:.4f}", f"{value:.4f}")
        return Check(*what, False, f"只有 {value:.4f}。", f"only {value:.4f}.",
                     f"最快的维度转得太快：频率 w 在 {GAP} 步里转过 w·{GAP} 弧度，cos(w·{GAP}) ≥ {near} 要求 w ≲ "
                     f"{math.acos(near) / GAP:.3f}（周期 ≳ {2 * math.pi * GAP / math.acos(near):.0f} 步）。去掉或放慢最快的那些频率。",
                     f"The fastest dimensions turn too fast: frequency w turns w·{GAP} radians in {GAP} steps, and "
                     f"cos(w·{GAP}) ≥ {near} needs w ≲ {math.acos(near) / GAP:.3f} (a period ≳ "
                     f"{2 * math.pi * GAP / math.acos(near):.0f} steps). Drop or slow down the fastest frequencies.")

    def far_check():
        what = (f"相隔 ≥ {far_gap} 步的每一对相似度 ≤ {far}", f"every pair ≥ {far_gap} steps apart has similarity ≤ {far}")
        if worst_value <= far:
            return Check(*what, True, f"最大 {worst_value:.4f}（t = {t1}, {t2}）。", f"largest {worst_value:.4f} (t = {t1}, {t2}).")
        hint = (f"频率都太慢了：周期远长于 1000 步的维度几乎不动，让相隔很远的 t 看起来也很像。加入周期在几十到几百步之间的频率。",
                "The frequencies are too slow: dimensions with periods far beyond 1000 steps barely move, so distant t look "
                "alike. Add frequencies with periods between a few dozen and a few hundred steps.")
        if abs(t1 - t2) < 900 and float(sim[0].min()) < far:
            hint = (f"t = {t1} 和 t = {t2} 又变得很像：某些频率正好在这个间隔上转满一圈（周期性重复）。让频率更分散（不要都是同一个周期的整数倍）。",
                    f"t = {t1} and t = {t2} look alike again: some frequencies complete whole turns over this gap (periodic "
                    "repetition). Spread the frequencies out (not all multiples of one period).")
        return Check(*what, False, f"t = {t1} 和 t = {t2} 的相似度是 {worst_value:.4f}。",
                     f"t = {t1} and t = {t2} have similarity {worst_value:.4f}.", *hint)

    return run_checks(*title, [near_check, far_check])
