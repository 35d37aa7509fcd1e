"""Chapter 2 homework: the Stable Diffusion UNet, from input to output.

Three exercises, each with a checker that answers in 中文 and English and never raises
because of the learner's answer:

* ``check_sd21_params(answer, extra_params)``: which sub-modules of SD 2.1's UNet hold more
  parameters than SD 1.5's, which only change shape, whether the head layout matters, and a
  function that predicts, from a config alone, what a new text width costs.
* ``check_shape_predictions(predictions)``: predicted tensor shapes at named points of the
  SD 1.5 UNet for a 96×96 latent (batch 1), e.g. ``"down_blocks.1 output"``.
* ``check_skip_channels(fn)``: a function ``fn(config)`` that returns, for every up-block
  ResNet, the channels it concatenates: ``(hidden, skip)``.

The truth is never typed in: parameter counts come from models built on the meta device,
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

from .answers import as_bool, as_number, as_shape, function_check, key_check
from .exercises import exercise
from .feedback import Check, Feedback, describe_exception, run_checks
from .stubs import call_answer, is_blank, stub_check

__all__ = [
    "SD_SHAPE_POINTS",
    "SD_SHAPE_LATENT",
    "sd_shape_truth",
    "skip_channel_truth",
    "SD21_KEYS",
    "sd21_difference",
    "context_params_truth",
    "check_sd21_params",
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
# Exercise 2.A: where SD 2.1's parameters differ from SD 1.5's, and why
# ---------------------------------------------------------------------------------------------
#: the keys of exercise 2.A's answer dict
SD21_KEYS = ("grew", "reshaped", "heads_change_count")


def _submodule(name: str) -> str:
    """A parameter's sub-module inside a transformer, as the exercise names it.

    'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight' -> 'attn2.to_k';
    '....attn1.to_out.0.bias' -> 'attn1.to_out'; '....ff.net.0.proj.weight' -> 'ff';
    '....attentions.0.proj_in.weight' -> 'proj_in'; anything outside a transformer -> its module path.
    """
    parts = name.split(".")[:-1]  # drop weight / bias
    for attn in ("attn1", "attn2"):
        if attn in parts:
            i = parts.index(attn)
            return f"{attn}.{parts[i + 1]}"
    if "ff" in parts:
        return "ff"
    if "attentions" in parts:
        return parts[-1]
    return ".".join(parts)


@lru_cache(maxsize=1)
def sd21_difference() -> dict:
    """SD 2.1 against SD 1.5, parameter by parameter, on the meta device (the truth of exercise 2.A).

    Returns ``{"grew": set of sub-modules whose parameter count grew, "reshaped": set of sub-modules
    whose weights changed shape but not size, "heads_change_count": bool, "extra": int}``.
    """
    from unetlab.configs import SD15, SD21
    from unetlab.sd.count import meta_unet

    shapes15 = {n: p.shape for n, p in meta_unet(SD15).named_parameters()}
    shapes21 = {n: p.shape for n, p in meta_unet(SD21).named_parameters()}
    if shapes15.keys() != shapes21.keys():
        raise RuntimeError("SD 1.5 and SD 2.1 no longer have the same parameter names")
    grew = {_submodule(n) for n in shapes15 if shapes21[n].numel() != shapes15[n].numel()}
    reshaped = {_submodule(n) for n in shapes15 if shapes21[n] != shapes15[n]} - grew
    # SD 2.1 with SD 1.5's heads (8 per block): does the head layout alone change the count?
    n21 = sum(s.numel() for s in shapes21.values())
    n21_8heads = sum(p.numel() for p in meta_unet(SD21.replace(num_attention_heads=SD15.num_attention_heads)).parameters())
    extra = n21 - sum(s.numel() for s in shapes15.values())
    return {"grew": grew, "reshaped": reshaped, "heads_change_count": n21 != n21_8heads, "extra": extra}


def context_params_truth(config, width: int) -> int:
    """Parameters gained when only ``cross_attention_dim`` of ``config`` becomes ``width`` (meta device)."""
    from unetlab.sd.count import meta_unet

    before = sum(p.numel() for p in meta_unet(config).parameters())
    after = sum(p.numel() for p in meta_unet(config.replace(cross_attention_dim=width)).parameters())
    return after - before


def _context_formula(config, width: int, kv: int = 2, per_block: bool = False, depth: bool = True,
                     up_extra: bool = True, mid: bool = True, difference: bool = True) -> int:
    """The extra parameters by formula; the flags switch on the usual mistakes (for the hints)."""
    C = config.block_out_channels
    d = config.transformer_layers_per_block if depth else (1,) * len(C)
    n = config.layers_per_block
    # Σ over every BasicTransformerBlock of its width C: the to_k and to_v weights are (C, context)
    total = 0
    for i, kind in enumerate(config.down_block_types):
        if kind.startswith("CrossAttn"):
            total += (1 if per_block else n) * d[i] * C[i]
    if mid and config.mid_block_type == "UNetMidBlock2DCrossAttn":
        total += d[-1] * C[-1]
    for i, kind in enumerate(config.up_block_types):
        if kind.startswith("CrossAttn"):
            j = len(C) - 1 - i  # up block i works at down block j's width
            total += (1 if per_block else n + (1 if up_extra else 0)) * d[j] * C[j]
    # (to_k, to_v): C × (width − context) more weights each, no bias
    return kv * total * ((width - config.cross_attention_dim) if difference else width)


def _context_cases():
    """(config, new context width) pairs the learner's ``extra_params`` is tried on."""
    from unetlab.configs import SD15, SDXL, TINY

    return [(SD15, 1024), (SD15, 2048), (SDXL, 768), (TINY, 48),
            (TINY.replace(name="tiny, layers_per_block=1", layers_per_block=1), 64)]


