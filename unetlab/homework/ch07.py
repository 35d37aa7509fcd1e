"""Chapter 7 homework: where ControlNet's residuals enter the UNet.

7.1 ``check_residual_shapes(answer)`` — predict, without running anything, the shapes of the 12
    residuals and the mid residual that a ControlNet hands to SD 1.5's UNet for a **96×96 latent**
    (a 768×768 image), batch 1: ``{"down": [12 shapes in skip order], "mid": shape}``. Diagnosed: the
    64×64 latent's shapes, pixel sizes (768) instead of latent ones, a downsampler's skip given the next
    level's channels, the wrong count (no downsampler skips, no conv_in skip, a 13th), a mid block one level
    too deep, shapes without the batch axis. Stub: every entry ``None``.
7.2 ``check_add_at_skip(fn)`` — write ``fn(unet, sample, timestep, context, skip_name, residual)`` that
    returns the UNet's output with ``residual`` added to the skip called ``skip_name`` (a name of
    :func:`unetlab.skip_shapes`, or ``"mid_block"``) and nowhere else — by hand, through
    ``down_block_additional_residuals`` / ``mid_block_additional_residual``, as a ControlNet would.
    Checked on a random ``tiny`` UNet at several skips. Diagnosed: the skip one place off (conv_in's skip
    forgotten, or counted from 1), the skips numbered in the up path's order (reversed), the residual
    ignored, and the residual added to the layer's *output* (a forward hook) — which also changes
    everything the down path computes after it, unlike a ControlNet. Stub: ``raise NotImplementedError``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .answers import as_shape, function_check
from .exercises import exercise
from .feedback import Check, Feedback, run_checks
from .stubs import call_answer, is_blank, stub_check

__all__ = ["check_residual_shapes", "check_add_at_skip", "reference_residual_shapes", "reference_add_at_skip",
           "HOMEWORK_LATENT", "ADD_AT_SKIP_CASES"]

#: 7.1's latent: SD 1.5 at 768×768 pixels, batch 1
HOMEWORK_LATENT = (1, 4, 96, 96)
#: 7.2's cases on the ``tiny`` config: a skip at each end, a downsampler's, the mid block
ADD_AT_SKIP_CASES = ("conv_in", "down_blocks.0.downsamplers.0", "down_blocks.2.attentions.1", "down_blocks.3.resnets.1",
                     "mid_block")
_TINY_LATENT = (2, 4, 16, 16)


# --- 7.1 the shapes of the residuals -------------------------------------------------------------------


def reference_residual_shapes(sample_shape=HOMEWORK_LATENT, config: str = "sd15") -> dict:
    """The answer of 7.1: ``{"down": [12 shapes], "mid": shape}`` from :func:`unetlab.skip_shapes` / ``mid_shape``."""
    from ..sd.unet import mid_shape, skip_shapes

    return {"down": [shape for _, shape in skip_shapes(config, sample_shape)], "mid": mid_shape(config, sample_shape)[1]}


def _names() -> list[str]:
    from ..sd.unet import skip_shapes

    return [name for name, _ in skip_shapes("sd15", HOMEWORK_LATENT)]


def _next_level_channels() -> list[tuple]:
    """The shapes if each downsampler's skip took the next level's channels (a usual slip)."""
    ref = reference_residual_shapes()["down"]
    out = list(ref)
    for i, name in enumerate(_names()):
        if "downsamplers" in name:
            out[i] = (ref[i][0], ref[i + 1][1], ref[i][2], ref[i][3])
    return out


def _shapes_stub_check(answer) -> Check | None:
    if isinstance(answer, dict) and set(answer) == {"down", "mid"} and is_blank(answer):
        return stub_check(
            "每个形状都还是 None。", "every shape is still None.",
            "按 conv_in → 4 个下采样块的顺序写出 12 个跳跃连接的形状 (B, C, H, W)，再写中间块的形状；"
            "潜空间表示是 96×96，每个下采样器把边长减半。",
            "Write the 12 skips' shapes (B, C, H, W) in order, conv_in first, then the four down blocks, then the "
            "mid block's; the latent is 96×96 and every downsampler halves the side.")
    return None


def _as_shapes(values) -> list | None:
    if not isinstance(values, (list, tuple)):
        return None
    return [as_shape(v) for v in values]


def _count_check(down: list) -> Check:
    n = len(down)
    what = ("残差个数：12（每个跳跃连接一个）", "number of residuals: 12 (one per skip)")
    if n == 12:
        return Check(*what, True)
    hints = {
        9: ("9 个：少了三个下采样器的输出。它们也是跳跃连接（上采样路径也要用）。",
            "9: the three downsamplers' outputs are missing. They are skips too (the up path reads them)."),
        11: ("11 个：少了一个。别忘了 conv_in 的输出是第一个跳跃连接；最后一个下采样块没有下采样器。",
             "11: one is missing. conv_in's output is the first skip; the last down block has no downsampler."),
        13: ("13 个：多了一个。中间块的残差单独放在 'mid'；最后一个下采样块没有下采样器。",
             "13: one too many. The mid block's residual goes under 'mid'; the last down block has no downsampler."),
        8: ("8 个：只数了 ResNet/注意力层。conv_in 的输出和三个下采样器的输出也是跳跃连接。",
            "8: only the ResNet/attention layers. conv_in's output and the three downsamplers' outputs are skips too."),
    }
    zh, en = hints.get(n, ("SD 1.5 有 12 个跳跃连接：conv_in 1 个 + 每个下采样块 2 个 ×4 + 下采样器 3 个。",
                           "SD 1.5 has 12 skips: conv_in 1 + 2 per down block × 4 + 3 downsamplers."))
    return Check(*what, False, f"你给了 {n} 个。", f"you gave {n}.", zh, en)


def _down_check(down: list) -> Check:
    ref = reference_residual_shapes()["down"]
    what = ("12 个残差的形状", "the 12 residuals' shapes")
    if down == ref:
        return Check(*what, True)
    names = _names()
    wrong = [i for i, (a, b) in enumerate(zip(down, ref)) if a != b]
    first = wrong[0]
    detail_zh = f"{len(wrong)} 个不对，例如第 {first} 个（{names[first]}）：你给 {down[first]}。"
    detail_en = f"{len(wrong)} wrong, e.g. number {first} ({names[first]}): you gave {down[first]}."
    if any(s is None for s in down):
        return Check(*what, False, "有的形状还没填或不是整数元组。", "some shapes are not filled in or are not tuples of ints.",
                     "每个形状写成四个整数的元组，例如 (1, 320, 96, 96)。", "Write each shape as a tuple of four ints, e.g. (1, 320, 96, 96).")
    if all(len(s) == 3 for s in down):
        return Check(*what, False, detail_zh, detail_en, "形状要包括批量维 B = 1：(B, C, H, W)。",
                     "Include the batch axis B = 1: (B, C, H, W).")
    if down == reference_residual_shapes((1, 4, 64, 64))["down"]:
        return Check(*what, False, detail_zh, detail_en,
                     "这是 64×64 潜空间表示（512×512 图像）的形状。本题是 96×96 的潜空间表示（768×768 图像）。",
                     "These are the shapes for a 64×64 latent (a 512×512 image). This exercise uses a 96×96 latent "
                     "(a 768×768 image).")
    if [s[2:] for s in down] == [(8 * s[2], 8 * s[3]) for s in ref]:
        return Check(*what, False, detail_zh, detail_en,
                     "空间尺寸是像素大小（×8）。ControlNet 的残差加在 UNet 的跳跃连接上，尺寸是潜空间表示的：96、48、24、12。",
                     "The sizes are in pixels (×8). ControlNet's residuals are added to the UNet's skips, which have the "
                     "latent's sizes: 96, 48, 24, 12.")
    if down == _next_level_channels():
        return Check(*what, False, detail_zh, detail_en,
                     "下采样器只把边长减半，不改变通道数：down_blocks.0.downsamplers.0 的输出仍是 320 通道（通道在下一个块的第一个 ResNet 才变）。",
                     "A downsampler halves the side but keeps the channels: down_blocks.0.downsamplers.0 still has 320 "
                     "channels (they change in the next block's first ResNet).")
    return Check(*what, False, detail_zh, detail_en,
                 "顺序：conv_in，然后每个块的两个 ResNet(+注意力) 输出，再是它的下采样器（最后一个块没有）。通道 320/640/1280/1280；边长 96/48/24/12。",
                 "Order: conv_in, then each block's two ResNet(+attention) outputs, then its downsampler (not the last "
                 "block). Channels 320/640/1280/1280; sides 96/48/24/12.")


def _mid_check(mid) -> Check:
    ref = reference_residual_shapes()["mid"]
    what = ("中间块残差的形状", "the mid residual's shape")
    if mid == ref:
        return Check(*what, True)
    detail = (f"你给 {mid}。", f"you gave {mid}.")
    if mid is not None and len(mid) == 4 and mid[1] == ref[1] and mid[2:] == (ref[2] // 2, ref[3] // 2):
        return Check(*what, False, *detail, "低了一级：最后一个下采样块没有下采样器，中间块也不缩小，所以中间块和最低一级同样大小（12×12）。",
                     "One level too deep: the last down block has no downsampler and the mid block keeps the size, so "
                     "the mid block works at the lowest level's size (12×12).")
    return Check(*what, False, *detail, "中间块的输出和最低一级同形状：(B, 1280, 12, 12)。",
                 "The mid block's output has the lowest level's shape: (B, 1280, H/8, W/8).")


_TITLE_71 = ("ControlNet 残差的形状（96×96 潜空间表示）", "ControlNet's residual shapes (a 96×96 latent)")


@exercise(7, "7.1", *_TITLE_71)
def check_residual_shapes(answer: Any) -> Feedback:
    """Check ``{"down": [12 shapes], "mid": shape}`` for SD 1.5 at a 96×96 latent, batch 1 (see the module docstring)."""
    stub = _shapes_stub_check(answer)
    if stub is not None:
        return run_checks(*_TITLE_71, [lambda: stub])
    state: dict = {}

    def structure() -> Check:
        what = ("答案格式：{'down': [...12 个形状], 'mid': 形状}", "answer layout: {'down': [...12 shapes], 'mid': shape}")
        if not isinstance(answer, dict) or set(answer) != {"down", "mid"}:
            got = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            return Check(*what, False, f"收到 {got}。", f"got {got}.", "用两个键 'down' 和 'mid'。", "Use the two keys 'down' and 'mid'.")
        state["down"] = _as_shapes(answer["down"])
        state["mid"] = as_shape(answer["mid"])
        if state["down"] is None:
            return Check(*what, False, "'down' 不是列表。", "'down' is not a list.", "'down' 是 12 个形状的列表。",
                         "'down' is a list of 12 shapes.")
        return Check(*what, True)

    def count() -> Check:
        return _count_check(state["down"])

    def down() -> Check:
        return _down_check(state["down"])

    def mid() -> Check:
        return _mid_check(state["mid"])

    fb = run_checks(*_TITLE_71, [structure, count], stop_at_failure=True)
    if fb.passed:
        fb.checks.extend(run_checks(*_TITLE_71, [down, mid]).checks)
    elif "down" in state and state["down"] is not None:
        fb.checks.extend(run_checks(*_TITLE_71, [mid]).checks)
    return fb


# --- 7.2 adding a residual at one skip by hand ------------------------------------------------------------


def _tiny_case(seed: int = 0):
    """A random ``tiny`` SDUNet (eval) and its inputs, the same on every call."""
    from ..sd.unet import SDUNet

    torch.manual_seed(seed)
    unet = SDUNet("tiny").eval()
    g = torch.Generator().manual_seed(seed + 1)
    sample = torch.randn(_TINY_LATENT, generator=g)
    context = torch.randn(_TINY_LATENT[0], 7, unet.config.cross_attention_dim, generator=g)
    timestep = torch.tensor([30, 700])
    return unet, sample, timestep, context


def _residual_for(skip_name: str, seed: int = 2) -> torch.Tensor:
    from ..sd.unet import mid_shape, skip_shapes

    shapes = dict(skip_shapes("tiny", _TINY_LATENT))
    shapes["mid_block"] = mid_shape("tiny", _TINY_LATENT)[1]
    g = torch.Generator().manual_seed(seed + sorted(shapes).index(skip_name))
    return torch.randn(shapes[skip_name], generator=g)


@torch.no_grad()
def _at_index(unet, sample, timestep, context, index: int | None, residual: torch.Tensor):
    """The UNet with ``residual`` added at skip number ``index`` (None: nowhere); None if the shape does not fit."""
    down, mid = _zero_residuals(unet, sample)
    if index is not None:
        if down[index].shape != residual.shape:
            return None
        down[index] = residual
    return unet(sample, timestep, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)


@torch.no_grad()
def _through_hook(unet, sample, timestep, context, skip_name: str, residual: torch.Tensor):
    """The usual wrong idea: add the residual to the layer's output with a forward hook (the down path changes too)."""
    module = unet.get_submodule(skip_name)

    def hook(_module, _inputs, output):
        return output + residual

    handle = module.register_forward_hook(hook)
    try:
        return unet(sample, timestep, context)
    finally:
        handle.remove()


