"""Chapter 1 homework: study note 003's exercises "implement a UNet and verify each layer's shapes"
and "parameter-count analysis".

Three checkers, each answering in 中文 and English (what passed, what failed, a hint) and
never raising because of the learner's answer:

* ``check_unet_shapes(MyUNet)``: a UNet class (built as ``MyUNet(in_channels=4,
  out_channels=4, base_channels=16)``), a factory, or an instance. Checked: it builds; it maps
  ``(B, 4, H, W)`` and a ``(B,)`` timestep to ``(B, 4, H, W)`` for several batches and sizes;
  the timestep changes the output; the down path halves H and W at least twice; and it has
  skip connections (see :func:`has_skip_connections`).
* ``check_own_trace(MyUNet, predictions)``: study note 003's "verify each layer's shapes" on
  the learner's *own* UNet: before running it, the learner predicts the output shape of every
  top-level part of their model for ``x`` of shape ``TRACE_INPUT``; the checker traces the model
  and compares, part by part, with a diagnosis per wrong shape (batch dimension left out, a
  block's other output such as its skip, one halving too many or too few, the input instead of
  the output, a different ``base_channels``).
* ``check_param_scaling(answer)``: each part's parameter count of ``SimpleUNet`` as a quadratic
  ``a·C² + b·C + c`` in ``C = base_channels``: the learner counts at the widths of
  ``SCALING_WIDTHS``, solves for ``a``, and predicts the counts at ``SCALING_TARGET`` without
  building that model. Hints name pure ``C²`` scaling (×16 from 32), linear scaling, and
  dividing a count by ``C²``.

The truth is never typed in: shapes come from :func:`unetlab.trace_shapes` on the meta
device or from the learner's own model, parameter counts from the model itself.
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
    "TRACE_INPUT",
    "SCALING_WIDTHS",
    "SCALING_TARGET",
    "has_skip_connections",
    "own_trace_truth",
    "param_counts",
    "param_polynomial",
    "check_unet_shapes",
    "check_own_trace",
    "check_param_scaling",
]

#: the parts of SimpleUNet, as in ``model.named_children()``
PARTS = ("time_embed", "down1", "down2", "bottleneck", "up1", "up2", "out")

#: the shape of ``x`` the learner traces their own UNet with (timestep: shape (2,))
TRACE_INPUT = (2, 4, 64, 64)

#: the widths (``base_channels``) the learner may build and count in exercise 1.3 ...
SCALING_WIDTHS = (16, 32, 64)
#: ... and the width whose counts they predict without building it
SCALING_TARGET = 128


# ---------------------------------------------------------------------------------------------
# The truth
# ---------------------------------------------------------------------------------------------
def _meta_model(base_channels: int, use_skips: bool = True) -> SimpleUNet:
    with torch.device("meta"):
        return SimpleUNet(in_channels=4, out_channels=4, base_channels=base_channels, use_skips=use_skips)


def param_counts(base_channels: int) -> dict[str, int]:
    """Parameters of each part of ``SimpleUNet(4, 4, base_channels)`` (built on the meta device): ``{part: count}``."""
    return dict(_param_counts(int(base_channels)))


@lru_cache(maxsize=16)
def _param_counts(base_channels: int) -> tuple[tuple[str, int], ...]:
    model = _meta_model(base_channels)
    return tuple((name, sum(p.numel() for p in child.parameters())) for name, child in model.named_children())


def param_polynomial() -> dict[str, tuple[int, int, int]]:
    """Each part's parameter count as ``a·C² + b·C + c`` in ``C = base_channels``: ``{part: (a, b, c)}``.

    Solved exactly from the counts at the three widths of ``SCALING_WIDTHS`` (integer arithmetic,
    Lagrange form) and verified at ``SCALING_TARGET``: every layer of SimpleUNet has
    ``C_in·C_out·k² + C_out`` weights with ``C_in``, ``C_out`` each a multiple of C or fixed, so
    every count is a quadratic in C. Raises ``RuntimeError`` if the check at the target fails.
    """
    c1, c2, c3 = SCALING_WIDTHS
    counts = [param_counts(c) for c in SCALING_WIDTHS]
    out = {}
    for part in PARTS:
        y1, y2, y3 = (n[part] for n in counts)
        # divided differences: a = ((y3 - y2)/(c3 - c2) - (y2 - y1)/(c2 - c1)) / (c3 - c1)
        d1, d2 = (y2 - y1) / (c2 - c1), (y3 - y2) / (c3 - c2)
        a = (d2 - d1) / (c3 - c1)
        b = d1 - a * (c1 + c2)
        c = y1 - a * c1 * c1 - b * c1
        a, b, c = round(a), round(b), round(c)
        if a * SCALING_TARGET ** 2 + b * SCALING_TARGET + c != param_counts(SCALING_TARGET)[part]:
            raise RuntimeError(f"{part}'s parameter count is not a quadratic in base_channels")
        out[part] = (a, b, c)
    return out


def own_trace_truth(model: nn.Module) -> dict[str, tuple[tuple[int, ...], list[tuple[int, ...]], list[tuple[int, ...]]]]:
    """What tracing ``model`` on a ``TRACE_INPUT`` batch (timesteps ``[10, 500]``) gives for every submodule.

    ``{path: (first output shape, every output shape, every input shape)}``, first call of each
    module; paths with no tensor output are left out. Raises what the model's forward raises.
    """
    x = torch.randn(*TRACE_INPUT, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([10, 500])
    with torch.no_grad():
        trace = trace_shapes(model, x, timestep, raise_errors=True)
    truth = {}
    for row in trace:
        if row.path and row.path not in truth and row.output_shapes:
            truth[row.path] = (tuple(row.output_shapes[0]), [tuple(s) for s in row.output_shapes],
                               [tuple(s) for s in row.input_shapes])
    return truth

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
    """True if information reaches the decoder without passing through the lowest resolution.

    Every tensor at the lowest resolution, going into or coming out of any submodule, is
    replaced by zeros. Without skip connections everything the decoder knows about ``x`` went
    through that resolution, so nothing it computes depends on ``x`` any more; with skips it
    still does. "The decoder" = the submodules called after the last one whose output is at the
    lowest resolution; their 4-D inputs are compared for two different ``x``. The model's input
    tensor itself does not count: a global residual (``out(h) + x``, or a 1×1 conv of ``x`` added
    at the end) bypasses the U without being a skip connection. Catches concatenated and added
    skips alike.
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

    def run(x: torch.Tensor) -> tuple[list, int]:
        inputs: list[list[torch.Tensor]] = []  # per call, in call order: its 4-D inputs (not x itself)
        last_lowest = [-1]
        handles = []

        def pre(module, args, kwargs):
            args, kwargs = _map_tensors(args, zero_lowest), _map_tensors(kwargs, zero_lowest)
            found: list[torch.Tensor] = []
            _map_tensors((args, kwargs), lambda t: found.append(t) if t.ndim == 4 and t is not x else t)
            module._skip_test_call = len(inputs)
            inputs.append([t.detach().clone() for t in found])
            return args, kwargs

        def post(module, args, out):
            out = _map_tensors(out, zero_lowest)
            sizes: list[tuple] = []
            _map_tensors(out, lambda t: sizes.append(tuple(t.shape[-2:])) if t.ndim == 4 else t)
            if lowest in sizes:
                last_lowest[0] = max(last_lowest[0], module._skip_test_call)
            return out

        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post))
        try:
            with torch.no_grad():
                model(x, timestep)
        finally:
            for handle in handles:
                handle.remove()
            for module in model.modules():
                module.__dict__.pop("_skip_test_call", None)
        return inputs, last_lowest[0]

    inputs1, last1 = run(x1)
    inputs2, _ = run(x2)
    for call in range(last1 + 1, min(len(inputs1), len(inputs2))):
        for a, b in zip(inputs1[call], inputs2[call]):
            if a.shape == b.shape:
                scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
                if (a - b).abs().max().item() > 1e-5 * scale:
                    return True
    return False


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
# check_own_trace
# ---------------------------------------------------------------------------------------------
def _top_parts(model: nn.Module, truth: dict) -> list[str]:
    """The model's direct children that the forward pass called (in call order)."""
    children = {name for name, _ in model.named_children()}
    return [path for path in truth if path in children]