def _context_hint(config, width: int, got: float) -> tuple[str, str]:
    """The most likely mistake behind a wrong ``extra_params(config, width)``."""
    want = _context_formula(config, width)
    if got == -want:
        return ("符号反了：要的是新模型减旧模型，文本变窄时结果是负数。",
                "Wrong sign: new minus old; a narrower text gives a negative number.")
    mistakes = [
        (dict(kv=1), ("交叉注意力里读文本的是两个矩阵：to_k 和 to_v。", "Two matrices read the text in a cross-attention: to_k and to_v.")),
        (dict(difference=False), ("这是新的 to_k、to_v 的全部大小；要的是差：(新宽度 − 旧宽度) × C。",
                                  "That is the whole size of the new to_k and to_v; the question is the difference: "
                                  "(new width − old width) × C.")),
        (dict(per_block=True), ("每个块不止一个 Transformer：下采样块有 layers_per_block 个，上采样块有 layers_per_block + 1 个。",
                                "A block has more than one Transformer: a down block has layers_per_block of them, an up block "
                                "layers_per_block + 1.")),
        (dict(depth=False), ("一个 Transformer 里可以有好几层 BasicTransformerBlock（transformer_layers_per_block，SDXL 是 1、2、10），"
                             "每层都有自己的 attn2。",
                             "A Transformer can hold several BasicTransformerBlocks (transformer_layers_per_block; SDXL: 1, 2, 10), "
                             "each with its own attn2.")),
        (dict(up_extra=False), ("上采样块的 ResNet 比下采样块多一个，Transformer 也多一个：layers_per_block + 1。",
                                "An up block has one more ResNet than a down block, and one more Transformer: layers_per_block + 1.")),
        (dict(mid=False), ("别忘了中间块（UNetMidBlock2DCrossAttn）里的 Transformer。",
                           "Don't forget the Transformer in the mid block (UNetMidBlock2DCrossAttn).")),
    ]
    for flags, hint in mistakes:
        if got == _context_formula(config, width, **flags):
            return hint
    return ("对每一个 BasicTransformerBlock：attn2 的 to_k 和 to_v 都是 (C, 文本宽度) 的矩阵、没有偏置；C 是它所在块的通道数。"
            "数清每一级有几个，再乘以宽度的变化。",
            "For every BasicTransformerBlock: attn2's to_k and to_v are (C, text width) matrices without bias, C being its "
            "block's channels. Count how many there are at each level, then multiply by the change of width.")


