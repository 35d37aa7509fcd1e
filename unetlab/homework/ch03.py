"""Chapter 3 homework: skip-connection experiments the learner designs, checked by recomputation.

* :func:`check_skip_ablation` — study note 003's "skip-connection experiment", as an ablation
  the learner designs. The chapter replaced one skip at a time by zeros, by the other images'
  mean and by another image's skip; the learner invents a *different* replacement (blur it, add
  noise, keep some channels, shuffle its pixels …), applies it to one skip at a time of the
  trained ``simple-skips`` model through ``SimpleUNet.forward(..., skip_replace={name: fn})``,
  reports the PSNR change against the intact model at ``ABLATION_TIMESTEPS`` and says which skip
  costs more at each t. The checker calls the learner's replacement itself and recomputes every
  number (0.05 dB); hints name a flipped sign, swapped rows, absolute PSNR instead of the change,
  a verdict that contradicts the numbers, a random replacement (not reproducible), and a
  replacement that is one of the chapter's three.
* :func:`check_crossover` — where a model stops beating the model-free baseline: the chapter
  shows the mean training image beating both models at t ≥ 900 and losing at t = 700; the
  learner finds, for each model, a timestep t in 500 … 999 at which the model still wins at
  t − 1 and loses at t. Checked by recomputing the two PSNRs at t − 1 and t.

Both use the first ``HOMEWORK_IMAGES`` held-out images and ``fixed_noise(x0.shape,
HOMEWORK_NOISE_SEED)``; estimates are clamped to [-1, 1]; PSNR uses range 2
(:func:`unetlab.schedule.psnr`). ``models=`` names the models the learner used (the chapter
retrains them on CUDA machines); without it the shipped checkpoints are loaded.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .answers import as_number, function_check
from .exercises import exercise
from .feedback import Check, describe_learner_exception, run_checks, run_gated
from .stubs import is_blank, stub_check

__all__ = ["check_skip_ablation", "check_crossover", "ablation_table", "crossover_psnr", "homework_images",
           "mean_training_image", "ABLATION_TIMESTEPS", "HOMEWORK_IMAGES", "HOMEWORK_NOISE_SEED", "SKIPS", "CROSSOVER_RANGE"]

ABLATION_TIMESTEPS = (10, 200, 700)
HOMEWORK_IMAGES = 32
HOMEWORK_NOISE_SEED = 0
TOLERANCE_DB = 0.05
#: the skips of SimpleUNet, by the up block that receives them
SKIPS = ("up1", "up2")
#: the timesteps where exercise 3.2's crossing is looked for
CROSSOVER_RANGE = (500, 999)
ROWS = ("skips", "noskips")
_CHECKPOINTS = {"skips": "simple-skips", "noskips": "simple-noskips"}


def homework_images() -> torch.Tensor:
    """The exercises' clean images: the first ``HOMEWORK_IMAGES`` of the held-out split, (N, 3, 32, 32) in [-1, 1]."""
    from ..data import HELDOUT_SEED, make_shapes

    return make_shapes(HOMEWORK_IMAGES, seed=HELDOUT_SEED).images


def mean_training_image() -> torch.Tensor:
    """The baseline of exercise 3.2 (and of the chapter): the mean of 1024 training images, (1, 3, 32, 32)."""
    from ..data import TRAIN_SEED, make_shapes

    return make_shapes(1024, seed=TRAIN_SEED).images.mean(dim=0, keepdim=True)


def _load_models(rows=ROWS) -> dict:
    from ..checkpoints import load_checkpoint

    return {row: load_checkpoint(_CHECKPOINTS[row]).model for row in rows}


@torch.no_grad()
def _psnr_at(model_fn, t: int) -> float:
    from ..schedule import denoise, fixed_noise, psnr

    x0 = homework_images()
    _, estimate = denoise(model_fn, x0, t, fixed_noise(x0.shape, HOMEWORK_NOISE_SEED))
    return float(psnr(estimate, x0))


