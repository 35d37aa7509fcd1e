"""Chapter 6 homework: the two lines of the denoising loop that do the work.

* :func:`check_guidance` — the learner writes classifier-free guidance
  ``fn(eps_uncond, eps_text, guidance_scale) -> eps`` (study note 002's
  ``noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)``), including a clear
  ``ValueError`` for a scale < 0. Hints for the usual slips: the halves swapped, guiding from the text
  prediction instead of the unconditional one, a missing bracket. The notebook's stub,
  ``return eps_text``, is "not attempted yet" (recognised by its output: ``eps_text`` whatever the scale).
* :func:`check_ddim_step` — the learner writes one deterministic DDIM step of the retrained, v-prediction
  model, ``fn(x_t, v, alpha_bar_t, alpha_bar_prev) -> x_prev``: they must solve for x0 and ε from ``x_t`` and
  ``v`` (not transcribe 6.3's ε lines), and the first case is t = 999, where ā = 0 on the zero-terminal-SNR
  schedule and any division by √ā fails. Compared with :func:`unetlab.samplers.ddim_step` (``eta = 0``).
  Hints: v taken for ε (6.3's lines); the sign of v flipped or the two ``alpha_bar`` swapped (one hint: with
  √ā = cos φ, the step turns (x_t, v) by the angle φ_t − φ_prev, and either slip turns it the other way, so
  they give the same output) — except at t = 999, where ā = 0 makes x0 = −v and ε = x_t whatever the signs
  (a v flipped in x0 alone gives the same step there), so the hint asks what x̂0 and ε̂ are at ā = 0; the
  noise direction missing; nan/inf from dividing by √ā_999; a tuple ``(x_prev, x0)`` like ``sampler.step``'s
  (return x_prev alone); x_t given back exactly by an attempt (ā_t in the second line, or ``return x_t``
  after computing x_prev). Any other wrong step gets a self-test, not the solution: put x̂0 and ε̂ back into
  the two equations. The notebook's stub, ``return x_t``, is "not attempted yet": x_t back in every case
  and, read with ``inspect.getsource`` and ``ast``, a body that is only ``return x_t`` (docstring and
  comments aside; a lambda ``lambda x, v, a, p: x`` too). Where Python has no source (a function made by
  ``exec``, a callable object) the output alone decides, and the stub's hint also names the ā_t case.
* :func:`check_negative_prompt` — the learner writes ``fn(unet, x_t, t, context, negative_context, s)``:
  classifier-free guidance whose unconditional half is the negative caption's context (diffusers'
  ``negative_prompt``), one UNet call on the doubled batch; compared with
  :func:`unetlab.guidance.guided_eps` on a small deterministic stand-in UNet. Hints: the halves swapped
  (moving towards the negative caption), guiding from the text half, the negative added as a third term.
  The stub ``raise NotImplementedError`` is "not attempted yet".
* :func:`check_ddim_sigma` — the learner works out DDIM's noise level ``fn(alpha_bar_t, alpha_bar_prev, eta)``
  such that ``eta = 1`` adds exactly DDPM's posterior noise for the same pair of timesteps (Song et al. 2021,
  eq. 16); checked against :func:`unetlab.samplers.ddim_step`'s σ and against
  DDPM's ``fixed_small`` variance of adjacent timesteps (diffusers' ``DDPMScheduler``). Hints: the variance returned instead of
  its square root, η² instead of η, the ratio of the two ā upside down, β_t alone without
  (1−ā_prev)/(1−ā_t). The stub ``return torch.zeros(())`` (σ = 0 whatever η) is "not attempted yet".

Every checker returns a :class:`~unetlab.homework.feedback.Feedback` and never raises because of the answer.
"""
from __future__ import annotations

import ast
from typing import Callable

import torch
import torch.nn as nn

from ..guidance import guided_eps
from ..samplers import ddim_step
from ..schedule import NoiseSchedule
from .answers import function_check, tensors_close
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks
from .stubs import answer_node, body_statements, call_answer, returns_unchanged, stub_check

__all__ = ["check_guidance", "check_ddim_step", "check_negative_prompt", "check_ddim_sigma",
           "reference_guidance", "reference_ddim_step", "reference_negative_prompt", "reference_ddim_sigma",
           "StandInUNet"]

_ATOL = 1e-5