def _zero_residuals(unet, sample) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One zero tensor per skip and a zero mid residual: what a fresh ControlNet (zero convolutions) returns."""
    from ..sd.unet import mid_shape, skip_shapes

    down = [torch.zeros(shape, dtype=sample.dtype, device=sample.device)
            for _, shape in skip_shapes(unet.config, tuple(sample.shape))]
    mid = torch.zeros(mid_shape(unet.config, tuple(sample.shape))[1], dtype=sample.dtype, device=sample.device)
    return down, mid


def reference_add_at_skip(unet, sample, timestep, context, skip_name: str, residual: torch.Tensor) -> torch.Tensor:
    """The answer of 7.2: the UNet's output with ``residual`` added to skip ``skip_name`` (or the mid block).

    The UNet takes the down residuals and the mid residual together (a ControlNet always returns both),
    so every other place gets zeros.
    """
    from ..sd.unet import skip_shapes

    names = [name for name, _ in skip_shapes(unet.config, tuple(sample.shape))]
    if skip_name != "mid_block" and skip_name not in names:
        raise ValueError(f"unknown skip {skip_name!r}; the skips are {names} (and 'mid_block')")
    # 12 zero tensors (SD 1.5) and a zero mid residual, then the residual in its place
    down, mid = _zero_residuals(unet, sample)
    if skip_name == "mid_block":
        mid = residual
    else:
        down[names.index(skip_name)] = residual
    return unet(sample, timestep, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)


_TITLE_72 = ("在一个跳跃连接上手工加残差", "Adding a residual at one skip by hand")


def _add_case(fn: Callable, skip_name: str) -> Check:
    from ..sd.unet import skip_shapes

    unet, sample, timestep, context = _tiny_case()
    residual = _residual_for(skip_name)
    what = (f"残差加在 {skip_name}", f"residual added at {skip_name}")
    with torch.no_grad():
        ref = reference_add_at_skip(unet, sample, timestep, context, skip_name, residual)
        outcome = call_answer(fn, unet, sample.clone(), timestep.clone(), context.clone(), skip_name, residual.clone())
    if outcome.error is not None:
        message = str(outcome.error)
        detail = (f"{type(outcome.error).__name__}: {message}",) * 2
        if "down_block_additional_residuals[" in message and "must have shape" in message:
            return Check(*what, False, *detail,
                         "UNet 说某个残差的形状不对：列表要按 skip_shapes 的顺序（下采样路径的顺序，conv_in 在前，不是上采样路径"
                         "取用的倒序），每个位置的全零张量和那个跳跃连接同形状。",
                         "The UNet says a residual has the wrong shape: the list follows skip_shapes' order (the down "
                         "path's, conv_in first — not the reversed order the up path takes them in), and each zero tensor "
                         "has its own skip's shape.")
        if "was given without" in message:
            return Check(*what, False, *detail,
                         "UNet 要求两者一起给：down_block_additional_residuals 和 mid_block_additional_residual（ControlNet "
                         "总是返回这一对）。不需要的那一个用全零张量。",
                         "The UNet takes both together: down_block_additional_residuals and mid_block_additional_residual "
                         "(a ControlNet always returns the pair). Give zeros for the one you do not need.")
        return Check(*what, False, *detail, "先单独运行你的函数，确认它不报错。",
                     "Run your function on its own first and make sure it does not raise.")
    out = outcome.value
    if not isinstance(out, torch.Tensor):
        return Check(*what, False, f"返回了 {type(out).__name__}。", f"returned a {type(out).__name__}.",
                     "返回 UNet 的输出张量 unet(sample, timestep, context, ...)。",
                     "Return the UNet's output tensor unet(sample, timestep, context, ...).")
    if out.shape != ref.shape:
        return Check(*what, False, f"形状 {tuple(out.shape)}，应为 {tuple(ref.shape)}。",
                     f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}.",
                     "返回 UNet 的输出（与 sample 同形状），不是残差列表。",
                     "Return the UNet's output (the sample's shape), not the list of residuals.")
    if torch.allclose(out, ref, atol=1e-5, rtol=1e-4):
        return Check(*what, True)
    detail = (f"最大误差 {float((out - ref).abs().max()):.3g}。", f"largest error {float((out - ref).abs().max()):.3g}.")
    with torch.no_grad():
        plain = unet(sample, timestep, context)
        if torch.allclose(out, plain, atol=1e-6):
            return Check(*what, False, *detail, "输出和没加残差时完全一样：残差没有传进 UNet。"
                         "把它放进 down_block_additional_residuals（或 mid_block_additional_residual）。",
                         "The output equals the UNet's without any residual: the residual never reached it. Put it in "
                         "down_block_additional_residuals (or mid_block_additional_residual).")
        if skip_name != "mid_block":
            hooked = _through_hook(unet, sample, timestep, context, skip_name, residual)
            if torch.allclose(out, hooked, atol=1e-5, rtol=1e-4):
                return Check(*what, False, *detail,
                             "你把残差加在了这一层的输出上（比如用钩子），于是下采样路径后面的每一层都变了。ControlNet 的残差"
                             "只加在交给上采样路径的那份跳跃连接上：用 down_block_additional_residuals。",
                             "You added the residual to the layer's output (with a hook, say), so every later layer of the "
                             "down path changed too. A ControlNet's residual is added only to the copy handed to the up "
                             "path: use down_block_additional_residuals.")
            names = [n for n, _ in skip_shapes(unet.config, tuple(sample.shape))]
            k = names.index(skip_name)
            for j, zh, en in (
                (k - 1, "错了一位（早了一个）：列表从 conv_in 的跳跃连接开始，序号从 0 数。用 skip_shapes 的名字找位置。",
                 "One place off (too early): the list starts with conv_in's skip, numbered from 0. Find the position by "
                 "the names of skip_shapes."),
                (k + 1, "错了一位（晚了一个）：是不是忘了 conv_in 的输出也是一个跳跃连接？",
                 "One place off (too late): did you forget that conv_in's output is a skip too?"),
                (len(names) - 1 - k, "顺序反了：down_block_additional_residuals 按下采样路径的顺序（conv_in 在前），不是上采样路径取用的顺序。",
                 "Reversed: down_block_additional_residuals follows the down path's order (conv_in first), not the order "
                 "the up path takes them in."),
            ):
                if 0 <= j < len(names) and j != k:
                    other = _at_index(unet, sample, timestep, context, j, residual)
                    if other is not None and torch.allclose(out, other, atol=1e-5, rtol=1e-4):
                        return Check(*what, False, *detail, zh, en)
    return Check(*what, False, *detail,
                 "做法：shapes = skip_shapes(unet.config, sample.shape)；建一个全零张量的列表（每个跳跃连接一个），把 residual "
                 "放在 skip_name 的位置，传给 down_block_additional_residuals，同时传一个全零的 mid_block_additional_residual"
                 "（mid_shape 给出形状；ControlNet 总是两者一起给）；'mid_block' 则反过来。",
                 "Recipe: shapes = skip_shapes(unet.config, sample.shape); a list of zero tensors (one per skip) with residual "
                 "at skip_name's position, passed as down_block_additional_residuals together with a zero "
                 "mid_block_additional_residual (mid_shape gives its shape; a ControlNet always gives both); for "
                 "'mid_block' the other way round.")


def _add_stub(fn: Callable) -> Check | None:
    unet, sample, timestep, context = _tiny_case()
    outcome = call_answer(fn, unet, sample, timestep, context, "conv_in", _residual_for("conv_in"))
    if outcome.not_implemented or outcome.blank:
        what = ("add_at_skip 还会抛出 NotImplementedError。", "add_at_skip still raises NotImplementedError.") \
            if outcome.not_implemented else ("add_at_skip 什么也没返回。", "add_at_skip returns nothing.")
        return stub_check(*what, "写出函数体并 return UNet 的输出。", "Write the function's body and return the UNet's output.")
    return None


@exercise(7, "7.2", *_TITLE_72)
def check_add_at_skip(fn: Callable) -> Feedback:
    """Check ``fn(unet, sample, timestep, context, skip_name, residual) -> output`` on a random tiny UNet."""
    if callable(fn):
        stub = _add_stub(fn)
        if stub is not None:
            return run_checks(*_TITLE_72, [lambda: stub])
    steps = [lambda: function_check(fn, "check_add_at_skip(add_at_skip)", ("提交的是函数", "the answer is a function"))]
    if callable(fn):
        for name in ADD_AT_SKIP_CASES:
            step = lambda n=name: _add_case(fn, n)  # noqa: E731
            step.__name__ = f"skip {name}"
            steps.append(step)
    return run_checks(*_TITLE_72, steps)

