"""Chapter 1 homework: study note 003's exercises "implement a UNet and verify each layer's shapes"
and "parameter-count analysis".

Three checkers, each answering in 中文 and English (what passed, what failed, a hint) and
never raising because of the learner's answer:

* ``check_unet_shapes(MyUNet)``: a UNet class (built as ``MyUNet(in_channels=4,
  out_channels=4, base_channels=16)``), a factory, or an instance. Checked: it builds; it maps
  ``(B, 4, H, W)`` and a ``(B,)`` timestep to ``(B, 4, H, W)`` for several batches and sizes;
  the timestep changes the output; the down path halves H and W at least twice; and it has
  skip connections (see :func:`has_skip_connections`).
* ``check_layer_shapes(predictions)``: predicted shapes at named points (``SHAPE_POINTS``)
  of ``SimpleUNet(base_channels=64)`` for ``x`` of shape ``(2, 4, 64, 64)``.
* ``check_param_shares(answer)``: the share of ``SimpleUNet()``'s parameters in each of its
  parts (``PARTS``): fractions that sum to 1.

The truth is never typed in: shapes come from :func:`unetlab.trace_shapes` on the meta
device, parameter counts from the model itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
import torch.nn as nn

from unetlab.simple_unet import SimpleUNet, UpBlock
from unetlab.tracing import trace_shapes

from .answers import as_number, as_shape, key_check
from .exercises import exercise
from .feedback import Check, Feedback
from .feedback import describe_learner_exception as describe_exception
from .stubs import is_blank

__all__ = [
    "PARTS",
    "SHAPE_POINTS",
    "SHAPE_INPUT",
    "has_skip_connections",
    "layer_shape_truth",
    "param_share_truth",
    "check_unet_shapes",
    "check_layer_shapes",
    "check_param_shares",
]

#: the parts of SimpleUNet, as in ``model.named_children()``
PARTS = ("time_embed", "down1", "down2", "bottleneck", "up1", "up2", "out")

#: the shape of ``x`` in the shape-prediction exercise (timestep: shape (2,))
SHAPE_INPUT = (2, 4, 64, 64)

#: points of ``SimpleUNet(base_channels=64)`` whose shape the learner predicts: "<module> output"
#: is the module's output tensor, "<module> input" its first input tensor
SHAPE_POINTS = (
    "time_embed output",
    "down1.res output",
    "down1.down output",
    "down2.res output",
    "down2.down output",
    "bottleneck output",
    "up1.up output",
    "up1.res input",
    "up1 output",
    "up2.res input",
    "out output",
)

_TOLERANCE = 0.005  # absolute tolerance on each parameter share

# ---------------------------------------------------------------------------------------------
# The truth
# ---------------------------------------------------------------------------------------------
def layer_shape_truth(base_channels: int = 64) -> dict[str, tuple[int, ...]]:
    """The true shape at every point of ``SHAPE_POINTS``, traced on the meta device."""
    return dict(_layer_shape_truth(base_channels))


@lru_cache(maxsize=8)
def _layer_shape_truth(base_channels: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SimpleUNet(in_channels=4, out_channels=4, base_channels=base_channels)
        x = torch.empty(*SHAPE_INPUT)
        timestep = torch.zeros(SHAPE_INPUT[0], dtype=torch.long)
    trace = trace_shapes(model, x, timestep, raise_errors=True)
    truth = {}
    for point in SHAPE_POINTS:
        path, which = point.rsplit(" ", 1)
        row = trace.find(path)[0]
        truth[point] = (row.output_shapes if which == "output" else row.input_shapes)[0]
    return truth


def _shares(model: nn.Module, count=lambda p: p.numel()) -> dict[str, float]:
    counts = {name: sum(count(p) for p in child.parameters()) for name, child in model.named_children()}
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()}


def _meta_model(base_channels: int, use_skips: bool = True) -> SimpleUNet:
    with torch.device("meta"):
        return SimpleUNet(in_channels=4, out_channels=4, base_channels=base_channels, use_skips=use_skips)


def param_share_truth(base_channels: int = 64, use_skips: bool = True) -> dict[str, float]:
    """Share of ``SimpleUNet(base_channels=..., use_skips=...)``'s parameters in each part of ``PARTS``."""
    return dict(_param_share_truth(base_channels, bool(use_skips)))


