"""Chapter 3 homework: study note 003's "skip-connection experiment", checked on the learner's own numbers.

The learner noises the first ``HOMEWORK_IMAGES`` held-out shapes images to each step in
``HOMEWORK_TIMESTEPS`` (noise: ``fixed_noise(x0.shape, HOMEWORK_NOISE_SEED)``), lets both shipped
models (``simple-skips`` and ``simple-noskips``) estimate the clean image, clamps the estimate to
[-1, 1] and reports the PSNR in dB (images in [-1, 1], so the peak-to-peak range is 2)::

    table = {"skips": {50: 27.1, 200: ..., ...}, "noskips": {50: ..., ...}}
    check_psnr_table(table)

The checker recomputes every number from the same images, noise and checkpoints and compares with a
tolerance of 0.05 dB. For the usual slips it says what went wrong: PSNR with range 1 on [-1, 1] images
(6.02 dB too low), MSE instead of PSNR, PSNR averaged per image, no clamping, the two rows swapped.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .answers import as_number, close_values
from .exercises import exercise
from .feedback import Check, run_checks
from .stubs import is_blank, stub_check

__all__ = ["check_psnr_table", "reference_psnr_table", "homework_images", "HOMEWORK_TIMESTEPS",
           "HOMEWORK_IMAGES", "HOMEWORK_NOISE_SEED"]

HOMEWORK_TIMESTEPS = (50, 200, 500, 800)
HOMEWORK_IMAGES = 32
HOMEWORK_NOISE_SEED = 0
TOLERANCE_DB = 0.05
ROWS = ("skips", "noskips")
_CHECKPOINTS = {"skips": "simple-skips", "noskips": "simple-noskips"}


def homework_images() -> torch.Tensor:
    """The exercise's clean images: the first ``HOMEWORK_IMAGES`` of the held-out split, (N, 3, 32, 32)."""
    from ..data import HELDOUT_SEED, make_shapes

    return make_shapes(HOMEWORK_IMAGES, seed=HELDOUT_SEED).images


def _load_models() -> dict:
    from ..checkpoints import load_checkpoint

    return {row: load_checkpoint(name).model for row, name in _CHECKPOINTS.items()}


@torch.no_grad()
def _variants(models: dict) -> dict[str, dict[str, dict[int, float]]]:
    """The correct table and the tables the usual mistakes produce: variant -> row -> t -> value."""
    from ..schedule import NoiseSchedule, fixed_noise

    schedule = NoiseSchedule()
    x0 = homework_images()
    noise = fixed_noise(x0.shape, HOMEWORK_NOISE_SEED)
    out = {k: {row: {} for row in ROWS} for k in ("reference", "range1", "unit_range2", "mse", "per_image", "unclamped")}
    for row in ROWS:
        model = models[row]
        for t in HOMEWORK_TIMESTEPS:
            x_t = schedule.add_noise(x0, noise, t)
            raw = schedule.predict_x0(x_t, model(x_t, t), t)
            est = raw.clamp(-1, 1)
            mse = float(F.mse_loss(est, x0))
            out["reference"][row][t] = 10 * math.log10(4 / mse)
            # range 1 used with [-1, 1] images: 10 log10(1 / mse)
            out["range1"][row][t] = 10 * math.log10(1 / mse)
            # images mapped to [0, 1] (mse / 4) but range 2 kept
            out["unit_range2"][row][t] = 10 * math.log10(4 / (mse / 4))
            out["mse"][row][t] = mse
            per_image = (est - x0).pow(2).flatten(1).mean(1)
            out["per_image"][row][t] = float((10 * torch.log10(4 / per_image)).mean())
            out["unclamped"][row][t] = 10 * math.log10(4 / float(F.mse_loss(raw, x0)))
    return out


def reference_psnr_table(models: dict | None = None) -> dict[str, dict[int, float]]:
    """The table the exercise asks for, computed here (the solutions notebook compares against it)."""
    return _variants(models or _load_models())["reference"]


def _diagnose(given: dict, variants: dict, row: str) -> tuple[str, str]:
    """A hint (zh, en) naming the slip that explains the learner's row, if one does."""
    other = "noskips" if row == "skips" else "skips"
    if close_values(given, variants["reference"][other], TOLERANCE_DB):
        return ("这一行是另一个模型的结果：'skips' 和 'noskips' 两行对调了。",
                "These are the other model's numbers: the 'skips' and 'noskips' rows are swapped.")
    if close_values(given, variants["range1"][row], TOLERANCE_DB):
        return ("每个值都比正确值低约 6.02 dB：图像在 [-1, 1]，峰峰值范围是 2，PSNR = 10·log10(2²/MSE)；"
                "或者先把两张图都映射到 [0, 1] 再用范围 1。",
                "Every value is about 6.02 dB too low: the images are in [-1, 1], so the range is 2 and "
                "PSNR = 10·log10(2²/MSE); or map both images to [0, 1] first and use range 1.")
    if close_values(given, variants["unit_range2"][row], TOLERANCE_DB):
        return ("每个值都比正确值高约 6.02 dB：把图像映射到 [0, 1] 后范围就是 1，不是 2。",
                "Every value is about 6.02 dB too high: after mapping the images to [0, 1] the range is 1, not 2.")
    if close_values(given, variants["mse"][row], 1e-4 + 1e-3 * max(variants["mse"][row].values())):
        return ("这些是 MSE，不是 PSNR：PSNR = 10·log10(范围² / MSE)，单位是 dB，数值越大越好。",
                "These are MSE values, not PSNR: PSNR = 10·log10(range² / MSE), in dB, higher is better.")
    if close_values(given, variants["per_image"][row], TOLERANCE_DB):
        return ("你对每张图分别算 PSNR 再取平均；本题要求先对整批图像求 MSE 平均，再算一次 PSNR。",
                "You averaged a PSNR per image; this exercise takes the MSE over the whole batch first, then one PSNR.")
    if close_values(given, variants["unclamped"][row], TOLERANCE_DB):
        return ("算 PSNR 前先把预测的干净图像裁剪到 [-1, 1]（.clamp(-1, 1)）：超出范围的值肯定是错的。",
                "Clamp the predicted clean image to [-1, 1] (.clamp(-1, 1)) before the PSNR: values outside are surely wrong.")
    return ("按题目的步骤重做：held-out 的前 32 张图，fixed_noise(x0.shape, 0) 作为噪声，"
            "x_t = add_noise(x0, noise, t)，x0_hat = predict_x0(x_t, model(x_t, t), t).clamp(-1, 1)，PSNR 用范围 2。",
            "Redo the recipe step by step: the first 32 held-out images, fixed_noise(x0.shape, 0) as the noise, "
            "x_t = add_noise(x0, noise, t), x0_hat = predict_x0(x_t, model(x_t, t), t).clamp(-1, 1), PSNR with range 2.")


