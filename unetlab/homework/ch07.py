"""Chapter 7 homework: where ControlNet's residuals enter the UNet.

7.1 ``check_residual_shapes(answer)`` — predict, without running anything, the shapes of the residuals
    that a ControlNet hands to **SDXL**'s UNet for a **128×128 latent** (a 1024×1024 image), batch 1:
    ``{"down": [one shape per skip, in skip order], "mid": shape}``. Chapter 7 prints SD 1.5's table at
    64×64, so the learner must reason from SDXL's config instead (three down blocks, 320/640/1280
    channels, no downsampler after the last one): 9 skips, not 12, and a lowest level of 32×32, not 16×16.
    The answer is read off :func:`unetlab.skip_shapes` / ``mid_shape``, never typed in. Diagnosed: SD 1.5's
    shapes (the chapter's 64×64 table as printed or scaled to 128×128, or any other latent), SDXL's
    layout at another latent size, pixel sizes (×8), a downsampler's skip given the next level's channels,
    the wrong count (12: SD 1.5's layout, 6 or 7: downsamplers or conv_in left out, 8: conv_in or one
    downsampler left out, 10: a downsampler after the last block or the mid block counted), the skips in
    reverse (the up path's order), a mid block one level too deep, shapes without the batch axis.
    Stub: ``{"down": [], "mid": None}`` (the count is not given away), or every entry ``None``.
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
           "HOMEWORK_CONFIG", "HOMEWORK_LATENT", "ADD_AT_SKIP_CASES"]

#: 7.1's UNet and latent: SDXL at 1024×1024 pixels, batch 1 (the chapter itself traces SD 1.5 at 64×64)
HOMEWORK_CONFIG = "sdxl"
HOMEWORK_LATENT = (1, 4, 128, 128)
#: 7.2's cases on the ``tiny`` config: a skip at each end, a downsampler's, the mid block
ADD_AT_SKIP_CASES = ("conv_in", "down_blocks.0.downsamplers.0", "down_blocks.2.attentions.1", "down_blocks.3.resnets.1",
                     "mid_block")
_TINY_LATENT = (2, 4, 16, 16)


# --- 7.1 the shapes of the residuals -------------------------------------------------------------------


def reference_residual_shapes(sample_shape=HOMEWORK_LATENT, config: str = HOMEWORK_CONFIG) -> dict:
    """The answer of 7.1: ``{"down": [one shape per skip], "mid": shape}``, read off :func:`unetlab.skip_shapes`
    and ``mid_shape`` (by default SDXL at a 128×128 latent, batch 1)."""
    from ..sd.unet import mid_shape, skip_shapes

    return {"down": [shape for _, shape in skip_shapes(config, sample_shape)], "mid": mid_shape(config, sample_shape)[1]}


def _names() -> list[str]:
    """The UNet modules whose outputs are 7.1's skips, in skip order."""
    from ..sd.unet import skip_shapes

    return [name for name, _ in skip_shapes(HOMEWORK_CONFIG, HOMEWORK_LATENT)]


def _next_level_channels() -> list[tuple]:
    """The shapes if each downsampler's skip took the next level's channels (a usual slip)."""
    ref = reference_residual_shapes()["down"]
    out = list(ref)
    # the last down block has no downsampler, so a downsampler's skip always has a next one
    for i, name in enumerate(_names()):
        if "downsamplers" in name:
            out[i] = (ref[i][0], ref[i + 1][1], ref[i][2], ref[i][3])
    return out