def ablation_table(replace_fn, model) -> dict[str, dict[int, float]]:
    """``{skip: {t: PSNR with that skip replaced − PSNR intact}}`` (dB) for ``model`` (a SimpleUNet with skips)."""
    table = {}
    intact = {t: _psnr_at(model, t) for t in ABLATION_TIMESTEPS}
    for name in SKIPS:
        ablated = lambda x_t, t, name=name: model(x_t, t, skip_replace={name: replace_fn})
        table[name] = {t: _psnr_at(ablated, t) - intact[t] for t in ABLATION_TIMESTEPS}
    table["_intact"] = intact
    return table


def _chapter_replacement(replace_fn) -> str | None:
    """The name of the chapter's replacement that ``replace_fn`` equals on a test tensor, if any."""
    skip = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    try:
        out = replace_fn(skip.clone())
    except Exception:  # judged elsewhere
        return None
    if not isinstance(out, torch.Tensor) or out.shape != skip.shape:
        return None
    out = out.detach().float()
    candidates = {
        "zeros": torch.zeros_like(skip),
        "the other images' mean": (skip.sum(0, keepdim=True) - skip) / (skip.shape[0] - 1),
        "the mean of all images": skip.mean(0, keepdim=True).expand_as(skip),
        "another image's skip": skip.roll(1, dims=0),
        "another image's skip ": skip.roll(-1, dims=0),
        "the skip unchanged": skip,
    }
    for name, value in candidates.items():
        if torch.allclose(out, value, atol=1e-5):
            return name.strip()
    return None


_ABLATION_TITLE = ("练习 3.1：你自己设计的跳跃连接消融", "Exercise 3.1: a skip ablation you design")


def _blank_table(table) -> bool:
    return table is None or is_blank(table)


