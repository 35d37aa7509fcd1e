"""Chapter 4 homework: timestep embeddings (study note 003's "visualise the embedding at different
timesteps and describe the pattern", made checkable).

* :func:`check_embedding` — the learner writes Stable Diffusion's sinusoidal embedding
  ``fn(timesteps, dim) -> (B, dim)``; compared with the reference on several ``t`` and ``dim``,
  with hints for the usual slips (sin/cos order, ``half - 1`` instead of ``half``, dtype, shape).
* :func:`check_similarity_matrix` — the learner's cosine-similarity matrix between the
  embeddings of given timesteps; hints for a raw dot product, a dims x dims matrix, distances,
  the wrong formula variant.
* :func:`check_pattern_answers` — True/False answers to the statements in
  :data:`PATTERN_STATEMENTS`; the truth of each statement is computed live from the embedding,
  not stored.

The reference is :func:`unetlab.embeddings.sinusoidal_embedding` with SD's settings
(``flip_sin_to_cos=True``, ``downscale_freq_shift=0``). Every checker returns a
:class:`~unetlab.homework.feedback.Feedback` and never raises because of the answer.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..embeddings import sinusoidal_embedding
from .answers import as_bool, function_check
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks, run_gated
from .stubs import is_blank

__all__ = ["check_embedding", "check_similarity_matrix", "check_pattern_answers", "PATTERN_STATEMENTS"]

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


# statement key -> (中文, English); whether each holds is computed by _pattern_truths, not stored
PATTERN_STATEMENTS: dict[str, tuple[str, str]] = {
    "same_norm": (
        "每个时间步的嵌入向量长度都相同。",
        "Every timestep's embedding vector has the same length.",
    ),
    "depends_on_gap": (
        "两个时间步的相似度只取决于它们的差 |t1 − t2|，与 t1 本身无关。",
        "The similarity of two timesteps depends only on their gap |t1 − t2|, not on t1 itself.",
    ),
    "neighbours_close": (
        "相邻时间步（t 和 t+1）的余弦相似度高于 0.9。",
        "Neighbouring timesteps (t and t+1) have cosine similarity above 0.9.",
    ),
    "monotonic": (
        "相似度随 |t1 − t2| 增大而单调下降。",
        "Similarity decreases monotonically as |t1 − t2| grows.",
    ),
    "ends_orthogonal": (
        "t=0 和 t=999 的嵌入几乎正交（|余弦相似度| < 0.05）。",
        "The embeddings of t=0 and t=999 are almost orthogonal (|cosine similarity| < 0.05).",
    ),
    "low_index_fast": (
        "在 cos 半和 sin 半里，靠前的维度随 t 变化得比靠后的维度快。",
        "Within the cos half and the sin half, low-index dimensions change faster with t than high-index ones.",
    ),
    "same_as_seed003": (
        "SD 的嵌入与学习笔记 003 的嵌入对每个 t 都相同。",
        "SD's embedding and study note 003's embedding are the same for every t.",
    ),
}


def _pattern_truths(dim: int = 320, num_timesteps: int = 1000) -> dict[str, tuple[bool, str, str]]:
    """Whether each statement holds for SD's embedding on t = 0 … num_timesteps−1, with the evidence."""
    t = torch.arange(num_timesteps)
    emb = _sd(t, dim)
    half = dim // 2
    sim = _cosine_similarity(emb)
    out = {}

    norms = emb.norm(dim=1)
    spread = float(norms.max() - norms.min())
    out["same_norm"] = (
        spread < 1e-3,
        f"长度在 {norms.min():.4f} 到 {norms.max():.4f} 之间（√{half} = {half ** 0.5:.4f}）。",
        f"lengths range from {norms.min():.4f} to {norms.max():.4f} (√{half} = {half ** 0.5:.4f}).",
    )

    # along every diagonal (fixed gap) the similarity is the same: Toeplitz matrix
    gaps = range(1, num_timesteps, 37)
    worst = max(float(sim.diagonal(g).max() - sim.diagonal(g).min()) for g in gaps)
    # printed as a bound, not the float32 round-off itself, so the text is the same on every CPU
    if worst < 1e-4:
        evidence = ("同一条对角线（相同的差）上，相似度的差别小于 1e-4。",
                    "along each diagonal (same gap) the similarity varies by less than 1e-4.")
    else:
        evidence = (f"同一条对角线上，相似度最多相差 {worst:.3f}。", f"along one diagonal the similarity varies by {worst:.3f}.")
    out["depends_on_gap"] = (worst < 1e-3, *evidence)

    neighbours = sim.diagonal(1)
    out["neighbours_close"] = (
        bool((neighbours > 0.9).all()),
        f"sim(t, t+1) 的最小值是 {neighbours.min():.4f}。",
        f"the smallest sim(t, t+1) is {neighbours.min():.4f}.",
    )

    profile = sim[0]
    rises = (profile[1:] > profile[:-1] + 1e-5).nonzero().flatten()
    low = int(profile.argmin())
    if low < num_timesteps - 1 and float(profile[-1] - profile[low]) > 1e-3:
        evidence = (
            f"sim(0, {low}) = {profile[low]:.4f} 是最低点，而 sim(0, {num_timesteps - 1}) = {profile[-1]:.4f}：相似度又回升了。",
            f"sim(0, {low}) = {profile[low]:.4f} is the lowest, yet sim(0, {num_timesteps - 1}) = {profile[-1]:.4f}: it rises again.",
        )
    elif len(rises):
        g = int(rises[0]) + 1
        evidence = (
            f"sim(0, {g - 1}) = {profile[g - 1]:.4f}，但 sim(0, {g}) = {profile[g]:.4f}：相似度回升了。",
            f"sim(0, {g - 1}) = {profile[g - 1]:.4f} but sim(0, {g}) = {profile[g]:.4f}: it rises again.",
        )
    else:
        evidence = ("相似度从不回升。", "the similarity never rises.")
    out["monotonic"] = (len(rises) == 0, *evidence)

    end = float(sim[0, -1])
    out["ends_orthogonal"] = (
        abs(end) < 0.05,
        f"sim(0, {num_timesteps - 1}) = {end:.4f}：周期远长于 {num_timesteps} 步的维度几乎不动，所以相似度到不了 0。",
        f"sim(0, {num_timesteps - 1}) = {end:.4f}: dimensions with periods far longer than {num_timesteps} steps barely move, so it never reaches 0.",
    )

    # mean |e(t+1) - e(t)| per column; compare the first and last quarter of each half
    speed = (emb[1:] - emb[:-1]).abs().mean(dim=0)
    q = max(half // 4, 1)
    fast = float(torch.cat([speed[:q], speed[half:half + q]]).mean())
    slow = float(torch.cat([speed[half - q:half], speed[dim - q:dim]]).mean())
    out["low_index_fast"] = (
        fast > slow,
        f"每步平均变化：每半靠前 1/4 的维度 {fast:.3f}，靠后 1/4 的维度 {slow:.1e}。",
        f"mean change per step: first quarter of each half {fast:.3f}, last quarter {slow:.1e}.",
    )

    seed = sinusoidal_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)
    diff = float((seed - emb).abs().max())
    out["same_as_seed003"] = (
        diff < 1e-4,
        f"两者最大相差 {diff:.4f}。",
        f"they differ by up to {diff:.4f}.",
    )
    return out