def _diagnose_shape(path: str, got: tuple, want: tuple, outputs: list, inputs: list,
                    base_channels: int) -> tuple[str, str]:
    """A hint (zh, en) for a wrong predicted shape of ``path``."""
    b = TRACE_INPUT[0]
    if len(got) == len(want) - 1 and got == want[1:]:
        return ("少了批维度：形状的第一个数是批大小 B = 2。", f"The batch dimension is missing: a shape starts with the batch size B = {b}.")
    if got in outputs[1:]:
        k = outputs.index(got)
        return (f"{path} 返回 {len(outputs)} 个张量，你写的是第 {k + 1} 个（例如下采样块留给解码器的跳跃连接）；这里要第一个输出。",
                f"{path} returns {len(outputs)} tensors and you gave output number {k + 1} (e.g. a down block's skip, kept "
                "for the decoder); the exercise asks for the first output.")
    if inputs and got == inputs[0] and got != want:
        return ("这是该模块的输入形状，不是输出。", "That is the module's input shape, not its output.")
    if len(got) == len(want) == 4 and got[:2] == want[:2] and got[2:] != want[2:] and want[2] and got[2]:
        ratio = got[2] / want[2]
        if ratio in (2.0, 4.0, 0.5, 0.25):
            more = ratio < 1
            return (f"通道对了，H、W 差了 {max(ratio, 1 / ratio):g} 倍：数一数到 {path} 为止经过了几次 stride=2 的下采样和几次上采样"
                    f"（你{'多' if more else '少'}算了减半）。",
                    f"The channels are right but H and W are off by {max(ratio, 1 / ratio):g}x: count the stride-2 "
                    f"downsamplings and the upsamplings before {path} (you counted {'too many' if more else 'too few'} halvings).")
    if len(got) == len(want) >= 2 and got[0] == want[0] and got[2:] == want[2:] and got[1] != want[1]:
        if want[1] % base_channels == 0 and got[1] % 64 == 0 and got[1] // 64 == want[1] // base_channels:
            return (f"检查器用 base_channels={base_channels} 构建你的模型，不是 64。",
                    f"The checker builds your model with base_channels={base_channels}, not 64.")
        return (f"H、W 对了，通道数不对：看 {path} 在你的 __init__ 里的 out_channels（base_channels = {base_channels}）；"
                "跳跃连接拼接后通道数是两者之和，但块的输出通道是它自己的 out_channels。",
                f"H and W are right, the channels are not: look up {path}'s out_channels in your __init__ (base_channels = "
                f"{base_channels}); a concatenation adds up channels, but a block outputs its own out_channels.")
    return ("从输入 (2, 4, 64, 64) 开始，沿你的 forward 一步一步推：stride=2 的卷积把 H、W 减半，转置卷积加倍，卷积的输出通道就是它的 out_channels。",
            "Start from the input (2, 4, 64, 64) and follow your forward step by step: a stride-2 conv halves H and W, a "
            "transposed conv doubles them, a conv outputs its out_channels.")