def reference_guidance(eps_uncond: torch.Tensor, eps_text: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The answer: ``eps_uncond + s · (eps_text − eps_uncond)``; ``s < 0`` raises ``ValueError``."""
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    return eps_uncond + guidance_scale * (eps_text - eps_uncond)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)


_GUIDANCE_TYPE_HINT = ("用张量运算（+、−、*）组合两个预测，直接 return 结果。",
                       "Combine the two predictions with tensor arithmetic (+, −, *) and return the result.")
_GUIDANCE_SHAPE_HINT = ("不要在这里 cat 或 chunk：输入已经是拆开的两半。",
                        "No cat or chunk here: the inputs are already the two halves.")


def _is_tensor_like(out, like: torch.Tensor, type_hint: tuple[str, str] = _GUIDANCE_TYPE_HINT,
                    shape_hint: tuple[str, str] = _GUIDANCE_SHAPE_HINT) -> Check | None:
    """A failed Check when ``out`` is not a tensor of ``like``'s shape, else None.

    ``type_hint`` / ``shape_hint`` (zh, en): what to do when it is not a tensor / has another shape; the
    defaults are the guidance exercises' (two noise predictions combined).
    """
    if not isinstance(out, torch.Tensor):
        return Check("返回张量", "returns a tensor", False,
                     detail_zh=f"返回的是 {type(out).__name__}。", detail_en=f"got a {type(out).__name__}.",
                     hint_zh=type_hint[0], hint_en=type_hint[1])
    if out.shape != like.shape:
        return Check("形状与输入相同", "same shape as the inputs", False,
                     detail_zh=f"得到 {tuple(out.shape)}，应为 {tuple(like.shape)}。",
                     detail_en=f"got {tuple(out.shape)}, expected {tuple(like.shape)}.",
                     hint_zh=shape_hint[0], hint_en=shape_hint[1])
    return None


# --- classifier-free guidance -------------------------------------------------------------------------------

_GUIDANCE_MISTAKES = {
    "swapped": (
        lambda u, c, s: c + s * (u - c),
        "两半弄反了：应从无条件预测出发，朝文本方向走：eps_uncond + s·(eps_text − eps_uncond)。",
        "The halves are swapped: start from the unconditional prediction and move towards the text one: "
        "eps_uncond + s·(eps_text − eps_uncond).",
    ),
    "from_text": (
        lambda u, c, s: c + s * (c - u),
        "起点应是 eps_uncond，不是 eps_text；这样 s=1 时才恰好等于文本条件预测。",
        "The starting point is eps_uncond, not eps_text; only then does s = 1 give exactly the text prediction.",
    ),
    "no_brackets": (
        # u + s·c − u is s·c: the text prediction scaled, whichever way it was written
        lambda u, c, s: u + s * c - u,
        "少了括号：s 要乘的是差 (eps_text − eps_uncond)；现在的结果只是 s·eps_text，把文本预测放大了 s 倍。",
        "Missing brackets: s multiplies the difference (eps_text − eps_uncond); as it is, the result is s·eps_text, "
        "the text prediction scaled.",
    ),
}


def _guidance_value_check(fn: Callable, scale: float) -> Check:
    u, c = _inputs(int(scale * 10))
    out = fn(u.clone(), c.clone(), scale)
    bad = _is_tensor_like(out, u)
    if bad is not None:
        return bad
    ref = reference_guidance(u, c, scale)
    what_zh, what_en = f"guidance_scale = {scale:g} 时结果正确", f"right result for guidance_scale = {scale:g}"
    if tensors_close(out, ref, atol=_ATOL):
        return Check(what_zh, what_en, True)
    for name, (wrong, hint_zh, hint_en) in _GUIDANCE_MISTAKES.items():
        if tensors_close(out, wrong(u, c, scale), atol=_ATOL):
            return Check(what_zh, what_en, False, hint_zh=hint_zh, hint_en=hint_en)
    err = float((out - ref).abs().max())
    return Check(what_zh, what_en, False, detail_zh=f"最大误差 {err:.3g}。", detail_en=f"largest error {err:.3g}.",
                 hint_zh="公式：eps_uncond + s·(eps_text − eps_uncond)。s=0 应得到 eps_uncond，s=1 应得到 eps_text。",
                 hint_en="Formula: eps_uncond + s·(eps_text − eps_uncond). s = 0 must give eps_uncond, s = 1 eps_text.")


def _not_written(name: str, outcome) -> tuple[str, str]:
    """The detail (zh, en) for a function that raises NotImplementedError or returns nothing."""
    if outcome.not_implemented:
        return f"{name} 抛出 NotImplementedError：还没有写。", f"{name} raises NotImplementedError: not written yet."
    got = repr(outcome.value)
    return (f"{name} 返回了 {got}：还没有写，或者少了 return。",
            f"{name} returned {got}: not written yet, or the return is missing.")


def _guidance_stub(fn: Callable) -> Check | None:
    """A stub check when ``fn`` is the notebook's stub: it returns ``eps_text`` at s = 0 and at s = 3
    (or nothing, or raises ``NotImplementedError``); else None."""
    outcomes = []
    for scale in (0.0, 3.0):
        u, c = _inputs(int(scale * 10))
        outcome = call_answer(fn, u.clone(), c.clone(), scale)
        if outcome.not_implemented or outcome.blank:
            return stub_check(*_not_written("my_guidance", outcome),
                              "写出无分类器引导的公式，并 return 引导后的噪声预测。",
                              "Write the classifier-free guidance formula and return the guided noise prediction.")
        outcomes.append(returns_unchanged(outcome.value, c))
    if all(outcomes):
        return stub_check(
            "无论 guidance_scale 是多少，my_guidance 都原样返回 eps_text：这还是练习给的样子。",
            "my_guidance returns eps_text unchanged whatever guidance_scale is: that is still the exercise's stub.",
            "用 guidance_scale 把两半组合起来：s = 0 应得到 eps_uncond，s = 1 得到 eps_text，s > 1 沿 (eps_text − eps_uncond) "
            "的方向走得更远。",
            "Combine the two halves with guidance_scale: s = 0 must give eps_uncond, s = 1 eps_text, and s > 1 goes "
            "further along (eps_text − eps_uncond).")
    return None


@exercise(6, "6.1", "无分类器引导", "Classifier-free guidance")
def check_guidance(fn: Callable) -> Feedback:
    """Check ``fn(eps_uncond, eps_text, guidance_scale) -> eps`` against classifier-free guidance.

    The notebook's stub ``return eps_text`` (``eps_text`` whatever the scale) is "not attempted yet".
    """
    if callable(fn):
        stub = _guidance_stub(fn)
        if stub is not None:
            return run_checks("无分类器引导", "Classifier-free guidance", [lambda: stub])

    steps = [lambda: function_check(fn, "check_guidance(my_guidance)", ("提交的是函数", "the answer is a function"))]
    if callable(fn):
        for scale in (0.0, 1.0, 3.0, 7.5):
            step = lambda s=scale: _guidance_value_check(fn, s)  # noqa: E731
            step.__name__ = f"guidance_scale={scale:g}"
            steps.append(step)

        def negative_scale() -> Check:
            u, c = _inputs(1)
            what_zh, what_en = "guidance_scale < 0 时抛出 ValueError", "guidance_scale < 0 raises ValueError"
            try:
                fn(u, c, -1.0)
            except ValueError:
                return Check(what_zh, what_en, True)
            except Exception as exc:  # the learner's code may raise anything
                return Check(what_zh, what_en, False, detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                             hint_zh="抛出 ValueError（不是别的异常），并在消息里说明需要 >= 0。",
                             hint_en="Raise a ValueError (not another exception) whose message says >= 0 is expected.")
            return Check(what_zh, what_en, False,
                         detail_zh="s = −1 时函数正常返回了。", detail_en="with s = −1 the function returned normally.",
                         hint_zh="负的引导系数会把图像推离文本；在函数开头检查 if guidance_scale < 0: raise ValueError(...)。",
                         hint_en="A negative scale pushes the image away from the text; start with "
                                 "if guidance_scale < 0: raise ValueError(...).")

        steps.append(negative_scale)
    return run_checks("无分类器引导", "Classifier-free guidance", steps)


# --- one DDIM step of a v-prediction model ------------------------------------------------------------------

#: (t, prev_t) pairs of the retrained model's 25-step trailing DDIM chain: the first step (t = 999, where
#: ā = 0 on the zero-terminal-SNR schedule), a middle one and the last (prev_t < 0: ā_prev = ā_0)
_DDIM_CASES = ((999, 959), (479, 439), (39, -1))


def _ddim_schedule() -> NoiseSchedule:
    """The schedule of the chapter's retrained model: zero terminal SNR, v-prediction."""
    from ..text2img import TEXT2IMG_SCHEDULE

    return NoiseSchedule(**TEXT2IMG_SCHEDULE)


def reference_ddim_step(x_t: torch.Tensor, v: torch.Tensor, alpha_bar_t, alpha_bar_prev) -> torch.Tensor:
    """The answer: one deterministic DDIM step (``eta = 0``) of a v-prediction model, ``(B, C, H, W)``.

    From ``x_t = √ā_t x0 + √(1−ā_t) ε`` and ``v = √ā_t ε − √(1−ā_t) x0`` (Salimans & Ho 2022; diffusers'
    ``get_velocity``): ``x0 = √ā_t x_t − √(1−ā_t) v`` and ``ε = √(1−ā_t) x_t + √ā_t v`` — no division, so
    it holds at ā_t = 0 too; then ``x_prev = √ā_prev x0 + √(1−ā_prev) ε`` (Song et al. 2021, eq. 12).
    """
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=x_t.dtype)
    x0 = alpha_bar_t.sqrt() * x_t - (1 - alpha_bar_t).sqrt() * v
    eps = (1 - alpha_bar_t).sqrt() * x_t + alpha_bar_t.sqrt() * v
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


