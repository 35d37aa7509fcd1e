"""Chapter 2 homework: the Stable Diffusion UNet, from input to output.

Three exercises, each with a checker that answers in 中文 and English and never raises
because of the learner's answer:

* ``check_component_shares(answer)``: the share of SD 1.5's parameters held by the CLIP text
  encoder, the VAE and the UNet (fractions that sum to 1), from the counts in the notebook.
* ``check_shape_predictions(predictions)``: predicted tensor shapes at named points of the
  SD 1.5 UNet for a 96×96 latent (batch 1), e.g. ``"down_blocks.1 output"``.
* ``check_skip_channels(fn)``: a function ``fn(config)`` that returns, for every up-block
  ResNet, the channels it concatenates: ``(hidden, skip)``.

The truth is never typed in: parameter counts come from ``unetlab.sd.count.component_params``,
shapes from ``trace_shapes`` of ``SDUNet(SD15)`` on the meta device (shapes only, no memory), the
concatenations from ``unetlab.sd.tables.skip_table`` (the same kind of trace).
``sd_shape_truth`` and ``skip_channel_truth`` expose that truth; ``SD_SHAPE_POINTS`` lists the
points of exercise 2.B (names prefixed ``SD_`` so they don't clash with chapter 1's).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

import torch

from .answers import as_number, as_shape, function_check
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks
from .stubs import call_answer, is_blank, stub_check

__all__ = [
    "SD_SHAPE_POINTS",
    "SD_SHAPE_LATENT",
    "sd_shape_truth",
    "skip_channel_truth",
    "check_component_shares",
    "check_shape_predictions",
    "check_skip_channels",
]

# The latent side length of the shape exercise (a 768×768 image through SD's VAE: 768 / 8).
SD_SHAPE_LATENT = 96

# The named points of the shape exercise: "<module> input" or "<module> output", module names
# as in SDUNet / diffusers; "time_emb" is the timestep embedding that reaches every ResNet.
SD_SHAPE_POINTS = (
    "conv_in output",
    "time_emb",
    "down_blocks.0 output",
    "down_blocks.1 output",
    "down_blocks.3 output",
    "mid_block output",
    "up_blocks.0.resnets.0 input",
    "up_blocks.1.resnets.2 input",
    "up_blocks.2.resnets.0 input",
    "up_blocks.3 output",
    "conv_out output",
)

COMPONENTS = ("clip", "vae", "unet")


# ---------------------------------------------------------------------------------------------
# The truth: traced on the meta device
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _sd15_trace(size: int):
    """``trace_shapes`` of ``SDUNet(SD15)`` on meta tensors for a ``size``×``size`` latent, batch 1."""
    from unetlab.configs import SD15
    from unetlab.sd.unet import SDUNet
    from unetlab.tracing import trace_shapes

    with torch.device("meta"):
        model = SDUNet(SD15)
        sample = torch.empty(1, SD15.in_channels, size, size)
        context = torch.empty(1, 77, SD15.cross_attention_dim)
    return trace_shapes(model, sample, torch.tensor([500], device="meta"), context, raise_errors=True)


def _parse_point(point):
    """'up_blocks.2 resnets.0 input' / 'up_blocks.2.resnets.0 input' -> ('up_blocks.2.resnets.0', 'input').

    ``"time_emb"`` is the output of ``time_embedding``; anything unreadable gives ``(None, None)``.
    """
    if not isinstance(point, str):
        return None, None
    text = " ".join(point.split())
    if text == "time_emb":
        return "time_embedding", "output"
    m = re.fullmatch(r"(.+?) (input|output)", text)
    if not m:
        return None, None
    return m.group(1).replace(" ", "."), m.group(2)


def sd_shape_truth(size: int = SD_SHAPE_LATENT, points=SD_SHAPE_POINTS) -> dict[str, tuple[int, ...]]:
    """The traced shape at each named point of SD 1.5's UNet for a ``size``×``size`` latent.

    A point is ``"<module> input"`` (its first tensor argument, the hidden state),
    ``"<module> output"`` (its first output tensor) or ``"time_emb"``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8 (the latent is halved three times), got {size!r}")
    trace = _sd15_trace(size)
    truth = {}
    for point in points:
        module, where = _parse_point(point)
        rows = trace.find(module) if module else []
        if not rows:
            raise ValueError(f"unknown point {point!r}; write e.g. 'down_blocks.1 output', "
                             "'up_blocks.2.resnets.0 input' or 'time_emb'")
        shapes = rows[0].input_shapes if where == "input" else rows[0].output_shapes
        truth[point] = tuple(shapes[0])
    return truth