@exercise(1, "1.2", "追踪你自己的 UNet", "trace your own UNet")
def check_own_trace(model_or_class, predictions, base_channels: int = 16) -> Feedback:
    """Check the learner's predicted shapes at every top-level part of their own UNet.

    ``model_or_class``: the learner's UNet class (built as ``(in_channels=4, out_channels=4,
    base_channels=base_channels)``), a factory, or an ``nn.Module``. ``predictions``: ``{path:
    shape}`` with a tuple of ints per path, predicted for ``x`` of shape ``TRACE_INPUT`` and a
    ``(2,)`` timestep. Every direct child the forward pass calls (``model.named_children()``)
    must be there, shape = its *first* output (a down block returns ``(h, skip)``: ``h``); deeper
    paths (``"down1.res"``) may be added. The truth is :func:`unetlab.trace_shapes` on the model.
    "Not attempted yet": the model's forward still raises ``NotImplementedError``, or every
    prediction is blank (the notebook's stub ``{}``).
    """
    fb = Feedback("追踪你自己的 UNet", "trace your own UNet")
    model, check = _build(model_or_class, base_channels)
    if model is None:
        fb.add(check)
        return fb
    was_training = model.training
    model.eval()
    try:
        try:
            truth = own_trace_truth(model)
        except NotImplementedError as exc:
            fb.add(Check("你的 UNet 能前向传播", "your UNet runs forward", False, describe_exception(exc), describe_exception(exc),
                         "先完成练习 1.1：forward 里还是 raise NotImplementedError。",
                         "Do exercise 1.1 first: forward still raises NotImplementedError.", stub=True))
            return fb
        except Exception as exc:
            fb.add(_forward_failure(model, torch.randn(*TRACE_INPUT), torch.tensor([10, 500]), exc))
            return fb
    finally:
        model.train(was_training)
    parts = _top_parts(model, truth)
    what_dict = ("答案是字典 {路径: 形状}", "the answer is a dict {path: shape}")
    if not isinstance(predictions, Mapping):
        fb.add(Check(*what_dict, False, f"收到 {type(predictions).__name__}。", f"got {type(predictions).__name__}.",
                     "写成 {\"down1\": (2, 16, 32, 32), ...}，键是 model.named_children() 的名字。",
                     "Write {\"down1\": (2, 16, 32, 32), ...}, keyed by the names of model.named_children()."))
        return fb
    if is_blank(predictions):
        fb.add(Check("每个部分都有预测", "a prediction for every part", False, "还是空的。", "still empty.",
                     f"先别运行模型：在纸上沿 forward 推出每个部分的输出形状，填进字典。要预测的部分：{parts}",
                     f"Do not run the model yet: follow your forward on paper and fill in each part's output shape. "
                     f"The parts to predict: {parts}", stub=True))
        return fb
    missing = [p for p in parts if p not in predictions]
    unknown = [str(p) for p in predictions if (str(p)[:-6] if str(p).endswith(" input") else p) not in truth]
    if missing or unknown:
        hint = (f"要预测的部分（按调用顺序）：{parts}；更深的路径（如 down1.res）也可以加。",
                f"The parts to predict (in call order): {parts}; deeper paths (e.g. down1.res) may be added.")
        fb.add(Check("每个部分都有预测", "a prediction for every part", False,
                     (f"缺少 {missing}" if missing else "") + (f" 模型里没有 {unknown}" if unknown else ""),
                     (f"missing {missing}" if missing else "") + (f" not in the model: {unknown}" if unknown else ""), *hint))
    else:
        fb.add(Check("每个部分都有预测", "a prediction for every part", True, f"{len(parts)} 个部分。", f"{len(parts)} parts."))
    for point, value in predictions.items():
        path = str(point)
        use_input = path.endswith(" input")
        if use_input:
            path = path[:-6]
        if path not in truth:
            continue
        first, outputs, inputs = truth[path]
        want = inputs[0] if use_input and inputs else first
        what = (f"{point}", f"{point}")
        got = as_shape(value)
        if value is None:
            fb.add(Check(*what, False, "还没填。", "not filled in.", "填一个整数元组，如 (2, 16, 32, 32)。",
                         "Fill in a tuple of ints, e.g. (2, 16, 32, 32)."))
        elif got is None:
            fb.add(Check(*what, False, f"不是整数元组：{value!r}", f"not a tuple of ints: {value!r}",
                         "形状写成整数元组，如 (2, 16, 32, 32)。", "Write a shape as a tuple of ints, e.g. (2, 16, 32, 32)."))
        elif got == want:
            fb.add(Check(*what, True, f"{got}", f"{got}"))
        else:
            fb.add(Check(*what, False, f"你的预测 {got}，追踪得到的不是它。", f"your prediction {got} is not what the trace shows.",
                         *_diagnose_shape(path, got, want, outputs if not use_input else [want], inputs if not use_input else [],
                                          base_channels)))
    return fb