@lru_cache(maxsize=8)
def _param_share_truth(base_channels: int, use_skips: bool) -> dict[str, float]:
    return _shares(_meta_model(base_channels, use_skips))


def _typical_wrong_shares(base_channels: int, use_skips: bool) -> list[tuple[dict[str, float], str, str]]:
    """Shares that typical mistakes produce, each with the hint (zh, en) that explains it."""
    wrong = []
    # study note 003's up1: a ResBlock built for 2 * 64 = 128 input channels instead of 64 + 128
    if use_skips:
        seed_like = _meta_model(base_channels)
        with torch.device("meta"):
            c = base_channels
            seed_like.up1 = UpBlock(2 * c, c, 4 * c, skip_channels=c)
        wrong.append((_shares(seed_like),
                      f"这是学习笔记 003 代码里 up1 的参数量（ResBlock 按 {2 * c} 个输入通道构建）；"
                      f"修正后的 up1 要接收 {c} + {2 * c} = {3 * c} 个通道。",
                      f"These are the shares with study note 003's up1 (a ResBlock built for {2 * c} input channels); the fixed "
                      f"up1 receives {c} + {2 * c} = {3 * c} channels."))
        wrong.append((param_share_truth(base_channels, use_skips=False),
                      "这是没有跳跃连接的模型（use_skips=False）的占比；请用 SimpleUNet() 默认的 use_skips=True。",
                      "These are the shares of the model without skip connections (use_skips=False); use "
                      "SimpleUNet()'s default use_skips=True."))
    return wrong


# ---------------------------------------------------------------------------------------------
# Skip-connection test
# ---------------------------------------------------------------------------------------------
def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _lowest_resolution(model: nn.Module, x: torch.Tensor, timestep: torch.Tensor) -> tuple[int, int] | None:
    """The smallest H×W (more than one pixel) among the 4-D outputs of the model's submodules."""
    trace = trace_shapes(model, x, timestep, raise_errors=True)
    sizes = {shape[-2:] for row in trace if row.path for shape in row.output_shapes if len(shape) == 4}
    sizes = [s for s in sizes if s[0] * s[1] > 1]
    return min(sizes, key=lambda s: s[0] * s[1]) if sizes else None


def has_skip_connections(model: nn.Module, size: int = 32, base_seed: int = 0) -> bool:
    """True if information reaches the output without passing through the lowest resolution.

    Every tensor at the lowest resolution, going into or coming out of any submodule, is
    replaced by zeros. Without skip connections everything the decoder knows about ``x`` went
    through that resolution, so the output no longer depends on ``x``; with skips it still does.
    Catches concatenated and added skips alike.
    """
    generator = torch.Generator().manual_seed(base_seed)
    x1 = torch.randn(2, 4, size, size, generator=generator)
    x2 = torch.randn(2, 4, size, size, generator=generator)
    timestep = torch.tensor([10, 500])
    lowest = _lowest_resolution(model, x1, timestep)
    if lowest is None or lowest == (size, size):
        return False

    def zero_lowest(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t) if t.ndim == 4 and tuple(t.shape[-2:]) == lowest else t

    handles = []
    for path, module in model.named_modules():
        if not path:
            continue
        handles.append(module.register_forward_pre_hook(
            lambda m, args, kwargs: (_map_tensors(args, zero_lowest), _map_tensors(kwargs, zero_lowest)),
            with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, args, out: _map_tensors(out, zero_lowest)))
    try:
        with torch.no_grad():
            out1, out2 = model(x1, timestep), model(x2, timestep)
    finally:
        for handle in handles:
            handle.remove()
    scale = max(out1.abs().max().item(), out2.abs().max().item(), 1e-12)
    return (out1 - out2).abs().max().item() > 1e-5 * scale