def _names(value) -> set[str] | None:
    """A set of sub-module names from a set / list / tuple of strings (spaces and case ignored), else None."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (set, frozenset, list, tuple)) or not all(isinstance(v, str) for v in value):
        return None
    return {"".join(v.split()).lower() for v in value}


@exercise(2, "2.A", "练习 2.A SD 2.1 的参数比 SD 1.5 多在哪里", "Exercise 2.A: where SD 2.1's parameters differ from SD 1.5's")
def check_sd21_params(answer, extra_params) -> Feedback:
    """Check exercise 2.A: where SD 2.1's UNet differs from SD 1.5's in parameters, and a formula for it.

    ``answer``: ``{"grew": set of sub-modules whose parameter count grows (names inside a
    transformer, e.g. "attn1.to_q", "ff", "proj_in"), "reshaped": set of those whose weights change
    shape but not size, "heads_change_count": bool (do SD 2.1's 64-channel heads, instead of SD 1.5's
    8 heads, change the count?)}``. ``extra_params(config, width) -> int``: the parameters gained when
    only the text width ``cross_attention_dim`` of ``config`` becomes ``width``, from the config alone;
    tried on SD 1.5, SDXL and two small configs. The truth is measured on the meta device
    (:func:`sd21_difference`, :func:`context_params_truth`). The stub (every value ``None`` and an
    ``extra_params`` that raises ``NotImplementedError``) is "not attempted yet".
    """
    title = ("练习 2.A SD 2.1 的参数比 SD 1.5 多在哪里", "Exercise 2.A: where SD 2.1's parameters differ from SD 1.5's")
    outcome = call_answer(extra_params, *_context_cases()[0]) if callable(extra_params) else None
    fn_blank = outcome is not None and (outcome.not_implemented or outcome.blank)
    if isinstance(answer, dict) and is_blank(answer) and fn_blank:
        return run_checks(*title, [lambda: stub_check(
            "sd21_answer 的三项都还是 None，extra_params 还没写。",
            "all three entries of sd21_answer are still None, and extra_params is not written yet.",
            "先看 2.8 节的对照表：两个模型哪些配置不同？再想每个不同会改变哪些矩阵的形状。",
            "Start from section 2.8's table: which settings differ between the two models? Then work out which "
            "matrices each difference reshapes.")])
    truth = sd21_difference()

    def is_dict():
        if not isinstance(answer, dict):
            return Check("答案是字典", "the answer is a dict", False,
                         detail_zh=f"收到 {type(answer).__name__}", detail_en=f"got a {type(answer).__name__}",
                         hint_zh="把 sd21_answer 写成 {'grew': {...}, 'reshaped': {...}, 'heads_change_count': ...}。",
                         hint_en="Write sd21_answer as {'grew': {...}, 'reshaped': {...}, 'heads_change_count': ...}.")
        return key_check(answer, SD21_KEYS, ("答案的键", "the answer's keys"),
                         ("键是 'grew'、'reshaped'、'heads_change_count'。", "The keys are 'grew', 'reshaped', 'heads_change_count'."))

    def grew():
        what = ("参数变多的子模块 (grew)", "the sub-modules that grew (grew)")
        given = _names(answer.get("grew"))
        want = truth["grew"]
        if given is None:
            return Check(*what, False, detail_zh=f"收到 {answer.get('grew')!r}"[:120], detail_en=f"got {answer.get('grew')!r}"[:120],
                         hint_zh="写成字符串的集合，例如 {'attn1.to_q'}。", hint_en="Write a set of strings, e.g. {'attn1.to_q'}.")
        ok = given == want
        hint = ("", "")
        if not ok:
            if given & {"to_k", "to_v", "to_q", "to_out"}:
                hint = ("说清是哪个注意力：自注意力 attn1 还是交叉注意力 attn2，例如 'attn2.to_q'。",
                        "Say which attention: the self-attention attn1 or the cross-attention attn2, e.g. 'attn2.to_q'.")
            elif given & {"proj_in", "proj_out"}:
                hint = ("proj_in、proj_out 从 1×1 卷积换成了 Linear：权重的形状变了，个数没变。它们属于 reshaped。",
                        "proj_in and proj_out went from 1×1 convolutions to Linear: the weights change shape, not size. "
                        "They belong in reshaped.")
            elif any(n.startswith("attn1") for n in given):
                hint = ("自注意力 attn1 只读图像特征，宽度是块的通道数 C，SD 2.1 没变。",
                        "The self-attention attn1 reads only the image features, C wide; SD 2.1 keeps the block widths.")
            elif "attn2.to_q" in given or "attn2.to_out" in given:
                hint = ("交叉注意力的 to_q 读的是图像特征（宽 C），to_out 写回图像特征；只有读文本的矩阵会随文本宽度变。",
                        "The cross-attention's to_q reads the image features (C wide) and to_out writes back to them; only "
                        "the matrices that read the text change with the text width.")
            elif given < want:
                hint = ("还少了一个：注意力里从文本算出的不止键 (key)。", "One is missing: the key is not the only thing computed from the text.")
            else:
                hint = ("比较两个模型配置中不同的那几行（2.8 节）：哪一行决定了某些矩阵的输入宽度？",
                        "Compare the settings that differ (section 2.8): which one sets the input width of some matrices?")
        return Check(*what, ok, detail_zh=f"你的答案 {sorted(given)}", detail_en=f"your answer {sorted(given)}",
                     hint_zh=hint[0], hint_en=hint[1])

    def reshaped():
        what = ("形状变了、个数没变的子模块 (reshaped)", "the sub-modules reshaped, same size (reshaped)")
        given = _names(answer.get("reshaped"))
        want = truth["reshaped"]
        if given is None:
            return Check(*what, False, detail_zh=f"收到 {answer.get('reshaped')!r}"[:120],
                         detail_en=f"got {answer.get('reshaped')!r}"[:120],
                         hint_zh="写成字符串的集合，例如 {'norm1'}。", hint_en="Write a set of strings, e.g. {'norm1'}.")
        ok = given == want
        hint = ("", "")
        if not ok:
            if given & truth["grew"]:
                hint = ("to_k、to_v 的参数个数变了，它们属于 grew。", "to_k and to_v change their size: they belong in grew.")
            elif given & {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn1.to_out", "attn2.to_out"}:
                hint = ("头的划分不改变 to_q、to_k、to_v 的形状：它们仍是 C × C (或 C × 文本宽度) 的矩阵，分头只是把输出 reshape。",
                        "The split into heads does not reshape to_q, to_k, to_v: they stay C × C (or C × text width); "
                        "heads only reshape their outputs.")
            else:
                hint = ("看 2.8 节表里 'proj_in / proj_out' 那一行：(C, C, 1, 1) 的卷积核和 (C, C) 的矩阵，个数一样。",
                        "See the 'proj_in / proj_out' row of section 2.8's table: a (C, C, 1, 1) kernel and a (C, C) matrix "
                        "hold the same number of weights.")
        return Check(*what, ok, detail_zh=f"你的答案 {sorted(given)}", detail_en=f"your answer {sorted(given)}",
                     hint_zh=hint[0], hint_en=hint[1])

    def heads():
        what = ("头的划分是否改变参数个数 (heads_change_count)", "whether the head layout changes the count (heads_change_count)")
        given = as_bool(answer.get("heads_change_count"))
        if not isinstance(given, bool):
            return Check(*what, False, detail_zh=f"收到 {given!r}"[:80], detail_en=f"got {given!r}"[:80],
                         hint_zh="填 True 或 False。", hint_en="Answer True or False.")
        ok = given == truth["heads_change_count"]
        return Check(*what, ok, detail_zh=f"你的答案 {given}", detail_en=f"your answer {given}",
                     hint_zh="" if ok else "头数 × 每头宽度 = C 不变：to_q 仍是一个 C × C 的矩阵，分成 8 个头还是 C/64 个头只是把输出切开的方式。",
                     hint_en="" if ok else "heads × channels per head = C either way: to_q is still one C × C matrix; 8 heads or "
                                           "C/64 heads is only how its output is cut up.")

    def one(config, width):
        def step():
            what = (f"extra_params({config.name}, {width})", f"extra_params({config.name}, {width})")
            if not callable(extra_params):
                return function_check(extra_params, "check_sd21_params(sd21_answer, extra_params)")
            out = call_answer(extra_params, config, width)
            if out.error is not None:
                detail = describe_exception(out.error)
                return Check(*what, False, detail_zh=detail, detail_en=detail,
                             hint_zh="只用配置的字段：block_out_channels、layers_per_block、transformer_layers_per_block、"
                                     "down_block_types、up_block_types、mid_block_type、cross_attention_dim。",
                             hint_en="Use only the config's fields: block_out_channels, layers_per_block, "
                                     "transformer_layers_per_block, down_block_types, up_block_types, mid_block_type, "
                                     "cross_attention_dim.")
            got = as_number(out.value)
            if got is None:
                return Check(*what, False, detail_zh=f"收到 {out.value!r}"[:80], detail_en=f"got {out.value!r}"[:80],
                             hint_zh="返回一个整数。", hint_en="Return one integer.")
            want = context_params_truth(config, width)
            ok = got == want
            hint = ("", "") if ok else _context_hint(config, width, got)
            return Check(*what, ok, detail_zh=f"你的答案 {got:,.0f}",
                         detail_en=f"your answer {got:,.0f}", hint_zh=hint[0], hint_en=hint[1])
        step.__name__ = f"extra_params {config.name} {width}"
        return step

    steps = [is_dict]
    if isinstance(answer, dict):
        steps += [grew, reshaped, heads]
    steps += [one(c, w) for c, w in _context_cases()]
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
        note_style = all(a[0] == a[1] for g in got for a in g)
        if note_style:
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