@exercise(3, "3.1", *_ABLATION_TITLE)
def check_skip_ablation(replace_fn, table, verdict, models: dict | None = None):
    """Check the learner's own skip ablation; returns ``Feedback``.

    ``replace_fn(skip) -> tensor``: the learner's replacement, ``skip`` of shape (B, C, H, W),
    the result of the same shape; deterministic (a random one must draw from its own seeded
    ``torch.Generator``). ``table``: ``{"up1": {t: dB}, "up2": {t: dB}}`` for ``t`` in
    ``ABLATION_TIMESTEPS``: PSNR of the ``skips`` model with that one skip replaced, minus the
    intact model's PSNR (negative = the replacement hurts). ``verdict``: ``{t: "up1" | "up2"}``,
    the skip whose replacement costs more at each t. ``models``: a dict with key ``"skips"``
    (default: the shipped ``simple-skips``). A replacement that raises ``NotImplementedError``
    with the table still blank is "not attempted yet".
    """
    state: dict = {}

    def runs() -> Check:
        what = ("你的替换函数可以运行，形状不变", "your replacement runs and keeps the shape")
        if not callable(replace_fn):
            return function_check(replace_fn, "check_skip_ablation(my_replacement, table, verdict)", what)
        skip = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(1))
        try:
            out = replace_fn(skip.clone())
        except NotImplementedError:
            if _blank_table(table) and _blank_table(verdict):
                return stub_check("替换函数还是 raise NotImplementedError，表格还是空的。",
                                  "the replacement still raises NotImplementedError and the table is blank.",
                                  "设计一种本章没有用过的替换（模糊、加噪声、只保留部分通道、打乱像素……），先预测哪条连接更重要，再测量。",
                                  "Design a replacement the chapter did not use (blur, added noise, some channels kept, pixels "
                                  "shuffled ...), predict which skip matters more, then measure.")
            return Check(*what, False, "函数抛出了 NotImplementedError。", "the function raised NotImplementedError.",
                         "把 raise NotImplementedError 换成你的替换。", "Replace raise NotImplementedError with your replacement.")
        except Exception as exc:
            detail = describe_learner_exception(exc)
            return Check(*what, False, detail, detail, "输入是 (B, C, H, W) 的跳跃张量；先单独调用你的函数试试。",
                         "The input is a (B, C, H, W) skip tensor; call your function on one first.")
        if not isinstance(out, torch.Tensor) or out.shape != skip.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return Check(*what, False, f"输入 {tuple(skip.shape)}，输出 {got}。", f"input {tuple(skip.shape)}, output {got}.",
                         "返回与输入同形状的张量。", "Return a tensor of the input's shape.")
        again = replace_fn(skip.clone())
        if not torch.equal(out, again):
            return Check(*what, False, "同一个输入调用两次，结果不同：你的替换是随机的，检查器没法重算。",
                         "called twice on the same input it gives different results: your replacement is random and cannot "
                         "be recomputed.",
                         "在函数里用自己的生成器：g = torch.Generator().manual_seed(0)，torch.randn(..., generator=g)。",
                         "Use a generator of your own inside the function: g = torch.Generator().manual_seed(0), "
                         "torch.randn(..., generator=g).")
        same = _chapter_replacement(replace_fn)
        if same:
            return Check(*what, False, f"你的替换等于本章用过的“{same}”。", f"your replacement equals the chapter's '{same}'.",
                         "本章已经量过置零、换成平均值、换成另一张图的；设计一种新的，问一个本章没问过的问题"
                         "（例如：模糊掉细节后，up2 还重要吗？）。",
                         "The chapter already measured zeros, the mean and another image's skip; design a new one that asks "
                         "a question the chapter did not (e.g. with its fine detail blurred away, does up2 still matter?).")
        return Check(*what, True)

    def layout() -> Check:
        what = ("表格格式：{'up1': {t: dB}, 'up2': {t: dB}}，verdict：{t: 'up1' 或 'up2'}",
                "layout: table {'up1': {t: dB}, 'up2': {t: dB}}, verdict {t: 'up1' or 'up2'}")
        ts = list(ABLATION_TIMESTEPS)
        if not isinstance(table, Mapping) or set(map(str, table)) != set(SKIPS):
            got = sorted(map(str, table)) if isinstance(table, Mapping) else type(table).__name__
            return Check(*what, False, f"table 是 {got}。", f"table is {got}.",
                         "table 只有 'up1' 和 'up2' 两个键。", "table has exactly the keys 'up1' and 'up2'.")
        for name in SKIPS:
            row = table[name]
            if not isinstance(row, Mapping) or sorted(row) != ts:
                got = sorted(row) if isinstance(row, Mapping) else type(row).__name__
                return Check(*what, False, f"'{name}' 的键是 {got}。", f"'{name}' has keys {got}.",
                             f"每一行的键恰好是 {ts}（整数）。", f"Each row's keys are exactly {ts} (ints).")
            bad = [t for t in ts if as_number(row[t]) is None]
            if bad:
                return Check(*what, False, f"'{name}' 在 t={bad} 处不是数字。", f"'{name}' is not a number at t={bad}.",
                             "每个值是一个 float（dB）。", "Each value is one float (dB).")
        if not isinstance(verdict, Mapping) or sorted(verdict) != ts or any(verdict[t] not in SKIPS for t in ts):
            return Check(*what, False, f"verdict 是 {verdict!r}。", f"verdict is {verdict!r}.",
                         f"verdict 写成 {{t: 'up1' 或 'up2'}}，t 取 {ts}。", f"Write verdict as {{t: 'up1' or 'up2'}} for t in {ts}.")
        state["ok"] = True
        return Check(*what, True)

    def recompute():
        if "truth" not in state:
            model = (models or _load_models(("skips",)))["skips"]
            state["truth"] = ablation_table(replace_fn, model)
        return state["truth"]

    def row_check(name: str):
        def check() -> Check:
            what = (f"'{name}' 行与重新计算一致（±{TOLERANCE_DB} dB）", f"row '{name}' matches a recomputation (±{TOLERANCE_DB} dB)")
            if not state.get("ok"):
                return Check(*what, False, "先修好格式。", "Fix the layout first.")
            truth = recompute()
            given = {t: as_number(table[name][t]) for t in ABLATION_TIMESTEPS}
            close = lambda ref: all(abs(given[t] - ref[t]) <= TOLERANCE_DB for t in ABLATION_TIMESTEPS)
            if close(truth[name]):
                shown = ", ".join(f"t={t}: {truth[name][t]:+.2f}" for t in ABLATION_TIMESTEPS)
                return Check(*what, True, f"重新计算（dB）：{shown}", f"recomputed (dB): {shown}")
            other = SKIPS[1 - SKIPS.index(name)]
            hint = ("对每个 t：PSNR(skip_replace={name: 你的函数}) − PSNR(完好的模型)，同样的 32 张图、同样的噪声（fixed_noise(x0.shape, 0)），"
                    "估计裁剪到 [-1, 1]。", "For each t: PSNR(skip_replace={name: your function}) − PSNR(intact model), on the same "
                    "32 images and noise (fixed_noise(x0.shape, 0)), estimates clamped to [-1, 1].")
            if close({t: -v for t, v in truth[name].items()}):
                hint = ("符号反了：要的是“替换后 − 完好”，损害是负数。", "The sign is flipped: the change is 'replaced − intact', damage is negative.")
            elif close(truth[other]):
                hint = ("这是另一条跳跃连接的结果：'up1' 和 'up2' 两行对调了。", "These are the other skip's numbers: the rows 'up1' and 'up2' are swapped.")
            elif close({t: truth[name][t] + truth["_intact"][t] for t in ABLATION_TIMESTEPS}):
                hint = ("这是替换后的 PSNR 本身，不是变化：再减去完好模型的 PSNR。",
                        "That is the PSNR after the replacement itself, not the change: subtract the intact model's PSNR.")
            worst = max(ABLATION_TIMESTEPS, key=lambda t: abs(given[t] - truth[name][t]))
            return Check(*what, False, f"t={worst}：你的值 {given[worst]:+.3f}，重新计算得 {truth[name][worst]:+.3f} dB。",
                         f"t={worst}: yours {given[worst]:+.3f}, recomputed {truth[name][worst]:+.3f} dB.", *hint)
        check.__name__ = f"row_{name}"
        return check

    def verdict_check() -> Check:
        what = ("结论与重新计算的数字一致", "the verdict follows from the recomputed numbers")
        if not state.get("ok"):
            return Check(*what, False, "先修好格式。", "Fix the layout first.")
        truth = recompute()
        costlier = {t: min(SKIPS, key=lambda name: truth[name][t]) for t in ABLATION_TIMESTEPS}
        wrong = [t for t in ABLATION_TIMESTEPS if verdict[t] != costlier[t]]
        if not wrong:
            shown = ", ".join(f"t={t}: {costlier[t]}" for t in ABLATION_TIMESTEPS)
            return Check(*what, True, shown, shown)
        hint = ("更重要的那条连接，是替换后 PSNR 下降更多（变化更负）的那条。",
                "The skip that matters more is the one whose replacement lowers the PSNR more (the more negative change).")
        if len(wrong) == len(ABLATION_TIMESTEPS):
            hint = ("每个 t 都选了损失更小的那条：变化是负数，越负损害越大。",
                    "At every t you picked the one that costs less: the changes are negative, and more negative means more damage.")
        return Check(*what, False, f"t={wrong} 处不对。", f"wrong at t={wrong}.", *hint)

    return run_gated(*_ABLATION_TITLE, gates=[runs, layout], rest=[row_check("up1"), row_check("up2"), verdict_check])