# ---------------------------------------------------------------------------------------------
# check_unet_shapes
# ---------------------------------------------------------------------------------------------
def _build(model_or_class, base_channels: int):
    """(model, check): the model built from a class/factory, or taken as is."""
    what = ("构建模型", "build the model")
    if isinstance(model_or_class, nn.Module):
        return model_or_class, Check(*what, True, f"收到一个 {type(model_or_class).__name__} 实例。",
                                     f"got an instance of {type(model_or_class).__name__}.")
    if not callable(model_or_class):
        return None, Check(*what, False, f"收到的是 {type(model_or_class).__name__}。",
                           f"got {type(model_or_class).__name__}.",
                           "传入你的 UNet 类（如 MyUNet）或它的实例（nn.Module）。",
                           "Pass your UNet class (e.g. MyUNet) or an instance of it (an nn.Module).")
    name = getattr(model_or_class, "__name__", type(model_or_class).__name__)
    attempts = [dict(in_channels=4, out_channels=4, base_channels=base_channels), dict(in_channels=4, out_channels=4)]
    error = None
    for kwargs in attempts:
        try:
            model = model_or_class(**kwargs)
        except TypeError as exc:
            error = exc
            continue
        except Exception as exc:  # the learner's __init__ may raise anything
            error = exc
            break
        if not isinstance(model, nn.Module):
            return None, Check(*what, False, f"{name}(...) 返回了 {type(model).__name__}，不是 nn.Module。",
                               f"{name}(...) returned {type(model).__name__}, not an nn.Module.",
                               "让你的类继承 nn.Module，并在 __init__ 里调用 super().__init__()。",
                               "Make your class subclass nn.Module and call super().__init__() in __init__.")
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        return model, Check(*what, True, f"{name}({args}) 构建成功。", f"{name}({args}) built.")
    detail = describe_exception(error)
    hint_zh = "构造函数应接受 in_channels、out_channels（最好还有 base_channels）。"
    hint_en = "The constructor should accept in_channels, out_channels (and preferably base_channels)."
    if "before Module.__init__() call" in str(error):
        hint_zh = "在 __init__ 的第一行调用 super().__init__()，然后再创建子模块。"
        hint_en = "Call super().__init__() on the first line of __init__, before creating any submodule."
    elif "divisible by num_groups" in str(error):
        hint_zh = "GroupNorm 要求通道数能被组数整除：GroupNorm(8, 4) 不行。这正是学习笔记 003 代码的第一个错误。"
        hint_en = "GroupNorm's group count must divide the channel count: GroupNorm(8, 4) fails. That is the first bug of study note 003's code."
    return None, Check(*what, False, detail, detail, hint_zh, hint_en)


def _forward_failure(model, x, timestep, exc) -> Check:
    """A failed check for a forward that raised, naming the module where it failed."""
    detail_zh = detail_en = describe_exception(exc)
    if isinstance(exc, NotImplementedError):
        # the notebook's stub: forward raises NotImplementedError
        return Check("前向传播", "forward pass", False, detail_zh, detail_en,
                     "forward 还没写完：把 raise NotImplementedError 换成你的实现。",
                     "forward is not written yet: replace raise NotImplementedError with your code.", stub=True)
    hint_zh = "用 unetlab.trace_shapes(model, x, t) 看每一层的形状，找到第一个对不上的地方。"
    hint_en = "Run unetlab.trace_shapes(model, x, t) to see every layer's shapes and find the first that does not fit."
    try:
        trace = trace_shapes(model, x, timestep)
    except Exception:  # tracing is a courtesy; never let it raise
        trace = None
    if trace is not None and trace.failed_module:
        row = next(r for r in trace if r.path == trace.failed_module and r.status == "failed")
        detail_zh = f"在 {row.path}（{row.cls}）出错，输入 {row.inputs}：{describe_exception(exc)}"
        detail_en = f"failed in {row.path} ({row.cls}) with input {row.inputs}: {describe_exception(exc)}"
        if isinstance(exc, RuntimeError) and ("channels" in str(exc) or "size" in str(exc)):
            hint_zh += "torch.cat 之后的通道数是两者之和：ResBlock 的输入通道要按“上采样通道 + 跳跃连接通道”来建。"
            hint_en += " After torch.cat the channel count is the sum of both: build the ResBlock for up-path + skip channels."
    return Check("前向传播", "forward pass", False, detail_zh, detail_en, hint_zh, hint_en)