# ---------------------------------------------------------------------------------------------
# check_param_scaling
# ---------------------------------------------------------------------------------------------
def _scaling_parse(answer, key: str) -> tuple[dict[str, float] | None, Check | None]:
    what = (f"{key}：每个部分一个数", f"{key}: one number per part")
    inner = answer.get(key) if isinstance(answer, Mapping) else None
    if not isinstance(inner, Mapping):
        return None, Check(*what, False, f"answer[{key!r}] 是 {type(inner).__name__}。", f"answer[{key!r}] is {type(inner).__name__}.",
                           f"写成 {{{key!r}: {{\"time_embed\": ..., \"down1\": ..., ...}}}}，键是 {list(PARTS)}。",
                           f"Write {{{key!r}: {{\"time_embed\": ..., \"down1\": ..., ...}}}} keyed by {list(PARTS)}.")
    keys = key_check(inner, PARTS, what, (f"键是 model.named_children() 的名字：{list(PARTS)}。",
                                          f"The keys are the names of model.named_children(): {list(PARTS)}."))
    if not keys.passed:
        return None, keys
    values = {k: as_number(inner[k]) for k in PARTS}
    bad = [k for k, v in values.items() if v is None]
    if bad:
        return None, Check(*what, False, f"这些不是数字：{bad}", f"not numbers: {bad}",
                           "每个值是一个数（整数），不要留 None。", "Each value is one number (an integer); do not leave None.")
    return values, None