def skip_channel_truth(config) -> list[list[tuple[int, int]]]:
    """For every up block, for every ResNet: the ``(hidden, skip)`` channels it concatenates.

    Read from :func:`unetlab.sd.tables.skip_table`, which replays the skip stack of a traced
    meta-device forward and checks ``hidden + skip`` against each ResNet's real input.
    """
    from unetlab.sd.tables import skip_table

    table = skip_table(config, latent=8 * config.downsample_factor)
    result: list[list[tuple[int, int]]] = []
    for record in table.records():
        block = int(record["resnet"].split(".")[1])
        if block == len(result):
            result.append([])
        result[block].append((int(record["h"]), int(record["+ skip"])))
    return result


# ---------------------------------------------------------------------------------------------
# Exercise 2.A: parameter shares
# ---------------------------------------------------------------------------------------------
# the learner's key -> the component's name in unetlab.sd.count.component_params
_COMPONENT_NAMES = {"clip": "text_encoder", "vae": "vae", "unet": "unet"}


@lru_cache(maxsize=1)
def _component_counts() -> dict[str, int]:
    from unetlab.sd.count import component_params

    counts = component_params("sd15").counts
    return {k: int(counts[name]) for k, name in _COMPONENT_NAMES.items()}


@exercise(2, "2.A", "练习 2.A 三个组件的参数占比", "Exercise 2.A: parameter share of each component")
def check_component_shares(answer) -> Feedback:
    """Check ``{"clip": share, "vae": share, "unet": share}``: fractions of all SD 1.5 parameters.

    The shares are fractions (0.12, not 12) of CLIP text encoder + VAE + UNet together;
    a tolerance of 0.001 is allowed. A blank dict (the notebook's stub: every share ``None``) is
    "not attempted yet".
    """
    title = ("练习 2.A 三个组件的参数占比", "Exercise 2.A: parameter share of each component")
    if isinstance(answer, dict) and is_blank(answer):
        return run_checks(*title, [lambda: stub_check(
            "三个占比都还是空的（None）。", "all three shares are still empty (None).",
            "用 2.1 节的 components.counts 算出每个组件占全部参数的比例（0 到 1 之间的小数），填进 shares。",
            "Compute each component's share of all parameters from section 2.1's components.counts "
            "(a fraction between 0 and 1) and fill in shares.")])
    counts = _component_counts()
    total = sum(counts.values())
    truth = {k: counts[k] / total for k in COMPONENTS}
    tol = 1e-3

    def is_dict():
        ok = isinstance(answer, dict) and set(map(str, answer)) >= set(COMPONENTS)
        got = type(answer).__name__ if not isinstance(answer, dict) else sorted(map(str, answer))
        return Check(
            "答案是含 'clip'、'vae'、'unet' 三个键的字典", "the answer is a dict with keys 'clip', 'vae', 'unet'", ok,
            detail_zh=f"收到: {got}", detail_en=f"got: {got}",
            hint_zh="写成 {'clip': ..., 'vae': ..., 'unet': ...}，值是 0 到 1 之间的小数。",
            hint_en="Write {'clip': ..., 'vae': ..., 'unet': ...} with fractions between 0 and 1.",
        )

    def one(key):
        def step():
            if not isinstance(answer, dict) or key not in answer:
                return Check(f"{key} 的占比", f"share of {key}", False,
                             hint_zh=f"缺少键 '{key}'。", hint_en=f"The key '{key}' is missing.")
            got = as_number(answer[key])
            if got is None:
                shown = repr(answer[key])[:60]
                return Check(f"{key} 的占比", f"share of {key}", False,
                             detail_zh=f"收到 {shown}", detail_en=f"got {shown}",
                             hint_zh="占比是一个有限的数 (float)，例如 0.25。",
                             hint_en="A share is one finite number (a float), e.g. 0.25.")
            ok = abs(got - truth[key]) <= tol
            hint_zh = hint_en = ""
            if not ok:
                if got > 1 and abs(got / 100 - truth[key]) <= 0.01:
                    hint_zh, hint_en = "这是百分数；请写成小数 (除以 100)。", "That is a percentage; give a fraction (divide by 100)."
                elif abs(got - truth[key]) <= 0.01:
                    hint_zh = "很接近，但舍入太多了 (学习笔记 001 的 12%、8%、80% 就是舍入过的)。直接用参数量相除，不要先舍入。"
                    hint_en = ("Close, but rounded too much (study note 001's 12%, 8%, 80% are rounded). "
                               "Divide the counts directly, don't round first.")
                elif abs(got - counts[key] / counts["unet"]) <= tol and key != "unet":
                    hint_zh = "你除以的是 UNet 的参数量；分母应是三个组件的总和。"
                    hint_en = "You divided by the UNet's count; divide by the total of all three components."
                elif key in ("clip", "vae") and abs(got - counts[key] / (counts["clip"] + counts["vae"])) <= tol:
                    hint_zh, hint_en = "分母漏掉了 UNet；总数是三个组件之和。", "The denominator misses the UNet; the total is all three."
                else:
                    hint_zh = "占比 = 该组件参数量 / (CLIP + VAE + UNet 参数量之和)。用笔记本里算出的参数量。"
                    hint_en = "share = component count / (CLIP + VAE + UNet counts). Use the counts the notebook computed."
            return Check(f"{key} 的占比", f"share of {key}", ok,
                         detail_zh=f"你的答案 {got:.4f}",
                         detail_en=f"your answer {got:.4f}",
                         hint_zh=hint_zh, hint_en=hint_en)
        step.__name__ = f"share_{key}"
        return step

    def sums_to_one():
        total_share = sum(as_number(answer[k]) for k in COMPONENTS)
        ok = abs(total_share - 1.0) <= 3 * tol
        return Check("三个占比之和为 1", "the three shares add up to 1", ok,
                     detail_zh=f"之和 = {total_share:.4f}", detail_en=f"sum = {total_share:.4f}",
                     hint_zh="三个组件就是全部参数，占比加起来应等于 1。",
                     hint_en="The three components are all the parameters: their shares must add up to 1.")

    steps = [is_dict] + [one(k) for k in COMPONENTS]
    if isinstance(answer, dict) and all(k in answer and as_number(answer[k]) is not None for k in COMPONENTS):
        steps.append(sums_to_one)
    return run_checks(*title, steps)