def _shape_check(model, batch: int, height: int, width: int) -> Check:
    x = torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(batch * 1000 + height))
    timestep = torch.arange(batch) * 100 + 7
    want = (batch, 4, height, width)
    what = (f"输出形状，输入 {want}", f"output shape for input {want}")
    try:
        with torch.no_grad():
            out = model(x, timestep)
    except Exception as exc:
        check = _forward_failure(model, x, timestep, exc)
        check.what_zh, check.what_en = what
        return check
    if not isinstance(out, torch.Tensor):
        return Check(*what, False, f"forward 返回了 {type(out).__name__}。", f"forward returned {type(out).__name__}.",
                     "forward 应返回一个张量 (B, out_channels, H, W)。", "forward should return one tensor (B, out_channels, H, W).")
    got = tuple(out.shape)
    if got == want:
        return Check(*what, True, f"得到 {got}。", f"got {got}.")
    if len(got) == 4 and got[1] != 4 and got[2:] == want[2:]:
        hint = ("最后的卷积（out）要把通道数变回 out_channels = 4。", "The final conv (out) must map back to out_channels = 4.")
    elif len(got) == 4 and got[2:] != want[2:]:
        hint = ("每一次下采样（H/2）都要有一次上采样（×2）把尺寸还原。",
                "Every downsampling (H/2) needs an upsampling (×2) that restores the size.")
    else:
        hint = ("输出应与输入同形状：(B, 4, H, W)。", "The output should have the input's shape: (B, 4, H, W).")
    return Check(*what, False, f"期望 {want}，得到 {got}。", f"expected {want}, got {got}.", *hint)


def _time_check(model) -> Check:
    what = ("时间步会改变输出", "the timestep changes the output")
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        early = model(x, torch.tensor([1, 1]))
        late = model(x, torch.tensor([900, 900]))
    diff = (early - late).abs().max().item()
    if diff > 1e-6:
        return Check(*what, True, "t=1 与 t=900 的输出不同。", "the outputs at t=1 and t=900 differ.")
    return Check(*what, False, "t=1 与 t=900 的输出完全相同：模型没有用到时间步。",
                 "the outputs at t=1 and t=900 are identical: the model ignores the timestep.",
                 "把时间步嵌入成向量（time_embed），在每个 ResBlock 里投影到通道数，变形为 (B, C, 1, 1) 加到特征图上。",
                 "Embed the timestep (time_embed), project it to the channel count in every ResBlock, reshape it to "
                 "(B, C, 1, 1) and add it to the feature map.")


def _down_check(model) -> Check:
    what = ("U 形：下采样路径至少把 H、W 减半两次", "U shape: the down path halves H and W at least twice")
    lowest = _lowest_resolution(model, torch.randn(2, 4, 32, 32), torch.tensor([10, 500]))
    if lowest is not None and lowest[0] <= 8 and lowest[1] <= 8:
        return Check(*what, True, f"32×32 的输入最低到 {lowest[0]}×{lowest[1]}。",
                     f"a 32×32 input goes down to {lowest[0]}×{lowest[1]}.")
    got = "32×32" if lowest is None else f"{lowest[0]}×{lowest[1]}"
    return Check(*what, False, f"32×32 的输入最低只到 {got}。", f"a 32×32 input only goes down to {got}.",
                 "编码器用 stride=2 的卷积下采样（如 DownBlock），解码器用 ConvTranspose2d 上采样回来。",
                 "Downsample in the encoder with stride-2 convs (as in DownBlock), upsample back with ConvTranspose2d.")