@exercise(4, "4.3", "练习 4.3：描述嵌入随时间步变化的规律", "Exercise 4.3: describe how the embedding changes with t")
def check_pattern_answers(answers) -> Feedback:
    """Check True/False answers ``{key: bool}`` to :data:`PATTERN_STATEMENTS`.

    The truth of every statement is computed here from SD's 320-dim embedding on t = 0 … 999;
    each answer gets the evidence, right or wrong. A blank dict (the notebook's stub: every answer
    ``None``) is "not attempted yet": each statement says "not answered yet", no verdict given away.
    """
    title = ("练习 4.3：描述嵌入随时间步变化的规律", "Exercise 4.3: describe how the embedding changes with t")
    if not isinstance(answers, dict):
        return run_checks(*title, [lambda: Check(
            "答案是一个字典", "the answer is a dict", False,
            detail_zh=f"收到的是 {type(answers).__name__}。", detail_en=f"got a {type(answers).__name__}.",
            hint_zh="写成 {'same_norm': True, 'monotonic': False, ...}，每个陈述一个键。",
            hint_en="Write {'same_norm': True, 'monotonic': False, ...}, one key per statement.",
        )])
    truths = _pattern_truths()
    steps = []
    unknown = sorted(set(map(str, answers)) - set(PATTERN_STATEMENTS))
    stub = not unknown and is_blank(answers)
    if unknown:
        steps.append(lambda: Check(
            "只回答列出的陈述", "only the listed statements are answered", False,
            detail_zh=f"未知的键：{unknown}", detail_en=f"unknown keys: {unknown}",
            hint_zh=f"可用的键：{list(PATTERN_STATEMENTS)}", hint_en=f"valid keys: {list(PATTERN_STATEMENTS)}",
        ))
    for key, (zh, en) in PATTERN_STATEMENTS.items():
        def step(key=key, zh=zh, en=en):
            holds, ev_zh, ev_en = truths[key]
            answer = as_bool(answers.get(key))
            what = (f"[{key}] {zh}", f"[{key}] {en}")
            if answer is None:
                return Check(
                    *what, False, detail_zh="还没有回答（None）。", detail_en="not answered yet (None).",
                    hint_zh="填 True 或 False，可以先用上面的图和数字验证。",
                    hint_en="Fill in True or False; check it against the figures and numbers above first.",
                    stub=stub,
                )
            if not isinstance(answer, bool):
                # "True", 1 or a tensor are not accepted as answers: say what was given, not "unanswered"
                return Check(
                    *what, False,
                    detail_zh=f"答案应是 True 或 False，收到的是 {type(answer).__name__} {answer!r}。",
                    detail_en=f"the answer must be True or False, got {type(answer).__name__} {answer!r}.",
                    hint_zh="直接写 True 或 False，不要加引号，也不要写 1/0。",
                    hint_en="Write True or False itself: no quotes, not 1/0.",
                )
            verdict = ("成立", "holds") if holds else ("不成立", "does not hold")
            return Check(
                *what, answer == holds,
                detail_zh=f"这个陈述{verdict[0]}：{ev_zh}", detail_en=f"this statement {verdict[1]}: {ev_en}",
                hint_zh="自己算一下证据里的数字再回答。", hint_en="Compute the number in the evidence yourself, then answer.",
            )

        step.__name__ = key
        steps.append(step)
    return run_checks(*title, steps)