@exercise(1, "1.3", "参数量随宽度怎样增长", "how the parameter count grows with width")
def check_param_scaling(answer) -> Feedback:
    """Check ``{"quadratic": {part: a}, "at_128": {part: count}}`` for ``SimpleUNet(4, 4, C)``.

    ``quadratic``: the coefficient ``a`` of ``C²`` in each part's count ``a·C² + b·C + c``
    (``C = base_channels``), exact (it is an integer). ``at_128``: each part's count at
    ``base_channels = SCALING_TARGET``, exact. Parts: ``PARTS``. Both dicts blank (the notebook's
    stub, every value ``None``) is "not attempted yet".
    """
    fb = Feedback("参数量随宽度怎样增长", "how the parameter count grows with width")
    if not isinstance(answer, Mapping) or set(map(str, answer)) - {"quadratic", "at_128"}:
        got = type(answer).__name__ if not isinstance(answer, Mapping) else sorted(map(str, answer))
        fb.add(Check("答案的格式", "the answer's layout", False, f"收到 {got}。", f"got {got}.",
                     "写成 {\"quadratic\": {部分: a}, \"at_128\": {部分: 参数量}}。",
                     "Write {\"quadratic\": {part: a}, \"at_128\": {part: count}}."))
        return fb
    if is_blank(answer):
        fb.add(Check("答案的格式", "the answer's layout", False, "每个值都还是空的。", "every value is still blank.",
                     f"在 base_channels = {list(SCALING_WIDTHS)} 上数每个部分的参数量，解出 a·C² + b·C + c 的 a，"
                     f"再用它（和 b、c）预测 C = {SCALING_TARGET} 的参数量。",
                     f"Count each part at base_channels = {list(SCALING_WIDTHS)}, solve a·C² + b·C + c for a, then use it "
                     f"(with b and c) to predict the counts at C = {SCALING_TARGET}.", stub=True))
        return fb
    poly = param_polynomial()
    counts = {c: param_counts(c) for c in SCALING_WIDTHS}
    target = param_counts(SCALING_TARGET)

    quadratic, problem = _scaling_parse(answer, "quadratic")
    if problem:
        fb.add(problem)
    else:
        off = [k for k in PARTS if abs(quadratic[k] - poly[k][0]) > 1e-6]
        if not off:
            shown = ", ".join(f"{k}: {poly[k][0]}" for k in PARTS)
            fb.add(Check("C² 的系数 a", "the coefficient a of C²", True, shown, shown))
        else:
            k = off[0]
            hint = (f"用三个宽度的参数量列三个方程 a·C² + b·C + c = 参数量，解出 a（例如用差分：先算 (n(32) − n(16))/16 和 "
                    "(n(64) − n(32))/32，再相减除以 48）。",
                    "Write three equations a·C² + b·C + c = count, one per width, and solve for a (e.g. with differences: "
                    "(n(32) − n(16))/16 and (n(64) − n(32))/32, then their difference divided by 48).")
            for c in SCALING_WIDTHS:
                if all(abs(quadratic[p] - counts[c][p] / c ** 2) < 1e-3 * max(1.0, counts[c][p] / c ** 2) for p in PARTS):
                    hint = (f"你把 C = {c} 的参数量直接除以了 C²：这把 b·C 和 c 也算进了 a。偏置、组归一化和输入/输出通道固定的卷积是 C 的一次项。",
                            f"You divided the counts at C = {c} by C²: that folds b·C and c into a. Biases, group norms and "
                            "the convs with a fixed number of input or output channels grow only linearly in C.")
                    break
            detail = ", ".join(f"{p}: {quadratic[p]:g}" for p in off)
            fb.add(Check("C² 的系数 a", "the coefficient a of C²", False, f"这些不对：{detail}", f"these are off: {detail}", *hint))

    at_128, problem = _scaling_parse(answer, "at_128")
    if problem:
        fb.add(problem)
        return fb
    off = [k for k in PARTS if at_128[k] != target[k]]
    if not off:
        ratio = sum(target.values()) / sum(counts[32].values())
        fb.add(Check(f"C = {SCALING_TARGET} 的参数量", f"the counts at C = {SCALING_TARGET}", True,
                     f"总数 {sum(target.values()):,}，是 C = 32 的 {ratio:.2f} 倍（不是正好 16：一次项只涨 4 倍；out 只涨 {target['out'] / counts[32]['out']:.2f} 倍）。",
                     f"total {sum(target.values()):,}, {ratio:.2f}x the count at C = 32 (not exactly 16: the linear terms only "
                     f"grow 4x; out grows {target['out'] / counts[32]['out']:.2f}x)."))
        return fb
    scale = SCALING_TARGET / 32
    hint = (f"n({SCALING_TARGET}) = a·{SCALING_TARGET}² + b·{SCALING_TARGET} + c：先从三个宽度解出每个部分的 a、b、c。",
            f"n({SCALING_TARGET}) = a·{SCALING_TARGET}² + b·{SCALING_TARGET} + c: solve each part's a, b and c from the three widths first.")
    guesses = {
        "pure_quadratic": ({p: counts[32][p] * scale ** 2 for p in PARTS}, {p: counts[64][p] * 4 for p in PARTS}),
        "linear": ({p: counts[32][p] * scale for p in PARTS}, {p: counts[64][p] * 2 for p in PARTS}),
        "only_a": ({p: poly[p][0] * SCALING_TARGET ** 2 for p in PARTS},),
    }
    if any(all(abs(at_128[p] - g[p]) <= 0.5 for p in PARTS) for g in guesses["pure_quadratic"]):
        hint = ("你把每个部分都乘了 (128/32)² = 16：只有 C² 项是这样涨的。偏置、组归一化、以及输入或输出通道固定的卷积（如 out：C → 4）"
                "只随 C 线性增长，所以真实的比值略小于 16，out 只有约 4。",
                "You multiplied every part by (128/32)² = 16: only the C² term grows like that. Biases, group norms and convs "
                "with a fixed number of input or output channels (e.g. out: C → 4) grow linearly in C, so the true ratio is a "
                "little below 16, and about 4 for out.")
    elif any(all(abs(at_128[p] - g[p]) <= 0.5 for p in PARTS) for g in guesses["linear"]):
        hint = ("你按线性增长算了（×4）：一个卷积的权重数是 C_in × C_out × k²，输入和输出通道都随 C 变宽，所以主要项是 C²。",
                "You scaled linearly (×4): a conv has C_in × C_out × k² weights and both C_in and C_out grow with C, so the "
                "leading term is C².")
    elif all(abs(at_128[p] - guesses["only_a"][0][p]) <= 0.5 for p in PARTS):
        hint = ("你只用了 a·C²，丢了 b·C + c。", "You kept only a·C² and dropped b·C + c.")
    detail = ", ".join(f"{p}: {at_128[p]:,.0f}" for p in off)
    fb.add(Check(f"C = {SCALING_TARGET} 的参数量", f"the counts at C = {SCALING_TARGET}", False,
                 f"这些不对：{detail}", f"these are off: {detail}", *hint))
    return fb