def _skip_check(model) -> Check:
    what = ("跳跃连接", "skip connections")
    if has_skip_connections(model):
        return Check(*what, True, "把最低分辨率的特征全部置零后，输出仍依赖输入：信息经由跳跃连接到达了解码器。",
                     "with every lowest-resolution feature zeroed the output still depends on the input: "
                     "information reaches the decoder through skip connections.")
    return Check(*what, False, "把最低分辨率的特征全部置零后，输出不再依赖输入：解码器只能从瓶颈层得到信息。",
                 "with every lowest-resolution feature zeroed the output no longer depends on the input: "
                 "the decoder only gets information through the bottleneck.",
                 "在编码器里保存每个分辨率的特征（skip），在解码器的同一分辨率用 torch.cat([h, skip], dim=1) 拼接。",
                 "Keep each resolution's encoder features (the skip) and concatenate them in the decoder at the same "
                 "resolution: torch.cat([h, skip], dim=1).")


@exercise(1, "1.1", "UNet 形状检查", "UNet shape check")
def check_unet_shapes(model_or_class, base_channels: int = 16) -> Feedback:
    """Check a learner's UNet: builds, right output shapes, uses the timestep, goes down, has skips.

    ``model_or_class``: a class or factory (called as ``(in_channels=4, out_channels=4,
    base_channels=base_channels)``, or without ``base_channels`` if it does not take one), or an
    ``nn.Module`` instance. The model is called as ``model(x, timestep)`` with ``x`` of shape
    ``(B, 4, H, W)`` and ``timestep`` of shape ``(B,)``. Runs in eval mode, without gradients.
    A forward that raises ``NotImplementedError`` (the notebook's stub) is "not attempted yet".
    """
    fb = Feedback("UNet 形状检查", "UNet shape check")
    model, check = _build(model_or_class, base_channels)
    fb.add(check)
    if model is None:
        return fb
    was_training = model.training
    model.eval()
    try:
        shape_checks = []
        for b, h, w in ((2, 32, 32), (1, 64, 64), (3, 32, 48)):
            shape_checks.append(fb.add(_shape_check(model, b, h, w)))
            if not shape_checks[-1].passed:
                break  # one failure says enough; the same error would repeat
        if not all(c.passed for c in shape_checks):
            fb.add(Check("其余检查", "remaining checks", False, "形状正确之后再检查时间条件和跳跃连接。",
                         "time conditioning and skip connections are checked once the shapes are right."))
            return fb
        for step in (_time_check, _down_check, _skip_check):
            try:
                fb.add(step(model))
            except Exception as exc:
                fb.add(Check(f"检查 {step.__name__} 时出错", f"error while running {step.__name__}", False,
                             describe_exception(exc), describe_exception(exc),
                             "先单独运行 model(x, t)，确认它不报错。", "Run model(x, t) on its own first and make sure it does not raise."))
    finally:
        model.train(was_training)
    return fb