# ---------------------------------------------------------------------------------------------
# Exercise 2.B: shapes at named points for a 96×96 latent
# ---------------------------------------------------------------------------------------------
#: the point the notebook fills in as an example, and its value
_EXAMPLE = ("conv_in output", (1, 320, SD_SHAPE_LATENT, SD_SHAPE_LATENT))


def _shape_hint(point: str, got: tuple[int, ...], want: tuple[int, ...], size: int) -> tuple[str, str]:
    """The most likely mistake behind a wrong shape, in both languages."""
    if len(got) != len(want):
        if len(got) == len(want) - 1:
            return ("别忘了第一维批量大小 (batch = 1)。", "Don't forget the batch dimension first (batch = 1).")
        return (f"这里的张量有 {len(want)} 维。", f"The tensor here has {len(want)} dimensions.")
    if got[0] != want[0]:
        return ("批量大小是 1。", "The batch size is 1.")
    if point == "time_emb":
        if got[-1] == want[-1] // 4:
            return ("320 是正弦投影 (time_proj) 的宽度；MLP (time_embedding) 把它放大到 4 倍后才交给 ResNet。",
                    "320 is the width of the sinusoidal projection (time_proj); the MLP (time_embedding) widens it "
                    "4x before it reaches the ResNets.")
        return ("time_emb 是 (batch, 通道数)，通道数 = 4 × 第一个块的通道数。",
                "time_emb is (batch, channels) with channels = 4 x the first block's width.")
    if len(want) == 4:
        h_got, h_want = got[2], want[2]
        if got[2:] != want[2:]:
            if h_got * 8 == h_want or h_got == size // 8 and h_want == size:
                return ("潜空间表示已经是 96×96 了，不要再除以 VAE 的 8。",
                        "The latent is already 96x96: don't divide by the VAE's factor 8 again.")
            if h_got * 2 == h_want or h_got == 2 * h_want:
                return ("数一数经过了几次下采样：down_blocks.0、1、2 各减半一次，最后一个 down_blocks.3 不下采样；"
                        "up_blocks.0、1、2 各放大一次，up_blocks.3 不上采样。",
                        "Count the resamplers: down_blocks.0, 1, 2 each halve the size, the last one, "
                        "down_blocks.3, does not; up_blocks.0, 1, 2 each double it, up_blocks.3 does not.")
            return ("检查空间尺寸：每经过一个带 downsampler 的块减半。",
                    "Check the spatial size: it halves at every block that has a downsampler.")
        if ".resnets." in point and point.endswith("input") and point.startswith("up_blocks"):
            return ("上采样块里 ResNet 的输入是拼接的结果：下面传上来的 hidden + 从下采样路径弹出的一个跳跃连接。"
                    "两者通道数不一定相同。",
                    "An up-block ResNet's input is a concatenation: the hidden state from below plus one skip tensor "
                    "popped from the down path. The two need not have the same channels.")
        return ("检查通道数：SD 1.5 的各块宽度是 320、640、1280、1280。",
                "Check the channels: SD 1.5's block widths are 320, 640, 1280, 1280.")
    return ("形状不对。", "Wrong shape.")