def crossover_psnr(model, t: int) -> tuple[float, float]:
    """(PSNR of ``model``'s clamped estimate, PSNR of the mean training image) at ``t``, on the homework images."""
    from ..schedule import psnr

    x0 = homework_images()
    return _psnr_at(model, t), float(psnr(mean_training_image().expand_as(x0), x0))


_CROSS_TITLE = ("练习 3.2：模型从哪里开始输给平均图", "Exercise 3.2: where a model starts losing to the mean image")


@exercise(3, "3.2", *_CROSS_TITLE)
def check_crossover(answer, models: dict | None = None):
    """Check ``{"skips": t, "noskips": t}``: for each model a t in ``CROSSOVER_RANGE`` where it still
    beats the mean training image at ``t − 1`` (higher PSNR) and no longer does at ``t``.

    ``models``: ``{"skips": model, "noskips": model}`` (default: the shipped checkpoints). Recomputed
    with :func:`crossover_psnr`. Both values still ``None`` (the notebook's stub) is "not attempted yet".
    """
    if isinstance(answer, Mapping) and set(map(str, answer)) == set(ROWS) and is_blank(answer):
        return run_checks(*_CROSS_TITLE, [lambda: stub_check(
            "两个值都还是 None。", "both values are still None.",
            "不要逐个 t 全算一遍：模型在 t = 700 还赢、到 t = 900 就输了，用二分法缩小范围，每步只算一个 t。",
            "Do not compute every t: the model still wins at t = 700 and loses at t = 900, so bisect, one t per step.")])
    state: dict = {}
    lo, hi = CROSSOVER_RANGE

    def layout() -> Check:
        what = ("答案格式：{'skips': t, 'noskips': t}", "layout: {'skips': t, 'noskips': t}")
        if not isinstance(answer, Mapping) or set(map(str, answer)) != set(ROWS):
            got = sorted(map(str, answer)) if isinstance(answer, Mapping) else type(answer).__name__
            return Check(*what, False, f"收到 {got}。", f"got {got}.", "只有 'skips' 和 'noskips' 两个键。",
                         "Exactly the keys 'skips' and 'noskips'.")
        bad = [row for row in ROWS if as_number(answer[row]) is None or as_number(answer[row]) != int(as_number(answer[row]))
               or not lo < int(as_number(answer[row])) <= hi]
        if bad:
            return Check(*what, False, f"{bad} 不是 {lo + 1} 到 {hi} 之间的整数。", f"{bad}: not an integer between {lo + 1} and {hi}.",
                         "每个值是一个整数时间步。", "Each value is one integer timestep.")
        state["ok"] = True
        return Check(*what, True)

    def row_check(row: str):
        def check() -> Check:
            what = (f"'{row}'：t − 1 时模型还赢，t 时输了", f"'{row}': the model wins at t − 1 and loses at t")
            if not state.get("ok"):
                return Check(*what, False, "先修好格式。", "Fix the layout first.")
            model = (models or state.setdefault("models", _load_models()))[row]
            t = int(as_number(answer[row]))
            before, baseline = crossover_psnr(model, t - 1)
            at, _ = crossover_psnr(model, t)
            shown = (f"t − 1 = {t - 1}：模型 {before:.3f} dB，平均图 {baseline:.3f} dB；t = {t}：模型 {at:.3f} dB。",
                     f"t − 1 = {t - 1}: model {before:.3f} dB, mean image {baseline:.3f} dB; t = {t}: model {at:.3f} dB.")
            if before > baseline >= at:
                return Check(*what, True, *shown)
            if at > baseline:
                hint = ("在你的 t 模型还赢着平均图：交叉点在更大的 t。", "At your t the model still beats the mean image: the crossing is at a larger t.")
            elif before <= baseline:
                hint = ("在 t − 1 模型已经输了：交叉点在更小的 t。二分时保持“左端赢、右端输”。",
                        "At t − 1 the model already loses: the crossing is at a smaller t. Bisect keeping 'wins at the left end, "
                        "loses at the right end'.")
            else:
                hint = ("", "")
            return Check(*what, False, *shown, *hint)
        check.__name__ = f"row_{row}"
        return check

    return run_checks(*_CROSS_TITLE, [layout, row_check("skips"), row_check("noskips")])
