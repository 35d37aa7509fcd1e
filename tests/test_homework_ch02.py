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
    check_component_shares,
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
def reference_shares():
    from unetlab.sd.count import component_params

    counts = component_params("sd15").counts
    total = sum(counts.values())
    return {"clip": counts["text_encoder"] / total, "vae": counts["vae"] / total, "unet": counts["unet"] / total}


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
    """Seed 000's simplification: every ResNet concatenates two tensors of the same width."""
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
def test_component_shares_reference_passes_and_tensors_are_fine():
    shares = reference_shares()
    assert check_component_shares(shares).passed
    assert check_component_shares({k: torch.tensor(v) for k, v in shares.items()}).passed


@pytest.mark.parametrize(
    "mistake, hint",
    [
        (lambda s: {k: 100 * v for k, v in s.items()}, "percentage"),
        (lambda s: {"clip": 0.12, "vae": 0.08, "unet": 0.80}, "rounded too much"),
        (lambda s: {"clip": s["clip"] / s["unet"], "vae": s["vae"] / s["unet"], "unet": 1.0}, "UNet's count"),
        (lambda s: {"clip": s["clip"] / (s["clip"] + s["vae"]), "vae": s["vae"] / (s["clip"] + s["vae"]),
                    "unet": s["unet"]}, "misses the UNet"),
        (lambda s: {"clip": s["clip"], "vae": s["vae"]}, "missing"),
        (lambda s: {"clip": None, "vae": "0.08", "unet": float("nan")}, "finite number"),
        (lambda s: list(s.values()), "Write {'clip'"),
    ],
    ids=["percent", "seed-rounded", "over-unet", "no-unet", "missing-key", "not-numbers", "a-list"],
)
def test_component_shares_typical_mistakes(mistake, hint):
    feedback = check_component_shares(mistake(reference_shares()))
    assert not feedback.passed
    assert hint in _hints(feedback)
    text = str(feedback)
    assert "提示" in text and "Hint" in text


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
    for checker in (check_component_shares, check_shape_predictions, check_skip_channels):
        feedback = checker(answer)
        assert not feedback.passed
        assert str(feedback)
    # the same odd value inside a well-formed answer
    assert not check_component_shares({"clip": answer, "vae": answer, "unet": answer}).passed
    assert not check_shape_predictions({p: answer for p in SD_SHAPE_POINTS}).passed
    assert not check_skip_channels(lambda config, a=answer: a).passed