@exercise(2, "2.B", f"练习 2.B 预测 {SD_SHAPE_LATENT}×{SD_SHAPE_LATENT} 潜空间表示的形状",
          f"Exercise 2.B: predict the shapes for a {SD_SHAPE_LATENT}x{SD_SHAPE_LATENT} latent")
def check_shape_predictions(predictions) -> Feedback:
    """Check ``{point: shape}`` for the points in ``SD_SHAPE_POINTS`` (SD 1.5, 96×96 latent, batch 1).

    Point names may also be written with a space, e.g. ``"up_blocks.2 resnets.0 input"``. The
    notebook's stub (every point there, every value blank but the example ``conv_in output``) is
    "not attempted yet".
    """
    title = (f"练习 2.B 预测 {SD_SHAPE_LATENT}×{SD_SHAPE_LATENT} 潜空间表示的形状",
             f"Exercise 2.B: predict the shapes for a {SD_SHAPE_LATENT}x{SD_SHAPE_LATENT} latent")
    truth = sd_shape_truth(SD_SHAPE_LATENT)
    if not isinstance(predictions, dict):
        return run_checks(*title, [lambda: Check(
            "答案是字典 {位置: 形状}", "the answer is a dict {point: shape}", False,
            detail_zh=f"收到 {type(predictions).__name__}", detail_en=f"got a {type(predictions).__name__}",
            hint_zh="例如 {'conv_in output': (1, 320, 96, 96), ...}", hint_en="e.g. {'conv_in output': (1, 320, 96, 96), ...}",
        )])
    # normalise the learner's keys ('up_blocks.2 resnets.0 input' == 'up_blocks.2.resnets.0 input')
    given = {}
    for key, value in predictions.items():
        module, where = _parse_point(key)
        given[(module, where)] = value
    example = _parse_point(_EXAMPLE[0])
    others = {key: value for key, value in given.items() if not (key == example and as_shape(value) == _EXAMPLE[1])}
    if set(given) == {_parse_point(p) for p in SD_SHAPE_POINTS} and is_blank(others):
        return run_checks(*title, [lambda: stub_check(
            "除了示例 conv_in output，其余位置都还是空的（None）。",
            "every point but the example, conv_in output, is still empty (None).",
            "不运行模型，按本章的规律逐个位置推出形状，写成整数元组，例如 (1, 320, 96, 96)。",
            "Without running the model, work out each point's shape from what this chapter showed; "
            "write it as a tuple of ints, e.g. (1, 320, 96, 96).")])

    def one(point):
        def step():
            key = _parse_point(point)
            want = truth[point]
            what = (f"{point} 的形状", f"shape at {point}")
            if key not in given:
                return Check(*what, False, hint_zh="还没有预测这个位置。", hint_en="No prediction for this point yet.")
            got = as_shape(given[key])
            if got is None:
                return Check(*what, False,
                             detail_zh=f"收到 {given[key]!r}", detail_en=f"got {given[key]!r}",
                             hint_zh="形状写成整数元组，例如 (1, 320, 96, 96)。",
                             hint_en="Write a shape as a tuple of ints, e.g. (1, 320, 96, 96).")
            ok = got == want
            hint = ("", "") if ok else _shape_hint(point, got, want, SD_SHAPE_LATENT)
            return Check(*what, ok, detail_zh=f"你的答案 {got}", detail_en=f"your answer {got}",
                         hint_zh=hint[0], hint_en=hint[1])
        step.__name__ = point
        return step

    return run_checks(*title, [one(p) for p in SD_SHAPE_POINTS])