# ---------------------------------------------------------------------------------------------
# check_layer_shapes
# ---------------------------------------------------------------------------------------------
@exercise(1, "1.2", "逐层形状预测", "layer shape predictions")
def check_layer_shapes(predictions) -> Feedback:
    """Check predicted shapes at ``SHAPE_POINTS`` of ``SimpleUNet(base_channels=64)`` for ``x`` of shape ``(2, 4, 64, 64)``.

    ``predictions``: a dict ``{point: shape}``, shapes as tuples of ints, e.g.
    ``{"time_embed output": (2, 256), ...}``. Every point there with a blank value (the notebook's
    stub ``{point: None for point in SHAPE_POINTS}``) is "not attempted yet".
    """
    fb = Feedback("逐层形状预测", "layer shape predictions")
    if not isinstance(predictions, Mapping):
        fb.add(Check("答案是字典", "the answer is a dict", False, f"收到 {type(predictions).__name__}。",
                     f"got {type(predictions).__name__}.",
                     "写成 {\"time_embed output\": (2, 256), ...}，键取自 SHAPE_POINTS。",
                     "Write {\"time_embed output\": (2, 256), ...} with the keys of SHAPE_POINTS."))
        return fb
    truth = layer_shape_truth()
    keys = key_check(predictions, SHAPE_POINTS, ("每个位置都有预测", "a prediction for every point"),
                     ("键必须与 SHAPE_POINTS 完全一致。", "The keys must be exactly those of SHAPE_POINTS."))
    unanswered = [p for p in SHAPE_POINTS if p in predictions and predictions[p] is None]
    if keys.passed and is_blank(predictions):
        # the notebook's stub: every point there, none filled in
        fb.add(Check("还没填的预测", "predictions not filled in", False, f"{len(SHAPE_POINTS)} 个都还是空的。",
                     f"all {len(SHAPE_POINTS)} are still empty.", "把每个 None 换成一个整数元组，如 (2, 64, 32, 32)。",
                     "Replace each None with a tuple of ints, e.g. (2, 64, 32, 32).", stub=True))
        return fb
    fb.add(keys)
    if unanswered:
        fb.add(Check("还没填的预测", "predictions not filled in", False, f"{len(unanswered)} 个：{unanswered}",
                     f"{len(unanswered)}: {unanswered}", "把每个 None 换成一个整数元组，如 (2, 64, 32, 32)。",
                     "Replace each None with a tuple of ints, e.g. (2, 64, 32, 32)."))
    for point in SHAPE_POINTS:
        if point not in predictions or predictions[point] is None:
            continue
        want = truth[point]
        got = as_shape(predictions[point])
        what = (f"{point}", f"{point}")
        if got is None:
            fb.add(Check(*what, False, f"不是整数元组：{predictions[point]!r}", f"not a tuple of ints: {predictions[point]!r}",
                         "形状写成整数元组，如 (2, 64, 32, 32)。", "Write a shape as a tuple of ints, e.g. (2, 64, 32, 32)."))
        elif got == want:
            fb.add(Check(*what, True))
        else:
            hint = (f"从输入 {SHAPE_INPUT} 一层层推：stride=2 的卷积把 H、W 减半，ConvTranspose2d(4, stride=2, padding=1) 加倍。",
                    f"Work layer by layer from {SHAPE_INPUT}: a stride-2 conv halves H and W, "
                    "ConvTranspose2d(4, stride=2, padding=1) doubles them.")
            if point.endswith("res input") and len(got) == 4 and len(want) == 4 and got[1] != want[1]:
                hint = ("ResBlock 的输入是上采样结果与跳跃连接的拼接：通道数是两者之和（学习笔记 003 的代码在 up1 正是错在这里）。",
                        "The ResBlock's input is the upsampled features concatenated with the skip: the channels add up "
                        "(exactly what study note 003's up1 got wrong).")
            elif point == "time_embed output":
                hint = ("TimeEmbedding(64) 的 MLP 输出 4 × 64 维。", "TimeEmbedding(64)'s MLP outputs 4 × 64 features.")
            fb.add(Check(*what, False, f"你的预测 {got}，不对。", f"your prediction {got} is not right.", *hint))
    return fb