_DDIM_MISTAKES = {
    "v_as_eps": (
        # the epsilon step of 6.3 with v in place of eps: 0 / 0 at t = 999
        lambda x, v, a, p: p.sqrt() * (x - (1 - a).sqrt() * v) / a.sqrt() + (1 - p).sqrt() * v,
        "这是 6.3 里 ε 预测的两行，把 v 当成了 ε。v 不是噪声：v = √ā·ε − √(1−ā)·x0。和 x_t = √ā·x0 + √(1−ā)·ε "
        "联立，解出 x0 和 ε（两个都是 x_t 和 v 的线性组合），再走第二行。",
        "These are 6.3's two epsilon lines with v taken for ε. v is not the noise: v = √ā·ε − √(1−ā)·x0. Solve it "
        "together with x_t = √ā·x0 + √(1−ā)·ε for x0 and ε (both are linear in x_t and v), then take the second line.",
    ),
    "sign": (
        # the sign of v flipped; with ā_t and ā_prev swapped the step comes out the same (see the hint)
        lambda x, v, a, p: p.sqrt() * (a.sqrt() * x + (1 - a).sqrt() * v) + (1 - p).sqrt() * ((1 - a).sqrt() * x - a.sqrt() * v),
        "v 的符号反了，或者 ā_t 和 ā_prev 用反了（两种错误得到的一步完全相同）。v = √ā·ε − √(1−ā)·x0（diffusers 的 "
        "get_velocity），所以 x0 = √ā_t·x_t − √(1−ā_t)·v；先用 ā_t 求 x0 和 ε，再用 ā_prev 走到上一步。",
        "The sign of v is flipped, or ā_t and ā_prev are swapped (the two mistakes give exactly the same step). "
        "v = √ā·ε − √(1−ā)·x0 (diffusers' get_velocity), so x0 = √ā_t·x_t − √(1−ā_t)·v; get x0 and ε with ā_t, "
        "then step to prev with ā_prev.",
    ),
    "x0_only": (
        lambda x, v, a, p: p.sqrt() * (a.sqrt() * x - (1 - a).sqrt() * v),
        "只缩放了 x0 估计，忘了加回噪声方向 √(1−ā_prev)·ε（ε 也要从 x_t 和 v 求出）。",
        "Only the scaled x0 estimate: the noise direction √(1−ā_prev)·ε is missing (ε, too, comes from x_t and v).",
    ),
}


def _ddim_case_inputs(t: int, prev_t: int):
    """``(x_t, v, ā_t, ā_prev)`` of one case; past the last step ā_prev is ā_0 (``set_alpha_to_one=False``)."""
    schedule = _ddim_schedule()
    x_t, v = _inputs(t)
    a_prev = schedule.alphas_cumprod[prev_t] if prev_t >= 0 else schedule.alphas_cumprod[0]
    return x_t, v, schedule.alphas_cumprod[t], a_prev