# ---------------------------------------------------------------------------------------------
# Exercise 2.C: what every up-block ResNet concatenates
# ---------------------------------------------------------------------------------------------
def _check_configs():
    """The configs the learner's function is tried on: SD 1.5, SDXL (3 blocks), two small ones."""
    from unetlab.configs import SD15, SDXL, TINY

    return [SD15, SDXL, TINY, TINY.replace(name="tiny, layers_per_block=1", layers_per_block=1)]


@exercise(2, "2.C", "练习 2.C 每个上采样 ResNet 拼接的通道数", "Exercise 2.C: the channels each up-block ResNet concatenates")
def check_skip_channels(fn: Callable) -> Feedback:
    """Check ``fn(config) -> [[(hidden, skip), ...] per up block]`` against the traced model.

    ``fn`` gets a ``UNetConfig`` and returns one list per up block, with one ``(hidden, skip)``
    pair per ResNet of that block (``layers_per_block + 1`` of them). A function that returns a
    blank value for SD 1.5 (the notebook's stub ``return []``) or raises ``NotImplementedError`` is
    "not attempted yet".
    """
    title = ("练习 2.C 每个上采样 ResNet 拼接的通道数", "Exercise 2.C: the channels each up-block ResNet concatenates")
    if not callable(fn):
        return run_checks(*title, [lambda: function_check(fn, "check_skip_channels(skip_channels)",
                                                          ("答案是一个函数 fn(config)", "the answer is a function fn(config)"))])
    first = call_answer(fn, _check_configs()[0])
    if first.not_implemented:
        return run_checks(*title, [lambda: stub_check(
            "skip_channels(config) 抛出 NotImplementedError。", "skip_channels(config) raises NotImplementedError.",
            "你的函数抛出了 NotImplementedError：它还没写，把这一行换成你的代码。",
            "Your function raised NotImplementedError: it is not written yet; replace that line with your code.")])
    if first.blank:
        shown = repr(first.value)
        return run_checks(*title, [lambda: stub_check(
            f"skip_channels(SD 1.5 的配置) 返回 {shown}。", f"skip_channels(SD 1.5's config) returns {shown}.",
            "上采样块的个数 = 下采样块的个数；每个上采样块有 layers_per_block + 1 个 ResNet。先列出下采样路径依次存下的跳跃连接"
            "（通道数），再为每个上采样 ResNet 从尾部弹出一个。",
            "There are as many up blocks as down blocks; each up block has layers_per_block + 1 ResNets. List the skips "
            "the down path saves (their channels), in order, then pop one from the end for every up-block ResNet.")])

    def one(config):
        def step():
            want = skip_channel_truth(config)
            what = (f"配置 {config.name}", f"config {config.name}")
            try:
                got = fn(config)
            except Exception as exc:
                return Check(*what, False, detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                             hint_zh="你的函数抛出了异常；先在笔记本里单独调用它试试。",
                             hint_en="Your function raised; call it on its own in the notebook first.")
            try:
                got = [[tuple(int(c) for c in pair) for pair in block] for block in got]
            except Exception:
                return Check(*what, False, detail_zh=f"收到 {got!r}"[:200], detail_en=f"got {got!r}"[:200],
                             hint_zh="返回 [[(hidden, skip), ...], ...]：每个上采样块一个列表，每个 ResNet 一对整数。",
                             hint_en="Return [[(hidden, skip), ...], ...]: one list per up block, a pair of ints per ResNet.")
            if got == want:
                return Check(*what, True)
            hint = _skip_hint(got, want, config)
            first = _first_difference(got, want)
            return Check(*what, False, detail_zh=first[0], detail_en=first[1], hint_zh=hint[0], hint_en=hint[1])
        step.__name__ = f"config {config.name}"
        return step

    return run_checks(*title, [one(c) for c in _check_configs()])