def _is_stub(table) -> bool:
    """The notebook's stub: both rows, every timestep, every value still blank (``None``)."""
    return (isinstance(table, dict) and set(table) == set(ROWS)
            and all(isinstance(table[row], dict) and sorted(table[row]) == list(HOMEWORK_TIMESTEPS) for row in ROWS)
            and is_blank(table))


_TITLE = ("第 3 章作业：跳跃连接实验", "Chapter 3 homework: the skip-connection experiment")


@exercise(3, "3.1", *_TITLE)
def check_psnr_table(table, models: dict | None = None):
    """Check the learner's PSNR table ``{"skips": {t: dB}, "noskips": {t: dB}}``; returns ``Feedback``.

    ``models`` (``{"skips": model, "noskips": model}``) defaults to the shipped checkpoints.
    The notebook's stub (every value still ``None``) is "not attempted yet".
    """
    if _is_stub(table):
        return run_checks(*_TITLE, [lambda: stub_check(
            "表格里每个值都还是 None。", "every value of the table is still None.",
            "按上面的步骤算出每个 PSNR：每个值是一个 float（dB），例如 psnr(...).item()；不要留 None。",
            "Compute every PSNR as described above: each value is one float (dB), e.g. psnr(...).item(); "
            "do not leave None.")])
    state: dict = {}

    def structure() -> Check:
        what = ("表格格式：{'skips': {t: PSNR}, 'noskips': {t: PSNR}}", "table layout: {'skips': {t: PSNR}, 'noskips': {t: PSNR}}")
        ts = list(HOMEWORK_TIMESTEPS)
        if not isinstance(table, dict) or set(table) != set(ROWS):
            got = type(table).__name__ if not isinstance(table, dict) else sorted(map(str, table))
            return Check(*what, False, f"得到 {got}", f"got {got}",
                         "返回一个只有 'skips' 和 'noskips' 两个键的字典。", "Return a dict with exactly the keys 'skips' and 'noskips'.")
        for row in ROWS:
            inner = table[row]
            if not isinstance(inner, dict) or sorted(inner) != ts:
                got = sorted(inner) if isinstance(inner, dict) else type(inner).__name__
                return Check(*what, False, f"'{row}' 的键是 {got}", f"'{row}' has keys {got}",
                             f"每一行的键必须恰好是 {ts}（整数）。", f"Each row's keys must be exactly {ts} (ints).")
            bad = [t for t in ts if as_number(inner[t]) is None]
            if bad:
                return Check(*what, False, f"'{row}' 在 t={bad} 处不是有限的数字", f"'{row}' is not a finite number at t={bad}",
                             "每个值是一个 float（dB），例如 psnr(...).item()；不要留 None。",
                             "Each value is one float (dB), e.g. psnr(...).item(); do not leave None.")
        state["ok"] = True
        return Check(*what, True)

    def row_check(row: str):
        def check() -> Check:
            what = (f"'{row}' 行的 PSNR 与重新计算的一致（±{TOLERANCE_DB} dB）",
                    f"'{row}' PSNR values match a recomputation (±{TOLERANCE_DB} dB)")
            if not state.get("ok"):
                return Check(*what, False, "先修好表格格式。", "Fix the table layout first.")
            if "variants" not in state:
                state["variants"] = _variants(models or _load_models())
            variants = state["variants"]
            given = {t: as_number(table[row][t]) for t in HOMEWORK_TIMESTEPS}
            ref = variants["reference"][row]
            if close_values(given, ref, TOLERANCE_DB):
                shown = ", ".join(f"t={t}: {ref[t]:.2f}" for t in HOMEWORK_TIMESTEPS)
                return Check(*what, True, f"重新计算（dB）：{shown}", f"recomputed (dB): {shown}")
            worst = max(HOMEWORK_TIMESTEPS, key=lambda t: abs(given[t] - ref[t]))
            detail = (f"t={worst}: 你的值 {given[worst]:.4f}，重新计算得 {ref[worst]:.2f} dB",
                      f"t={worst}: yours {given[worst]:.4f}, recomputed {ref[worst]:.2f} dB")
            return Check(*what, False, *detail, *_diagnose(given, variants, row))
        check.__name__ = f"row_{row}"
        return check

    return run_checks(*_TITLE, [structure, row_check("skips"), row_check("noskips")])