#: at t = 999 (ā_t = 0) x0 = −v and ε = x_t whatever the learner's signs were: a v flipped in x0 alone, a v
#: flipped everywhere and the two ā swapped all give the same step there, so the hint asks about ā = 0 itself
_ZERO_SNR_HINT = ("t = 999 时 ā = 0：x̂0 应等于 −v，ε̂ 应等于 x_t。检查你的 x̂0 和 ε̂ 在 ā = 0 时各是什么。",
                  "At t = 999, ā = 0: x̂0 must be −v and ε̂ must be x_t. Check what your x̂0 and ε̂ are at ā = 0.")

#: any other wrong step: a self-test first (the two equations, not their solution)
_DDIM_SELF_TEST_HINT = (
    "把你的 x̂0、ε̂ 代回 x_t = √ā·x0 + √(1−ā)·ε 和 v = √ā·ε − √(1−ā)·x0，两个等式都成立吗？"
    "都成立的话，再看第二行：x_prev = √ā_prev·x̂0 + √(1−ā_prev)·ε̂。",
    "Put your x̂0 and ε̂ back into x_t = √ā·x0 + √(1−ā)·ε and v = √ā·ε − √(1−ā)·x0: do both hold? "
    "If they do, look at the second line: x_prev = √ā_prev·x̂0 + √(1−ā_prev)·ε̂.")

#: what to return, when the answer is not one tensor of x_t's shape
_DDIM_TYPE_HINT = ("return x_prev：一个和 x_t 形状相同的张量。", "Return x_prev: one tensor of x_t's shape.")
_DDIM_SHAPE_HINT = ("x_prev 和 x_t 形状相同：每个元素各走一步，不要求和、取平均或切片。",
                    "x_prev has x_t's shape: every element takes its own step; no sum, mean or slicing.")


def _ddim_is_tensor_like(out, x_t: torch.Tensor, ref: torch.Tensor) -> Check | None:
    """:func:`_is_tensor_like` for a DDIM step: a tuple or list (``sampler.step`` returns ``(x_prev, x0)``)
    gets its own check."""
    if isinstance(out, (tuple, list)):
        first_right = (len(out) > 0 and isinstance(out[0], torch.Tensor) and not out[0].is_complex()
                       and out[0].shape == ref.shape
                       and bool(torch.allclose(out[0].detach().float(), ref, atol=1e-4)))
        detail_zh = f"返回的是含 {len(out)} 个元素的 {type(out).__name__}。"
        detail_en = f"got a {type(out).__name__} of {len(out)}."
        if first_right:
            detail_zh += "第一个元素就是正确的 x_prev。"
            detail_en += " Its first element is the right x_prev."
        return Check("只返回 x_prev", "returns x_prev alone", False, detail_zh=detail_zh, detail_en=detail_en,
                     hint_zh="只返回 x_prev（一个张量），不要像 sampler.step 那样返回 (x_prev, x0) 元组。",
                     hint_en="Return x_prev alone (one tensor), not a (x_prev, x0) tuple like sampler.step.")
    if isinstance(out, torch.Tensor) and out.is_complex():
        return Check("返回实数张量", "returns a real tensor", False, detail_zh=f"得到 {out.dtype}。",
                     detail_en=f"got {out.dtype}.", hint_zh=_DDIM_TYPE_HINT[0], hint_en=_DDIM_TYPE_HINT[1])
    return _is_tensor_like(out, x_t, type_hint=_DDIM_TYPE_HINT, shape_hint=_DDIM_SHAPE_HINT)


def _ddim_case(fn: Callable, t: int, prev_t: int, unchanged: tuple[str, str, str, str]) -> Check:
    """One case; ``unchanged`` (detail zh, en, hint zh, en) is said when the step gives ``x_t`` back exactly."""
    x_t, v, a_t, a_prev = _ddim_case_inputs(t, prev_t)
    ref, _ = ddim_step(_ddim_schedule(), v, t, x_t, prev_t, eta=0.0)
    what_zh, what_en = f"t = {t} → {prev_t} 的一步正确", f"right step t = {t} → {prev_t}"
    if t == 999:
        what_zh, what_en = what_zh + "（第一步：ā_999 = 0）", what_en + " (the first step: ā_999 = 0)"
    if prev_t < 0:
        what_zh, what_en = what_zh + "（最后一步：ā_prev = ā_0）", what_en + " (the last step: ā_prev = ā_0)"
    out = fn(x_t.clone(), v.clone(), a_t.clone(), a_prev.clone())
    bad = _ddim_is_tensor_like(out, x_t, ref)
    if bad is not None:
        return bad
    out = out.detach().float()
    if torch.allclose(out, ref, atol=1e-4):
        return Check(what_zh, what_en, True, detail_zh="与 unetlab.samplers.ddim_step 一致。",
                     detail_en="matches unetlab.samplers.ddim_step.")
    if returns_unchanged(out, x_t):
        return Check(what_zh, what_en, False, *unchanged)
    with torch.no_grad():
        for name, (wrong, hint_zh, hint_en) in _DDIM_MISTAKES.items():
            expected = wrong(x_t, v, a_t, a_prev)
            if torch.isfinite(expected).all() and torch.allclose(out, expected, atol=1e-4):
                if name == "sign" and t == 999:
                    # at ā_t = 0 a v flipped in x0 alone gives this step too: the sign hint would mislead
                    hint_zh, hint_en = _ZERO_SNR_HINT
                return Check(what_zh, what_en, False, hint_zh=hint_zh, hint_en=hint_en)
    if not torch.isfinite(out).all():
        return Check(what_zh, what_en, False, detail_zh="结果里有 nan 或 inf。", detail_en="the result has nan or inf.",
                     hint_zh="t = 999 时 ā_t = 0：除以 √ā_t 就是除以 0。x0 和 ε 都可以写成 x_t 和 v 的线性组合，不用除法。",
                     hint_en="At t = 999, ā_t = 0: dividing by √ā_t divides by 0. Both x0 and ε are linear combinations "
                             "of x_t and v; no division is needed.")
    err = float((out - ref).abs().max())
    return Check(what_zh, what_en, False, detail_zh=f"最大误差 {err:.3g}。", detail_en=f"largest error {err:.3g}.",
                 hint_zh=_DDIM_SELF_TEST_HINT[0], hint_en=_DDIM_SELF_TEST_HINT[1])