def _first_difference(got, want) -> tuple[str, str]:
    if len(got) != len(want):
        return (f"有 {len(want)} 个上采样块，你的答案有 {len(got)} 个", f"{len(want)} up blocks, your answer has {len(got)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w):
            return (f"up_blocks.{i} 有 {len(w)} 个 ResNet，你的答案有 {len(g)} 个",
                    f"up_blocks.{i} has {len(w)} ResNets, your answer has {len(g)}")
        for j, (a, b) in enumerate(zip(g, w)):
            if a != b:
                return (f"up_blocks.{i}.resnets.{j}: 你的答案 {a}", f"up_blocks.{i}.resnets.{j}: your answer {a}")
    return ("", "")


def _skip_hint(got, want, config) -> tuple[str, str]:
    if len(got) == len(want) and all(len(g) == len(w) for g, w in zip(got, want)):
        hiddens_ok = all(a[0] == b[0] for g, w in zip(got, want) for a, b in zip(g, w))
        totals_ok = all(sum(a) == sum(b) for g, w in zip(got, want) for a, b in zip(g, w))
        seed_style = all(a[0] == a[1] for g in got for a in g)
        if seed_style:
            return ("跳跃连接的通道数不总等于 hidden 的通道数 (学习笔记 000 表格的简化)。把下采样路径上每个被收集的张量"
                    "按顺序列出来，再从尾部往前弹出。",
                    "A skip does not always have the hidden state's channels (the simplification in study note 000's table). "
                    "List every tensor the down path collects, in order, then pop from the end.")
        if hiddens_ok and not totals_ok:
            return ("hidden 对了，跳跃连接不对：跳跃连接是 conv_in 的输出、每个下采样 ResNet (及其 Transformer) 的输出、"
                    "每个 downsampler 的输出，按相反顺序弹出。",
                    "hidden is right, the skips are not: the skips are conv_in's output, every down-block ResNet "
                    "(+ Transformer) output and every downsampler output, popped in reverse order.")
        return ("hidden: 每个块的第一个 ResNet 接收下面块的输出，其余 ResNet 接收本块上一个 ResNet 的输出 "
                "(通道数 = 本块的输出通道数)。",
                "hidden: a block's first ResNet gets the output of the block below, the others get the previous "
                "ResNet's output (this block's output channels).")
    return ("上采样块的个数 = 下采样块的个数；每个上采样块有 layers_per_block + 1 个 ResNet。",
            "There are as many up blocks as down blocks; each up block has layers_per_block + 1 ResNets.")
