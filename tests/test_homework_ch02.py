"""Chapter 2 homework checkers: the truth they use, reference answers, typical mistakes, odd input.

The truth is checked against an independent implementation (diffusers' UNet2DConditionModel on
the meta device); reference answers derived from the config must pass; each typical mistake must
fail with the hint that names it; no answer, however odd, may make a checker raise.
"""
import warnings

import pytest
import torch

from unetlab.configs import SD15, SDXL, TINY
from unetlab.homework import ch02
from unetlab.homework.ch02 import (
    SD_SHAPE_LATENT,
    SD_SHAPE_POINTS,
    SD21_KEYS,
    check_sd21_params,
    context_params_truth,
    sd21_difference,
    check_shape_predictions,
    check_skip_channels,
    sd_shape_truth,
    skip_channel_truth,
)
from unetlab.tracing import trace_shapes

warnings.filterwarnings("ignore", message="IProgress not found")


def _diffusers_meta(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config.to_diffusers())


def _hints(feedback) -> str:
    return " ".join(c.hint_en for c in feedback.failed())


# ---- reference answers, derived from the config (as in the solutions notebook) ------------------
def reference_sd21_answer():
    return {"grew": {"attn2.to_k", "attn2.to_v"}, "reshaped": {"proj_in", "proj_out"}, "heads_change_count": False}


def reference_extra_params(config, width):
    """The solutions notebook's formula: Σ over every BasicTransformerBlock of 2 · C · (width − context)."""
    C, depth, n = config.block_out_channels, config.transformer_layers_per_block, config.layers_per_block
    total = sum(n * depth[i] * C[i] for i, kind in enumerate(config.down_block_types) if kind.startswith("CrossAttn"))
    if config.mid_block_type == "UNetMidBlock2DCrossAttn":
        total += depth[-1] * C[-1]
    for i, kind in enumerate(config.up_block_types):
        if kind.startswith("CrossAttn"):
            total += (n + 1) * depth[len(C) - 1 - i] * C[len(C) - 1 - i]
    return 2 * total * (width - config.cross_attention_dim)