_DDIM_STUB_DETAIL = ("my_ddim_step 原样返回 x_t：这还是练习给的样子。",
                     "my_ddim_step returns x_t unchanged: that is still the exercise's stub.")
_DDIM_STUB_HINT = ("把 x_t = √ā·x0 + √(1−ā)·ε 和 v = √ā·ε − √(1−ā)·x0（ā 是 ā_t）当成 x0、ε 的两个方程解出来，"
                   "再用 ā_prev 走 6.3 的第二行。",
                   "Solve x_t = √ā·x0 + √(1−ā)·ε and v = √ā·ε − √(1−ā)·x0 (ā is ā_t) as two equations for x0 and ε, "
                   "then take 6.3's second line with ā_prev.")
#: added where the source is not available: an attempt with ā_t in both lines does what the stub does
_DDIM_STUB_HINT_NO_SOURCE = ("如果你已经写了：结果恰好是 x_t，说明第二行也用了 ā_t。",
                             "If you did: x_t back exactly means your second line uses ā_t too.")

#: an attempt whose step gives x_t back exactly
_DDIM_UNCHANGED_TWICE = ("结果恰好等于 x_t：第二行用了 ā_t。", "The result equals x_t exactly: your second line uses ā_t.",
                         "第二行要用 ā_prev，才会走到上一个时间步。",
                         "It must use ā_prev to move to the previous timestep.")
_DDIM_UNCHANGED_ITSELF = ("结果恰好等于 x_t：函数最后 return 的是 x_t 本身。",
                          "The result equals x_t exactly: the function's last line returns x_t itself.",
                          "return 你算出的 x_prev，不是 x_t。", "Return the x_prev you computed, not x_t.")


def _only_returns_first_parameter(node) -> bool:
    """True when the function's body is only ``return <first parameter>`` (or an expression of it alone,
    ``x_t.clone()``): nothing computed from v or the two ā."""
    body = body_statements(node)
    params = [a.arg for a in node.args.args]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None or not params:
        return False
    used = {n.id for n in ast.walk(body[0].value) if isinstance(n, ast.Name)}
    return params[0] in used and not (used & set(params[1:]))


def _unchanged_diagnosis(node) -> tuple[str, str, str, str]:
    """What to say to an attempt whose step gives x_t back: it returns x_t itself (never reassigned), or its
    second line uses ā_t (the usual way to get x_t back exactly)."""
    body = body_statements(node)
    params = [a.arg for a in node.args.args]
    if params and body and isinstance(body[-1], ast.Return) and isinstance(body[-1].value, ast.Name) \
            and body[-1].value.id == params[0]:
        stored = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
        if params[0] not in stored:
            return _DDIM_UNCHANGED_ITSELF
    return _DDIM_UNCHANGED_TWICE


def _ddim_stub(fn: Callable, node) -> Check | None:
    """A stub check when ``fn`` is the notebook's stub ``return x_t``, returns nothing or raises
    ``NotImplementedError``; else None.

    The stub is told apart from a real attempt that gives ``x_t`` back (ā_t in both lines) by its source
    (``node``, from :func:`answer_node`): ``x_t`` back in every case *and* a body that is only ``return x_t``.
    Where Python has no source (``node`` is None: ``exec``), the output alone decides, and the hint names the
    ā_t case.
    """
    unchanged = []
    for t, p in _DDIM_CASES:
        x_t, v, a_t, a_prev = _ddim_case_inputs(t, p)
        outcome = call_answer(fn, x_t.clone(), v.clone(), a_t.clone(), a_prev.clone())
        if outcome.not_implemented or outcome.blank:
            return stub_check(*_not_written("my_ddim_step", outcome),
                              "先由 x_t 和 v 求出 x0 和 ε，再用 ā_prev 把 x0 加噪到上一步，并 return 它。",
                              "Get x0 and ε from x_t and v, then noise x0 to the previous step with ā_prev; return it.")
        unchanged.append(returns_unchanged(outcome.value, x_t))
    if not all(unchanged):
        return None
    if node is None:
        return stub_check(*_DDIM_STUB_DETAIL, _DDIM_STUB_HINT[0] + _DDIM_STUB_HINT_NO_SOURCE[0],
                          _DDIM_STUB_HINT[1] + " " + _DDIM_STUB_HINT_NO_SOURCE[1])
    if _only_returns_first_parameter(node):
        return stub_check(*_DDIM_STUB_DETAIL, *_DDIM_STUB_HINT)
    return None