# ---------------------------------------------------------------------------------------------
# check_param_shares
# ---------------------------------------------------------------------------------------------
@exercise(1, "1.3", "参数量占比", "parameter shares")
def check_param_shares(answer, base_channels: int = 64, use_skips: bool = True) -> Feedback:
    """Check the share of ``SimpleUNet(base_channels=64)``'s parameters in each part.

    ``answer``: a dict ``{part: fraction}`` with the keys of ``PARTS`` (``time_embed``, ``down1``,
    ``down2``, ``bottleneck``, ``up1``, ``up2``, ``out``) and fractions that sum to 1.
    Each share must be within 0.005 of the truth. A blank dict (the notebook's stub ``{}``, or
    every value ``None``) is "not attempted yet".
    """
    fb = Feedback("参数量占比", "parameter shares")
    if not isinstance(answer, Mapping):
        fb.add(Check("答案是字典", "the answer is a dict", False, f"收到 {type(answer).__name__}。", f"got {type(answer).__name__}.",
                     "写成 {\"time_embed\": 占比, \"down1\": 占比, ...}。", "Write {\"time_embed\": share, \"down1\": share, ...}."))
        return fb
    parts_hint = (f"部分的名字就是 model.named_children() 的名字：{list(PARTS)}。",
                  f"The parts are the names in model.named_children(): {list(PARTS)}.")
    if is_blank(answer):
        # the notebook's stub: shares = {}
        fb.add(Check("每个部分都有", "every part is there", False, "还是空的。", "still empty.",
                     f"为每个部分填一个占比：{{\"time_embed\": 占比, ...}}；{parts_hint[0]}",
                     f"Fill in one share per part: {{\"time_embed\": share, ...}}. {parts_hint[1]}", stub=True))
        return fb
    missing = [p for p in PARTS if p not in answer]
    fb.add(key_check(answer, PARTS, ("每个部分都有", "every part is there"), parts_hint))
    values = {k: as_number(answer[k]) for k in PARTS if k in answer}
    bad = [k for k, v in values.items() if v is None]
    if bad:
        fb.add(Check("占比是数字", "the shares are numbers", False, f"这些不是数字：{bad}", f"not numbers: {bad}",
                     "每个值是一个 0 到 1 之间的小数。", "Each value is a fraction between 0 and 1."))
        return fb
    if missing:
        return fb
    truth = param_share_truth(base_channels, use_skips)
    total_params = sum(p.numel() for p in _meta_model(base_channels, use_skips).parameters())
    total = sum(values.values())
    sums_to_one = abs(total - 1) < 0.01
    if sums_to_one:
        fb.add(Check("占比之和为 1", "the shares sum to 1", True, f"和为 {total:.4f}。", f"they sum to {total:.4f}."))
    else:
        hint = ("占比 = 该部分参数量 / 总参数量，所有部分加起来是 1。",
                "share = the part's parameter count / the total count; all parts add up to 1.")
        if abs(total - total_params) / total_params < 0.01:
            hint = ("你给的是参数个数，不是占比：再除以总参数量。", "You gave counts, not shares: divide by the total count.")
        elif abs(total - 100) < 1:
            hint = ("你给的是百分数：再除以 100。", "You gave percentages: divide by 100.")
        fb.add(Check("占比之和为 1", "the shares sum to 1", False, f"和为 {total:.4g}。", f"they sum to {total:.4g}.", *hint))
        return fb
    off = [k for k in PARTS if abs(values[k] - truth[k]) > _TOLERANCE]
    if not off:
        fb.add(Check("每个部分的占比", "each part's share", True, f"全部在 ±{_TOLERANCE} 以内。", f"all within ±{_TOLERANCE}."))
        return fb
    hint = ("用 sum(p.numel() for p in model.up1.parameters()) 数一个部分，再除以 sum(p.numel() for p in model.parameters())。",
            "Count a part with sum(p.numel() for p in model.up1.parameters()) and divide by "
            "sum(p.numel() for p in model.parameters()).")
    for shares, hint_zh, hint_en in _typical_wrong_shares(base_channels, use_skips):
        if all(abs(values[k] - shares[k]) <= _TOLERANCE for k in PARTS):
            hint = (hint_zh, hint_en)
            break
    detail = ", ".join(f"{k}={values[k]:.3f}" for k in off)
    fb.add(Check("每个部分的占比", "each part's share", False, f"这些部分不对（误差超过 {_TOLERANCE}）：{detail}",
                 f"these parts are off by more than {_TOLERANCE}: {detail}", *hint))
    return fb