def reference_predictions(size=SD_SHAPE_LATENT):
    c = SD15.block_out_channels
    s = [size // 2**i for i in range(len(c))]
    return {
        "conv_in output": (1, c[0], size, size),
        "time_emb": (1, 4 * c[0]),
        "down_blocks.0 output": (1, c[0], s[1], s[1]),
        "down_blocks.1 output": (1, c[1], s[2], s[2]),
        "down_blocks.3 output": (1, c[3], s[3], s[3]),
        "mid_block output": (1, c[3], s[3], s[3]),
        "up_blocks.0.resnets.0 input": (1, 2 * c[3], s[3], s[3]),
        "up_blocks.1.resnets.2 input": (1, c[2] + c[1], s[2], s[2]),
        "up_blocks.2.resnets.0 input": (1, c[2] + c[1], s[1], s[1]),
        "up_blocks.3 output": (1, c[0], size, size),
        "conv_out output": (1, SD15.out_channels, size, size),
    }


def reference_skip_channels(config):
    widths, layers = config.block_out_channels, config.layers_per_block
    stack = [widths[0]]
    for i, w in enumerate(widths):
        stack += [w] * (layers + (i < len(widths) - 1))
    result, h = [], widths[-1]
    for w in reversed(widths):
        block = []
        for _ in range(layers + 1):
            block.append((h, stack.pop()))
            h = w
        result.append(block)
    return result


def seed000_style(config):
    """Study note 000's simplification: every ResNet concatenates two tensors of the same width."""
    return [[(h, h) for h, _ in block] for block in reference_skip_channels(config)]


# ---- the truth ------------------------------------------------------------------------------
@pytest.mark.slow
def test_shape_truth_equals_diffusers_trace():
    model = _diffusers_meta(SD15)
    with torch.device("meta"):
        sample = torch.empty(1, 4, SD_SHAPE_LATENT, SD_SHAPE_LATENT)
        context = torch.empty(1, 77, SD15.cross_attention_dim)
    trace = trace_shapes(model, sample, torch.tensor([500], device="meta"), encoder_hidden_states=context,
                         raise_errors=True)
    truth = sd_shape_truth()
    assert set(truth) == set(SD_SHAPE_POINTS)
    for point, shape in truth.items():
        module, where = ch02._parse_point(point)
        row = trace.find(module)[0]
        expected = row.input_shapes[0] if where == "input" else row.output_shapes[0]
        assert shape == tuple(expected), point
    # the points that teach something
    assert truth["time_emb"] == (1, 1280)
    assert truth["up_blocks.1.resnets.2 input"] == (1, 1920, 24, 24)


@pytest.mark.slow
@pytest.mark.parametrize("config", [SD15, SDXL, TINY, TINY.replace(layers_per_block=1)], ids=lambda c: c.name)
def test_skip_channel_truth_matches_diffusers_resnet_widths(config):
    truth = skip_channel_truth(config)
    model = _diffusers_meta(config)
    assert len(truth) == len(model.up_blocks)
    for block, pairs in zip(model.up_blocks, truth):
        # a diffusers up-block ResNet is built for exactly the concatenated width
        assert [r.conv1.in_channels for r in block.resnets] == [h + s for h, s in pairs]
    assert truth == reference_skip_channels(config)


def test_sd_shape_truth_rejects_bad_sizes():
    for size in (0, 12, 96.0, True):
        with pytest.raises(ValueError, match="multiple of 8"):
            sd_shape_truth(size)
    with pytest.raises(ValueError, match="unknown point"):
        sd_shape_truth(points=("down_blocks.9 output",))


def test_point_names_accept_a_space_before_the_submodule():
    assert ch02._parse_point("up_blocks.2 resnets.0 input") == ("up_blocks.2.resnets.0", "input")
    assert ch02._parse_point("  mid_block   output ") == ("mid_block", "output")
    assert ch02._parse_point("time_emb") == ("time_embedding", "output")
    assert ch02._parse_point("mid_block") == (None, None)
    assert ch02._parse_point(3) == (None, None)


# ---- exercise 2.A ---------------------------------------------------------------------------
def test_sd21_truth_is_the_parameter_diff_of_diffusers_models():
    # independent of unetlab's SDUNet: diffusers' UNet2DConditionModel of both configs, on the meta device
    from unetlab.configs import SD21

    d15, d21 = _diffusers_meta(SD15), _diffusers_meta(SD21)
    n15 = sum(p.numel() for p in d15.parameters())
    n21 = sum(p.numel() for p in d21.parameters())
    truth = sd21_difference()
    assert truth["extra"] == n21 - n15 == context_params_truth(SD15, SD21.cross_attention_dim)
    grown = {n.split(".")[-2] for n, p in d21.named_parameters()
             if p.numel() != dict(d15.named_parameters())[n].numel()}
    assert grown == {"to_k", "to_v"} and all(s.startswith("attn2.") for s in truth["grew"])
    assert truth["heads_change_count"] is False
    assert set(truth) == set(SD21_KEYS) | {"extra"}


def test_sd21_reference_passes_in_other_spellings():
    assert check_sd21_params(reference_sd21_answer(), reference_extra_params).passed
    spelled = {"grew": ["attn2.to_v", " attn2.to_k"], "reshaped": ("proj_out", "proj_in"),
               "heads_change_count": torch.tensor(False)}
    assert check_sd21_params(spelled, lambda c, w: torch.tensor(reference_extra_params(c, w))).passed


def _wrong_formula(**flags):
    return lambda config, width: ch02._context_formula(config, width, **flags)


@pytest.mark.parametrize(
    "change, fn, hint",
    [
        ({"grew": {"to_k", "to_v"}}, reference_extra_params, "Say which attention"),
        ({"grew": {"attn2.to_q", "attn2.to_k", "attn2.to_v"}}, reference_extra_params, "to_q reads the image"),
        ({"grew": {"attn2.to_k"}}, reference_extra_params, "key is not the only thing"),
        ({"grew": {"attn2.to_k", "attn2.to_v", "proj_in", "proj_out"}}, reference_extra_params, "belong in reshaped"),
        ({"reshaped": {"attn1.to_q", "attn2.to_q"}}, reference_extra_params, "does not reshape to_q"),
        ({"reshaped": set()}, reference_extra_params, "same number of weights"),
        ({"heads_change_count": True}, reference_extra_params, "heads × channels per head = C"),
        ({"heads_change_count": "no"}, reference_extra_params, "True or False"),
        ({}, _wrong_formula(kv=1), "Two matrices read the text"),
        ({}, _wrong_formula(per_block=True), "more than one Transformer"),
        ({}, _wrong_formula(depth=False), "several BasicTransformerBlocks"),
        ({}, _wrong_formula(up_extra=False), "one more Transformer"),
        ({}, _wrong_formula(mid=False), "mid block"),
        ({}, _wrong_formula(difference=False), "the question is the difference"),
        ({}, lambda c, w: -reference_extra_params(c, w), "Wrong sign"),
        ({}, lambda c, w: "6,389,760", "Return one integer"),
    ],
    ids=["no-attn-name", "to_q", "only-k", "proj-grew", "heads-reshape", "reshaped-empty", "heads-true", "not-bool",
         "one-of-kv", "per-block", "no-depth", "up-no-plus-one", "no-mid", "size-not-diff", "sign", "a-string"],
)
def test_sd21_typical_mistakes(change, fn, hint):
    answer = {**reference_sd21_answer(), **change}
    feedback = check_sd21_params(answer, fn)
    assert not feedback.passed
    assert hint in _hints(feedback), str(feedback)
    text = str(feedback)
    assert "提示" in text and "Hint" in text


def test_sd21_one_level_deep_formula_passes_sd15_but_not_sdxl():
    # a formula that ignores transformer_layers_per_block is right for SD 1.5 and the tiny configs, wrong for SDXL
    feedback = check_sd21_params(reference_sd21_answer(), _wrong_formula(depth=False))
    failed = [c.what_en for c in feedback.failed()]
    assert failed == ["extra_params(sdxl, 768)"], failed


def test_sd21_half_stub_is_an_attempt():
    def stub(config, width):
        raise NotImplementedError

    feedback = check_sd21_params(reference_sd21_answer(), stub)
    assert feedback.attempted and not feedback.passed
    assert sum(c.passed for c in feedback.checks) == 4


# ---- exercise 2.B ---------------------------------------------------------------------------
def test_shape_reference_passes_in_both_spellings():
    assert check_shape_predictions(reference_predictions()).passed
    spaced = {k.replace(".resnets", " resnets"): v for k, v in reference_predictions().items()}
    assert check_shape_predictions(spaced).passed
    as_sizes = {k: torch.Size(v) for k, v in reference_predictions().items()}
    assert check_shape_predictions(as_sizes).passed


@pytest.mark.parametrize(
    "point, wrong, hint",
    [
        ("conv_in output", (1, 320, 12, 12), "don't divide by the VAE's factor 8"),
        ("down_blocks.3 output", (1, 1280, 6, 6), "Count the resamplers"),
        ("mid_block output", (1, 1280, 24, 24), "Count the resamplers"),
        ("time_emb", (1, 320), "sinusoidal projection"),
        ("down_blocks.1 output", (640, 24, 24), "batch dimension"),
        ("up_blocks.1.resnets.2 input", (1, 2560, 24, 24), "concatenation"),
        ("up_blocks.2.resnets.0 input", (1, 1280, 48, 48), "concatenation"),
        ("down_blocks.0 output", (1, 640, 48, 48), "block widths"),
        ("conv_out output", "(1, 4, 96, 96)", "tuple of ints"),
        ("conv_out output", (1, 4.0, 96, 96), "tuple of ints"),
    ],
)
def test_shape_typical_mistakes(point, wrong, hint):
    answer = reference_predictions()
    answer[point] = wrong
    feedback = check_shape_predictions(answer)
    assert not feedback.passed
    assert len(feedback.failed()) == 1 and feedback.failed()[0].what_en == f"shape at {point}"
    assert hint in _hints(feedback)


def test_shape_missing_points_are_named():
    feedback = check_shape_predictions({"conv_in output": (1, 320, 96, 96)})
    assert len(feedback.failed()) == len(SD_SHAPE_POINTS) - 1
    assert "No prediction" in _hints(feedback)


# ---- exercise 2.C ---------------------------------------------------------------------------
@pytest.mark.slow
def test_skip_channels_reference_passes():
    feedback = check_skip_channels(reference_skip_channels)
    assert feedback.passed, str(feedback)


def _raises(config):
    raise NotImplementedError("todo")


def _skips_off(config):
    result = reference_skip_channels(config)
    result[-1][-1] = (result[-1][-1][0], result[-1][-1][1] * 2)
    return result


def _hidden_off(config):
    return [[(h + 1, s - 1) for h, s in block] for block in reference_skip_channels(config)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fn, hint",
    [
        (seed000_style, "study note 000"),
        (_raises, "Your function raised"),
        (lambda config: [], "as many up blocks"),
        (lambda config: [[(1, 2)]] * len(config.block_out_channels), "layers_per_block + 1"),
        (lambda config: "1280 + 1280", "Return [[(hidden, skip)"),
        (_skips_off, "hidden is right, the skips are not"),
        (_hidden_off, "hidden: a block's first ResNet"),
        (reference_skip_channels(SD15), "Pass the function itself"),
    ],
    ids=["seed000", "raises", "empty", "too-few-resnets", "garbage", "skips-off", "hidden-off", "not-callable"],
)
def test_skip_channels_typical_mistakes(fn, hint):
    feedback = check_skip_channels(fn)
    assert not feedback.passed
    assert hint in _hints(feedback)


# ---- nothing makes a checker raise -----------------------------------------------------------
ODD = [None, 42, "abc", b"x", [], {}, {1: 2}, {None: None}, object(), torch.zeros(3), float("inf")]


@pytest.mark.slow
@pytest.mark.parametrize("answer", ODD, ids=[type(a).__name__ + str(i) for i, a in enumerate(ODD)])
def test_checkers_never_raise(answer):
    for checker in (check_shape_predictions, check_skip_channels):
        feedback = checker(answer)
        assert not feedback.passed
        assert str(feedback)
    assert not check_sd21_params(answer, answer).passed
    assert str(check_sd21_params(answer, answer))
    # the same odd value inside a well-formed answer
    assert not check_sd21_params({k: answer for k in SD21_KEYS}, lambda c, w, a=answer: a).passed
    assert not check_shape_predictions({p: answer for p in SD_SHAPE_POINTS}).passed
    assert not check_skip_channels(lambda config, a=answer: a).passed