@exercise(6, "6.2", "一步 DDIM（v 预测）", "One DDIM step (v-prediction)")
def check_ddim_step(fn: Callable) -> Feedback:
    """Check ``fn(x_t, v, alpha_bar_t, alpha_bar_prev) -> x_prev``: one deterministic DDIM step of a v-prediction
    model, against :func:`unetlab.samplers.ddim_step` on the retrained model's schedule (zero terminal SNR), at
    t = 999 (ā = 0), 479 and 39 (the last step).

    The notebook's stub ``return x_t`` is "not attempted yet"; a function that computes something and still
    gives ``x_t`` back (ā_t in both lines) is an attempt, told apart by its source (see :func:`_ddim_stub`).
    """
    # the learner's source, read once (None without source): tells the stub from an attempt, and names the slip
    node = answer_node(fn) if callable(fn) else None
    if callable(fn):
        stub = _ddim_stub(fn, node)
        if stub is not None:
            return run_checks("一步 DDIM（v 预测）", "One DDIM step (v-prediction)", [lambda: stub])

    steps = [lambda: function_check(fn, "check_ddim_step(my_ddim_step)", ("提交的是函数", "the answer is a function"))]
    if callable(fn):
        unchanged = _DDIM_UNCHANGED_TWICE if node is None else _unchanged_diagnosis(node)
        for t, p in _DDIM_CASES:
            step = lambda t=t, p=p: _ddim_case(fn, t, p, unchanged)  # noqa: E731
            step.__name__ = f"t={t}"
            steps.append(step)
    return run_checks("一步 DDIM（v 预测）", "One DDIM step (v-prediction)", steps)


# --- a negative prompt ----------------------------------------------------------------------------------------