def _one_level_deeper(shape: tuple) -> tuple:
    """``(B, C, H, W)`` after one more downsampler (3×3, stride 2, padding 1: n -> ceil(n / 2))."""
    b, c, h, w = shape
    return (b, c, (h + 1) // 2, (w + 1) // 2)


def _down_at(config: str, side) -> list | None:
    """``config``'s skip shapes at a ``side``×``side`` latent, batch 1; None when ``side`` is not a usable size."""
    if not isinstance(side, int) or not 0 < side <= 4096:
        return None
    try:
        return reference_residual_shapes((1, 4, side, side), config)["down"]
    except Exception:  # a size the package refuses is simply not this mistake
        return None


def _known_mistake(down: list) -> tuple[str, str] | None:
    """The hint (zh, en) for a typical wrong list of skip shapes, recognised whole; None for anything else.

    Every wrong list is built from the package's shapes (the reference, SD 1.5's, other latent sizes),
    none is typed in.
    """
    ref = reference_residual_shapes()
    shapes, names = ref["down"], _names()
    low = shapes[-1]
    deeper = _one_level_deeper(low)
    # the side of the first shape the learner gave: the latent they had in mind
    side = down[0][2] if down and down[0] is not None and len(down[0]) == 4 else None
    side_text = f"{side}×{side}"
    # the exercise's latent and image sides: 128 and 1024
    lat, px = HOMEWORK_LATENT[2], 8 * HOMEWORK_LATENT[2]
    sd15 = _down_at("sd15", side)
    first_downsampler = next(i for i, n in enumerate(names) if "downsamplers" in n)
    no_downsamplers = [s for s, n in zip(shapes, names) if "downsamplers" not in n]
    mistakes = [
        (sd15 if side == lat else None,
         f"这是 SD 1.5 在 {side_text} 潜空间表示下的 {len(sd15 or [])} 个跳跃连接，也就是把 7.2 节那张 64×64 的表"
         "边长乘 2。可本题是 SDXL，结构不同：看第 2 章 2.8 节的表，它的 block_out_channels 有几项、有几个下采样块？",
         f"These are SD 1.5's {len(sd15 or [])} skips at a {side_text} latent: section 7.2's 64×64 "
         "table with every side doubled. This exercise is SDXL, built differently: in chapter 2's table (section 2.8), "
         "how many entries does its block_out_channels have, and how many down blocks?"),
        (sd15 if side == 64 else None,
         "这是 7.2 节那张表：SD 1.5、64×64 的潜空间表示。本题是 SDXL、128×128 的潜空间表示（1024×1024 的图像），"
         "从第 2 章 2.8 节的表读出 SDXL 的配置，再一级一级推。",
         "This is section 7.2's table: SD 1.5 at a 64×64 latent. This exercise is SDXL at a 128×128 latent (a 1024×1024 "
         "image): read SDXL's config off chapter 2's table (section 2.8) and work down level by level."),
        (sd15,
         f"这是 SD 1.5 在 {side_text} 潜空间表示下的形状。本题是 SDXL、128×128 的潜空间表示；SDXL 的结构见第 2 章 2.8 节的表。",
         f"These are SD 1.5's shapes at a {side_text} latent. This exercise is SDXL at a 128×128 latent; SDXL's layout "
         "is in chapter 2's table (section 2.8)."),
        ([(b, c, 8 * h, 8 * w) for b, c, h, w in shapes],
         f"空间尺寸是像素大小（×8）。ControlNet 的残差加在 UNet 的跳跃连接上，跳跃连接的尺寸是潜空间表示的：从 {lat}×{lat} "
         f"开始，不是 {px}×{px}。",
         "The sizes are in pixels (×8). ControlNet's residuals are added to the UNet's skips, which have the latent's "
         f"sizes: they start at {lat}×{lat}, not {px}×{px}."),
        # (SDXL at a 1024×1024 "latent" is the pixel case above)
        (_down_at(HOMEWORK_CONFIG, side),
         f"结构对了，可这是 {side_text} 潜空间表示的尺寸。本题的图像是 {px}×{px}，潜空间表示是它的 1/8：{lat}×{lat}。",
         f"The layout is right, but these are the sizes for a {side_text} latent. This exercise's image is {px}×{px} "
         f"and the latent is 1/8 of it: {lat}×{lat}."),
        (_next_level_channels(),
         f"下采样器只把边长减半，不改变通道数：{names[first_downsampler]} 的输出仍是 {shapes[first_downsampler][1]} 通道"
         "（通道在下一个块的第一个残差块才变）。",
         f"A downsampler halves the side but keeps the channels: {names[first_downsampler]} still has "
         f"{shapes[first_downsampler][1]} channels (they change in the next block's first ResNet)."),
        (no_downsamplers,
         "少了下采样器的输出。它们也是跳跃连接（上采样路径也要用）；除了最后一个下采样块，每块都有一个下采样器。",
         "The downsamplers' outputs are missing. They are skips too (the up path reads them); every down block but the "
         "last has one."),
        (no_downsamplers[1:],
         "只数了各块的残差块（及其后的注意力）的输出。conv_in 的输出和下采样器的输出也是跳跃连接。",
         "Only the blocks' ResNet (+attention) outputs. conv_in's output and the downsamplers' outputs are skips too."),
        (shapes[1:],
         "少了 conv_in 的输出：它是第一个跳跃连接。",
         "conv_in's output is missing: it is the first skip."),
        (shapes + [deeper],
         f"多了一个 {deeper[2]}×{deeper[3]} 的跳跃连接：最后一个下采样块（{names[-1].rsplit('.', 2)[0]}）没有下采样器，所以最低一级是 "
         f"{low[2]}×{low[3]}，不再缩小。",
         f"One skip too many, at {deeper[2]}×{deeper[3]}: the last down block ({names[-1].rsplit('.', 2)[0]}) has no "
         f"downsampler, so the lowest level stays at {low[2]}×{low[3]}."),
        (shapes[1:] + [deeper],
         f"个数碰巧对了，可是少了 conv_in 的输出（第一个跳跃连接），又多了一个 {deeper[2]}×{deeper[3]} 的：最后一个下采样块没有下采样器。",
         f"The count happens to be right, but conv_in's output (the first skip) is missing and there is one "
         f"{deeper[2]}×{deeper[3]} too many: the last down block has no downsampler."),
        (shapes + [ref["mid"]],
         "多了中间块：它的残差单独放在 'mid'，不在 'down' 里。",
         "The mid block is in 'down': its residual goes under 'mid' on its own."),
        (shapes[::-1],
         "形状都对，顺序反了：这是上采样路径取用的顺序。ControlNet 的残差按下采样路径的顺序排，conv_in 在前。",
         "The right shapes in reverse: the order the up path takes them in. ControlNet's residuals follow the down "
         "path's order, conv_in first."),
    ]
    for i, name in enumerate(names):
        if "downsamplers" in name:
            mistakes.append((shapes[:i] + shapes[i + 1:],
                             f"少了 {name} 的输出：下采样器的输出也是跳跃连接。",
                             f"{name}'s output is missing: a downsampler's output is a skip too."))
    for wrong, zh, en in mistakes:
        if wrong is not None and down == wrong and down != shapes:
            return zh, en
    return None


def _shapes_stub_check(answer) -> Check | None:
    # the stub is {"down": [], "mid": None}; [None, ...] and {} values count as untouched too
    if isinstance(answer, dict) and set(answer) == {"down", "mid"} and is_blank(answer):
        if isinstance(answer["down"], (list, tuple)) and not answer["down"]:
            seen = ("'down' 还是空列表，'mid' 还是 None。", "'down' is still an empty list and 'mid' still None.")
        else:
            seen = ("每个形状都还是 None。", "every shape is still None.")
        return stub_check(
            *seen,
            "先从第 2 章 2.8 节的表读出 SDXL 的配置（几个下采样块、各自的通道数、哪些块有下采样器），再按跳跃连接的顺序"
            "（conv_in 在前）把每个形状 (B, C, H, W) 放进 'down'，最后写 'mid'。潜空间表示是 128×128。",
            "First read SDXL's config off chapter 2's table (section 2.8): how many down blocks, their channels, which "
            "have a downsampler. Then put every shape (B, C, H, W) into 'down' in skip order (conv_in first), and write "
            "'mid'. The latent is 128×128.")
    return None


def _as_shapes(values) -> list | None:
    if not isinstance(values, (list, tuple)):
        return None
    return [as_shape(v) for v in values]


#: the rule for counting the skips, without the answer: the hint for a count nothing else explains
_COUNT_RULE = ("数法：conv_in 1 个；每个下采样块里每个残差块（及其后的注意力）1 个（layers_per_block = 2）；除了最后一个下采样块，"
               "每块的下采样器 1 个。SDXL 有几个下采样块，看第 2 章 2.8 节的表（block_out_channels）。",
               "How to count: conv_in 1; one per ResNet (+attention) in each down block (layers_per_block = 2); one per "
               "downsampler, which every down block but the last has. How many down blocks SDXL has: chapter 2's table "
               "(section 2.8), block_out_channels.")


def _count_check(down: list) -> Check:
    n, expected = len(down), len(reference_residual_shapes()["down"])
    if n == expected:
        return Check(f"残差个数：{n}（每个跳跃连接一个）", f"number of residuals: {n} (one per skip)", True)
    # the expected count stays out of a failed check's label: it should not hand the count over
    what = ("残差个数（每个跳跃连接一个）", "number of residuals (one per skip)")
    known = _known_mistake(down)
    hints = {
        12: ("12 是 SD 1.5 的个数（四个下采样块）。SDXL 的 block_out_channels 只有三项（第 2 章 2.8 节的表），照它重新数。",
             "12 is SD 1.5's number (four down blocks). SDXL's block_out_channels has three entries (chapter 2's table, "
             "section 2.8): count again from that."),
        13: ("13 像是 SD 1.5 的 12 个再加上中间块。SDXL 只有三个下采样块；中间块的残差单独放在 'mid'。",
             "13 looks like SD 1.5's 12 plus the mid block. SDXL has three down blocks, and the mid residual goes under "
             "'mid' on its own."),
        6: ("6 个：只数了各块的残差块（及其后的注意力）。conv_in 的输出和下采样器的输出也是跳跃连接。",
            "6: only the ResNet (+attention) outputs. conv_in's output and the downsamplers' outputs are skips too."),
        7: ("7 个：是不是少了下采样器的输出？它们也是跳跃连接（上采样路径也要用）。",
            "7: are the downsamplers' outputs missing? They are skips too (the up path reads them)."),
        8: ("8 个：少了一个。是不是忘了 conv_in 的输出（第一个跳跃连接），或者某个下采样器的输出？",
            "8: one is missing. Did you forget conv_in's output (the first skip), or a downsampler's?"),
        10: ("10 个：多了一个。最后一个下采样块没有下采样器；中间块的残差单独放在 'mid'。",
             "10: one too many. The last down block has no downsampler, and the mid residual goes under 'mid'."),
    }
    zh, en = known or hints.get(n, _COUNT_RULE)
    return Check(*what, False, f"你给了 {n} 个。", f"you gave {n}.", zh, en)


def _down_check(down: list) -> Check:
    ref = reference_residual_shapes()["down"]
    what = ("各个残差的形状", "the residuals' shapes")
    if down == ref:
        return Check(*what, True)
    names = _names()
    wrong = [i for i, (a, b) in enumerate(zip(down, ref)) if a != b]
    first = wrong[0]
    detail_zh = f"{len(wrong)} 个不对，例如第 {first} 个（{names[first]}）：你给 {down[first]}。"
    detail_en = f"{len(wrong)} wrong, e.g. number {first} ({names[first]}): you gave {down[first]}."
    if any(s is None for s in down):
        return Check(*what, False, "有的形状还没填或不是整数元组。", "some shapes are not filled in or are not tuples of ints.",
                     "每个形状写成四个整数的元组 (B, C, H, W)。", "Write each shape as a tuple of four ints (B, C, H, W).")
    if all(len(s) == 3 for s in down):
        return Check(*what, False, detail_zh, detail_en, "形状要包括批量维 B = 1：(B, C, H, W)。",
                     "Include the batch axis B = 1: (B, C, H, W).")
    known = _known_mistake(down)
    if known is not None:
        return Check(*what, False, detail_zh, detail_en, *known)
    if all(len(s) == 4 for s in down) and [s[1:] for s in down] == [s[1:] for s in ref]:
        return Check(*what, False, detail_zh, detail_en, "批量维是 B = 1。", "The batch is B = 1.")
    return Check(*what, False, detail_zh, detail_en,
                 "顺序：conv_in，然后每个块的两个残差块（+注意力）输出，再是它的下采样器（最后一块没有）。通道按 block_out_channels；"
                 "下采样器把边长减半、通道不变；边长从 128 开始。",
                 "Order: conv_in, then each block's two ResNet (+attention) outputs, then its downsampler (not the last "
                 "block's). Channels follow block_out_channels; a downsampler halves the side and keeps the channels; the "
                 "side starts at 128.")


def _mid_check(mid) -> Check:
    ref = reference_residual_shapes()["mid"]
    what = ("中间块残差的形状", "the mid residual's shape")
    if mid == ref:
        return Check(*what, True)
    detail = (f"你给 {mid}。", f"you gave {mid}.")
    if mid is None:
        return Check(*what, False, "'mid' 还没填或不是整数元组。", "'mid' is not filled in or is not a tuple of ints.",
                     "写成四个整数的元组 (B, C, H, W)。", "Write it as a tuple of four ints (B, C, H, W).")
    if len(mid) == 3:
        return Check(*what, False, *detail, "形状要包括批量维 B = 1：(B, C, H, W)。", "Include the batch axis B = 1: (B, C, H, W).")
    if len(mid) == 4 and mid[1] == ref[1] and mid[2:] == _one_level_deeper(ref)[2:]:
        return Check(*what, False, *detail,
                     f"低了一级：最后一个下采样块没有下采样器，中间块也不改变大小，所以中间块和最低一级一样大（{ref[2]}×{ref[3]}）。"
                     "SDXL 只有三级，只缩小两次。",
                     "One level too deep: the last down block has no downsampler and the mid block keeps the size, so the "
                     f"mid block works at the lowest level's size ({ref[2]}×{ref[3]}). SDXL has three levels and halves "
                     "only twice.")
    if len(mid) == 4 and mid[:2] == ref[:2] and mid[2:] == (8 * ref[2], 8 * ref[3]):
        return Check(*what, False, *detail, "这是像素大小（×8）；中间块的残差用潜空间表示的尺寸。",
                     "These are pixel sizes (×8); the mid residual has the latent's sizes.")
    if len(mid) == 4 and mid[2:] == ref[2:]:
        return Check(*what, False, *detail, "大小对了；通道数是最后一个下采样块的通道数（block_out_channels 的最后一项）。",
                     "The size is right; the channels are the last down block's (block_out_channels' last entry).")
    return Check(*what, False, *detail,
                 "中间块的残差和最低一级的跳跃连接同形状：通道是 block_out_channels 的最后一项，大小和最后一个下采样块的跳跃连接一样。",
                 "The mid residual has the lowest level's shape: block_out_channels' last entry as channels, and the size "
                 "of the last down block's skips.")


_TITLE_71 = ("SDXL 的 ControlNet 残差形状（128×128 潜空间表示）", "SDXL ControlNet's residual shapes (a 128×128 latent)")


@exercise(7, "7.1", *_TITLE_71)
def check_residual_shapes(answer: Any) -> Feedback:
    """Check ``{"down": [shapes in skip order], "mid": shape}`` for SDXL at a 128×128 latent, batch 1 (see the module
    docstring)."""
    stub = _shapes_stub_check(answer)
    if stub is not None:
        return run_checks(*_TITLE_71, [lambda: stub])
    state: dict = {}

    def structure() -> Check:
        what = ("答案格式：{'down': [形状, ...], 'mid': 形状}", "answer layout: {'down': [shapes ...], 'mid': shape}")
        if not isinstance(answer, dict) or set(answer) != {"down", "mid"}:
            got = sorted(map(str, answer)) if isinstance(answer, dict) else type(answer).__name__
            return Check(*what, False, f"收到 {got}。", f"got {got}.", "用两个键 'down' 和 'mid'。", "Use the two keys 'down' and 'mid'.")
        state["down"] = _as_shapes(answer["down"])
        state["mid"] = as_shape(answer["mid"])
        if state["down"] is None:
            return Check(*what, False, "'down' 不是列表。", "'down' is not a list.", "'down' 是形状的列表，按跳跃连接的顺序。",
                         "'down' is a list of shapes, in skip order.")
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