class StandInUNet(nn.Module):
    """A small deterministic stand-in for the UNet: ``(sample (B, C, H, W), timestep (B,), context (B, L, D))``.

    out = tanh(conv(sample)) + (mean over L of context) @ W, broadcast over H, W, + t / 1000. Its output
    depends on every input, so a wrong context, a wrong half or a wrong timestep shows; it counts its calls.
    """

    def __init__(self, channels: int = 3, context_dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Linear(context_dim, channels, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(sample.shape[0])
        if context.shape[0] != sample.shape[0] or t.shape[0] != sample.shape[0]:
            raise ValueError(f"batch sizes differ: sample {tuple(sample.shape)}, timestep {tuple(t.shape)}, "
                             f"context {tuple(context.shape)}")
        # (B, C, 1, 1) from the context, mean over its L positions
        text = self.proj(context.mean(dim=1))[:, :, None, None]
        return torch.tanh(self.conv(sample)) + text + t[:, None, None, None] / 1000


def reference_negative_prompt(unet, x_t, t, context, negative_context, guidance_scale):
    """The answer: guidance with the negative caption's context as the unconditional half (one UNet call)."""
    return guided_eps(unet, x_t, t, context, negative_context, guidance_scale)


def _negative_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    context = torch.randn(2, 5, 8, generator=g)
    negative = torch.randn(2, 5, 8, generator=g)
    t = torch.tensor([700, 300])
    return x_t, t, context, negative


def _negative_mistakes(unet, x_t, t, c, n, s):
    """(name -> (output, hint_zh, hint_en)) of the usual slips, computed with the same stand-in UNet."""
    e_c, e_n = unet(x_t, t, c), unet(x_t, t, n)
    calls = unet.calls
    e_u = unet(x_t, t, torch.zeros_like(n))
    unet.calls = calls
    return {
        "swapped": (e_c + s * (e_n - e_c),
                    "两半用反了：现在是从文本预测出发、朝负面描述走。负面描述的 context 要放在无条件那一半：eps_neg + s·(eps_text − eps_neg)。",
                    "The halves are swapped: this starts from the text prediction and moves towards the negative caption. "
                    "The negative caption's context takes the unconditional half: eps_neg + s·(eps_text − eps_neg)."),
        "from_text": (e_c + s * (e_c - e_n),
                      "起点应是负面描述的预测 eps_neg，不是 eps_text；这样 s = 1 时才恰好是文本条件预测。",
                      "The starting point is eps_neg, not eps_text; only then does s = 1 give exactly the text prediction."),
        "third_term": (e_u + s * (e_c - e_u) - s * (e_n - e_u),
                       "负面描述不是第三项：diffusers 的 negative_prompt 直接替换空描述那一半（批次仍然只翻倍一次），"
                       "不再需要空描述的预测。",
                       "The negative caption is not a third term: diffusers' negative_prompt replaces the empty caption's half "
                       "(the batch is still only doubled), no empty-caption prediction is needed."),
    }


def _negative_case(fn: Callable, scale: float, seed: int) -> Check:
    x_t, t, c, n = _negative_inputs(seed)
    unet = StandInUNet()
    what_zh, what_en = f"s = {scale:g} 时结果正确", f"right result for s = {scale:g}"
    out = fn(unet, x_t.clone(), t.clone(), c.clone(), n.clone(), scale)
    bad = _is_tensor_like(out, x_t)
    if bad is not None:
        return bad
    ref = reference_negative_prompt(StandInUNet(), x_t, t, c, n, scale)
    if tensors_close(out, ref, atol=1e-4):
        return Check(what_zh, what_en, True)
    for _, (wrong, hint_zh, hint_en) in _negative_mistakes(StandInUNet(), x_t, t, c, n, scale).items():
        if tensors_close(out, wrong, atol=1e-4):
            return Check(what_zh, what_en, False, hint_zh=hint_zh, hint_en=hint_en)
    err = float((out - ref).abs().max())
    return Check(what_zh, what_en, False, detail_zh=f"最大误差 {err:.3g}。", detail_en=f"largest error {err:.3g}.",
                 hint_zh="把 [negative_context; context] 拼成一个批次，UNet 跑一次，拆成 (eps_neg, eps_text)，"
                         "再算 eps_neg + s·(eps_text − eps_neg)。时间步也要翻倍。",
                 hint_en="Stack [negative_context; context] into one batch, run the UNet once, split into (eps_neg, eps_text), "
                         "then eps_neg + s·(eps_text − eps_neg). The timesteps are doubled too.")


def _one_call_check(fn: Callable) -> Check:
    x_t, t, c, n = _negative_inputs(2)
    unet = StandInUNet()
    fn(unet, x_t, t, c, n, 3.0)
    what_zh, what_en = "UNet 只跑一次（翻倍的批次）", "the UNet runs once (on the doubled batch)"
    if unet.calls == 1:
        return Check(what_zh, what_en, True)
    return Check(what_zh, what_en, False, detail_zh=f"UNet 被调用了 {unet.calls} 次。",
                 detail_en=f"the UNet was called {unet.calls} times.",
                 hint_zh="结果对了，但 pipeline 的做法是 torch.cat 两个 context 和两份 x_t，一次前向传播算出两半：更快。",
                 hint_en="The result is right, but the pipeline concatenates the two contexts and two copies of x_t "
                         "and gets both halves from one forward pass: faster.")


def _negative_stub(fn: Callable) -> Check | None:
    x_t, t, c, n = _negative_inputs(0)
    outcome = call_answer(fn, StandInUNet(), x_t, t, c, n, 3.0)
    if outcome.not_implemented or outcome.blank:
        return stub_check(*_not_written("my_negative_guidance", outcome),
                          "把负面描述的 context 放进无条件那一半，UNet 跑一次，再按引导系数组合。",
                          "Put the negative caption's context into the unconditional half, run the UNet once, "
                          "then combine the halves with the guidance scale.")
    return None


@exercise(6, "6.3", "负面描述", "A negative prompt")
def check_negative_prompt(fn: Callable) -> Feedback:
    """Check ``fn(unet, x_t, t, context, negative_context, guidance_scale) -> eps`` (B, C, H, W).

    ``x_t`` (B, C, H, W), ``t`` (B,) long, both contexts (B, L, D). Right answer:
    :func:`unetlab.guidance.guided_eps` with ``uncond_context=negative_context``. The stub (raises
    ``NotImplementedError``) is "not attempted yet".
    """
    if callable(fn):
        stub = _negative_stub(fn)
        if stub is not None:
            return run_checks("负面描述", "A negative prompt", [lambda: stub])
    steps = [lambda: function_check(fn, "check_negative_prompt(my_negative_guidance)",
                                    ("提交的是函数", "the answer is a function"))]
    if callable(fn):
        for seed, scale in enumerate((1.0, 3.0, 7.5)):
            step = lambda s=scale, k=seed: _negative_case(fn, s, k)  # noqa: E731
            step.__name__ = f"s={scale:g}"
            steps.append(step)
        steps.append(lambda: _one_call_check(fn))
    return run_checks("负面描述", "A negative prompt", steps)


# --- DDIM's noise level -------------------------------------------------------------------------------------------

#: (t, prev_t, eta): steps of a 25-step and a 1000-step chain on SD's schedule
_SIGMA_CASES = ((961, 921, 1.0), (481, 441, 0.5), (41, 1, 1.0), (500, 499, 1.0), (700, 660, 0.0))


def reference_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta) -> torch.Tensor:
    """The answer: σ = η · √((1−ā_prev)/(1−ā_t)) · √(1 − ā_t/ā_prev) (0-d tensor)."""
    a_t, a_prev = torch.as_tensor(alpha_bar_t), torch.as_tensor(alpha_bar_prev)
    # β_t of the jump prev -> t: 1 − ā_t/ā_prev; DDPM's posterior variance: (1−ā_prev)/(1−ā_t) · β_t
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()


_SIGMA_MISTAKES = {
    "variance": (lambda a, p, e: e * (1 - p) / (1 - a) * (1 - a / p),
                 "这是方差，不是标准差：σ 要开平方根。",
                 "That is the variance, not the standard deviation: σ needs the square root."),
    "eta_squared": (lambda a, p, e: e**2 * ((1 - p) / (1 - a) * (1 - a / p)).sqrt(),
                    "η 乘在 σ 上，不是 η²：σ = η·√(…)。",
                    "η multiplies σ, not η²: σ = η·√(…)."),
    "ratio_upside_down": (lambda a, p, e: e * ((1 - p) / (1 - a) * (1 - p / a)).abs().sqrt(),
                          "ā_t/ā_prev 倒过来了：往回走一步时 ā_prev > ā_t，所以 β = 1 − ā_t/ā_prev 在 0 和 1 之间。",
                          "ā_t/ā_prev is upside down: going back, ā_prev > ā_t, so β = 1 − ā_t/ā_prev lies between 0 and 1."),
    "beta_only": (lambda a, p, e: e * (1 - a / p).sqrt(),
                  "只有 √β_t：DDPM 后验的方差还要乘 (1−ā_prev)/(1−ā_t)，它是 q(x_prev | x_t, x0) 的方差，不是前向一步的。",
                  "Only √β_t: DDPM's posterior variance also carries (1−ā_prev)/(1−ā_t); it is the variance of "
                  "q(x_prev | x_t, x0), not of one forward step."),
}


def _sigma_inputs(t: int, prev_t: int):
    a = NoiseSchedule().alphas_cumprod
    return a[t].clone(), a[prev_t].clone()


def _sigma_case(fn: Callable, t: int, prev_t: int, eta: float) -> Check:
    a_t, a_prev = _sigma_inputs(t, prev_t)
    what_zh, what_en = f"t = {t} → {prev_t}，η = {eta:g}", f"t = {t} → {prev_t}, η = {eta:g}"
    out = fn(a_t.clone(), a_prev.clone(), eta)
    try:
        value = float(torch.as_tensor(out))
    except Exception:  # the learner may return anything
        return Check(what_zh, what_en, False, detail_zh=f"返回的是 {type(out).__name__}。", detail_en=f"got a {type(out).__name__}.",
                     hint_zh="返回一个数（0 维张量或 float）。", hint_en="Return one number (a 0-d tensor or a float).")
    ref = float(reference_ddim_sigma(a_t, a_prev, eta))
    if abs(value - ref) <= 1e-5 + 1e-4 * abs(ref):
        return Check(what_zh, what_en, True, detail_zh=f"σ = {ref:.4f}。", detail_en=f"σ = {ref:.4f}.")
    for _, (wrong, hint_zh, hint_en) in _SIGMA_MISTAKES.items():
        w = float(wrong(a_t, a_prev, eta))
        if abs(w - ref) > 1e-6 and abs(value - w) <= 1e-5 + 1e-4 * abs(w):
            return Check(what_zh, what_en, False, hint_zh=hint_zh, hint_en=hint_en)
    return Check(what_zh, what_en, False, detail_zh=f"得到 {value:.4g}，应为 {ref:.4g}。", detail_en=f"got {value:.4g}, expected {ref:.4g}.",
                 hint_zh="η = 1 时 σ² 必须等于 DDPM 在同一对时间步上的后验方差 (1−ā_prev)/(1−ā_t)·(1 − ā_t/ā_prev)；η = 0 时 σ = 0。",
                 hint_en="At η = 1, σ² must equal DDPM's posterior variance for the same pair of timesteps, "
                         "(1−ā_prev)/(1−ā_t)·(1 − ā_t/ā_prev); at η = 0, σ = 0.")


def _sigma_matches_ddpm(fn: Callable) -> Check:
    """At 1000 steps, η = 1: σ² equals DDPMSampler's variance (diffusers' 'fixed_small') at a few t."""
    what_zh, what_en = "η = 1、1000 步时 σ² 等于 DDPM 的方差", "η = 1 at 1000 steps: σ² equals DDPM's variance"
    schedule = NoiseSchedule()
    a = schedule.alphas_cumprod
    for t in (999, 500, 10):
        # DDPM, fixed_small: β̃_t = (1 − ā_{t−1}) / (1 − ā_t) · β_t
        ddpm_var = float((1 - a[t - 1]) / (1 - a[t]) * schedule.betas[t])
        value = float(torch.as_tensor(fn(a[t].clone(), a[t - 1].clone(), 1.0)))
        if abs(value**2 - ddpm_var) > 1e-4 * ddpm_var + 1e-9:
            return Check(what_zh, what_en, False, detail_zh=f"t = {t}：σ² = {value**2:.4g}，DDPM 是 {ddpm_var:.4g}。",
                         detail_en=f"t = {t}: σ² = {value**2:.4g}, DDPM's is {ddpm_var:.4g}.",
                         hint_zh="相邻两步时 1 − ā_t/ā_{t−1} 就是 β_t。", hint_en="For adjacent steps 1 − ā_t/ā_{t−1} is β_t.")
    return Check(what_zh, what_en, True)


def _sigma_stub(fn: Callable) -> Check | None:
    values = []
    for t, p, eta in _SIGMA_CASES[:2]:
        a_t, a_prev = _sigma_inputs(t, p)
        outcome = call_answer(fn, a_t, a_prev, eta)
        if outcome.not_implemented or outcome.blank:
            return stub_check(*_not_written("my_ddim_sigma", outcome), "return σ（一个数）。", "Return σ (one number).")
        try:
            values.append(float(torch.as_tensor(outcome.value)))
        except Exception:
            return None
    if all(v == 0 for v in values):
        return stub_check("my_ddim_sigma 无论 η 是多少都返回 0：这还是练习给的样子（η = 0 的 DDIM）。",
                          "my_ddim_sigma returns 0 whatever η is: that is still the exercise's stub (DDIM with η = 0).",
                          "从 DDPM 的后验方差出发：η = 1 时 σ² 要等于它；σ 与 η 成正比。",
                          "Start from DDPM's posterior variance: at η = 1, σ² equals it; σ is proportional to η.")
    return None


@exercise(6, "6.4", "DDIM 的噪声大小 σ", "DDIM's noise level σ")
def check_ddim_sigma(fn: Callable) -> Feedback:
    """Check ``fn(alpha_bar_t, alpha_bar_prev, eta) -> sigma`` (0-d tensors in, a 0-d tensor or float out).

    Right answer: η·√((1−ā_prev)/(1−ā_t)·(1 − ā_t/ā_prev)), as in :func:`unetlab.samplers.ddim_step`; at
    η = 1 and adjacent timesteps σ² is DDPM's ``fixed_small`` variance. The stub (0 whatever η) is
    "not attempted yet".
    """
    if callable(fn):
        stub = _sigma_stub(fn)
        if stub is not None:
            return run_checks("DDIM 的噪声大小 σ", "DDIM's noise level σ", [lambda: stub])
    steps = [lambda: function_check(fn, "check_ddim_sigma(my_ddim_sigma)", ("提交的是函数", "the answer is a function"))]
    if callable(fn):
        for t, p, eta in _SIGMA_CASES:
            step = lambda t=t, p=p, e=eta: _sigma_case(fn, t, p, e)  # noqa: E731
            step.__name__ = f"t={t}"
            steps.append(step)
        steps.append(lambda: _sigma_matches_ddpm(fn))
    return run_checks("DDIM 的噪声大小 σ", "DDIM's noise level σ", steps)
