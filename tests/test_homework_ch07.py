"""Chapter 7 homework checkers: the reference passes, the stub is "not attempted", typical wrong answers get their hint."""
import re

import pytest
import torch

from unetlab.homework import check_add_at_skip, check_residual_shapes
from unetlab.homework.ch07 import reference_add_at_skip, reference_residual_shapes
from unetlab.sd.unet import mid_shape, skip_shapes


def _hints(fb):
    return " ".join(c.hint_en for c in fb.failed())


def _numbers(text):
    return set(re.findall(r"\d+", text))


# --- 7.1 ----------------------------------------------------------------------------------------------

# 7.1 is SDXL at a 128×128 latent (a 1024×1024 image), batch 1; every answer below is built from skip_shapes
LATENT = (1, 4, 128, 128)
NAMES = [n for n, _ in skip_shapes("sdxl", LATENT)]
DOWN = [s for _, s in skip_shapes("sdxl", LATENT)]
MID = mid_shape("sdxl", LATENT)[1]


def _sd15(side):
    return {"down": [s for _, s in skip_shapes("sd15", (1, 4, side, side))], "mid": mid_shape("sd15", (1, 4, side, side))[1]}


def test_shapes_reference_passes_and_is_what_the_model_gives():
    answer = reference_residual_shapes()
    assert answer == {"down": DOWN, "mid": MID}
    # SDXL: three down blocks, no downsampler after the last, so 9 skips (not SD 1.5's 12) and a 32×32 lowest level
    assert len(answer["down"]) == 9 and answer["down"][0] == (1, 320, 128, 128) and answer["down"][-1] == (1, 1280, 32, 32)
    assert answer["mid"] == (1, 1280, 32, 32)
    assert sum("downsamplers" in n for n in NAMES) == 2 and NAMES[1] == "down_blocks.0.resnets.0"
    fb = check_residual_shapes(answer)
    assert fb.passed and fb.status == "passed", str(fb)
    # lists instead of tuples, torch.Size too
    fb = check_residual_shapes({"down": [list(s) for s in answer["down"]], "mid": torch.Size(answer["mid"])})
    assert fb.passed, str(fb)


@pytest.mark.parametrize("stub", [{"down": [], "mid": None}, {"down": [None] * 9, "mid": None}])
def test_shapes_stub_is_not_attempted(stub):
    fb = check_residual_shapes(stub)
    text = str(fb)
    assert fb.status == "not attempted" and "not attempted yet" in text
    # the stub's feedback does not give the number of skips away
    assert not {"9", "12"} & _numbers(text), text


def test_shapes_partly_filled_is_an_attempt():
    fb = check_residual_shapes({"down": [], "mid": MID})
    assert fb.status == "failed" and "How to count" in _hints(fb)


def _without(shapes, *names):
    return [s for s, n in zip(shapes, NAMES) if n not in names]


def _deeper(shape):
    b, c, h, w = shape
    return (b, c, h // 2, w // 2)


DOWNSAMPLERS = [n for n in NAMES if "downsamplers" in n]
MISTAKES = {
    # the chapter's 64×64 table doubled = SD 1.5 at 128×128: 12 skips, mid at 16×16
    "SD 1.5 at 128": (_sd15(128), "SD 1.5's 12 skips at a 128×128 latent"),
    "the chapter's table as printed": (_sd15(64), "section 7.2's table"),
    "the old exercise, SD 1.5 at 96": (_sd15(96), "SD 1.5's shapes at a 96×96 latent"),
    "SD 1.5's count, other shapes": ({"down": DOWN + DOWN[-3:], "mid": MID}, "12 is SD 1.5's number"),
    "SDXL at 64": ({"down": [s for _, s in skip_shapes("sdxl", (1, 4, 64, 64))], "mid": MID}, "sizes for a 64×64 latent"),
    "pixel sizes": ({"down": [(b, c, 8 * h, 8 * w) for b, c, h, w in DOWN], "mid": MID}, "in pixels"),
    "next level's channels": ({"down": [(s[0], DOWN[i + 1][1], *s[2:]) if "downsamplers" in NAMES[i] else s
                                        for i, s in enumerate(DOWN)], "mid": MID}, "keeps the channels"),
    "downsamplers forgotten": ({"down": _without(DOWN, *DOWNSAMPLERS), "mid": MID}, "downsamplers' outputs are missing"),
    "only the ResNets": ({"down": _without(DOWN, "conv_in", *DOWNSAMPLERS), "mid": MID}, "Only the blocks' ResNet"),
    "conv_in forgotten": ({"down": DOWN[1:], "mid": MID}, "conv_in's output is missing"),
    "one downsampler forgotten": ({"down": _without(DOWN, "down_blocks.1.downsamplers.0"), "mid": MID},
                                  "down_blocks.1.downsamplers.0's output is missing"),
    "a downsampler after the last block": ({"down": DOWN + [_deeper(DOWN[-1])], "mid": MID}, "One skip too many, at 16×16"),
    "the mid block counted": ({"down": DOWN + [MID], "mid": MID}, "its residual goes under 'mid'"),
    "conv_in forgotten and a downsampler too many": ({"down": DOWN[1:] + [_deeper(DOWN[-1])], "mid": MID},
                                                      "count happens to be right"),
    "the up path's order": ({"down": DOWN[::-1], "mid": MID}, "the order the up path takes them in"),
    "no batch axis": ({"down": [s[1:] for s in DOWN], "mid": MID}, "Include the batch axis"),
    "batch 2": ({"down": [(2, *s[1:]) for s in DOWN], "mid": MID}, "The batch is B = 1"),
    "an odd count": ({"down": DOWN[:4], "mid": MID}, "How to count"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_shapes_typical_mistakes_get_their_hint(name):
    answer, hint = MISTAKES[name]
    fb = check_residual_shapes(answer)
    assert fb.status == "failed" and hint in _hints(fb), str(fb)
    # a wrong count is not answered with the expected count
    count = [c for c in fb.checks if c.what_en.startswith("number of residuals")]
    assert count and all("9" not in _numbers(c.what_en + c.hint_en) for c in count if not c.passed), str(fb)


def test_shapes_each_mistake_has_its_own_hint():
    # no mistake falls through to another's hint (the hints are told apart, not all the generic one)
    hints = [_hints(check_residual_shapes(answer)) for answer, _ in MISTAKES.values()]
    assert len(set(hints)) == len(hints)


@pytest.mark.parametrize("mid, hint", [
    (_deeper(MID), "One level too deep"),
    ((1, 1280, 256, 256), "pixel sizes"),
    ((1, 640, 32, 32), "the channels are the last down block's"),
    (MID[1:], "Include the batch axis"),
    (None, "tuple of four ints"),
    ((1, 1280, 8, 8), "the lowest level's shape"),
])
def test_shapes_mid_mistakes(mid, hint):
    fb = check_residual_shapes({"down": DOWN, "mid": mid})
    # only the mid check fails
    assert not fb and len(fb.failed()) == 1 and hint in _hints(fb), str(fb)


def test_shapes_bad_answers_never_raise():
    for answer in (None, 3, "shapes", {"down": 5, "mid": None}, {"down": [1, 2], "mid": "x"}, {"skips": []},
                   {1: 2, (3,): 4}, {"down": [(1, 320, -4, -4)] * 9, "mid": (1, 2)},
                   {"down": [(1, 320, 10 ** 12, 10 ** 12)] * 12, "mid": None}, {"down": [(True, 1, 2, 3)], "mid": None},
                   {"down": [()] * 9, "mid": ()}, {"down": [(1, 2, 3, 4, 5)] * 9, "mid": (1, 2, 3, 4, 5)},
                   {"down": ["abcd"] * 9, "mid": "abcd"}, {"down": [torch.zeros(4)] * 9, "mid": torch.zeros(4)}):
        fb = check_residual_shapes(answer)
        assert not fb
        assert "error while checking" not in str(fb), str(fb)


# --- 7.2 ----------------------------------------------------------------------------------------------


def test_add_at_skip_reference_passes():
    fb = check_add_at_skip(reference_add_at_skip)
    assert fb.passed, str(fb)


def test_add_at_skip_stub_is_not_attempted():
    def add_at_skip(unet, sample, timestep, context, skip_name, residual):
        raise NotImplementedError

    fb = check_add_at_skip(add_at_skip)
    assert fb.status == "not attempted" and "not attempted yet" in str(fb)


def _by_index(shift=0, reverse=False):
    def fn(unet, sample, timestep, context, skip_name, residual):
        mid = torch.zeros(mid_shape(unet.config, tuple(sample.shape))[1])
        shapes = skip_shapes(unet.config, tuple(sample.shape))
        if skip_name == "mid_block":
            return unet(sample, timestep, context, down_block_additional_residuals=[torch.zeros(s) for _, s in shapes],
                        mid_block_additional_residual=residual)
        names = [n for n, _ in shapes]
        k = names.index(skip_name) + shift
        down = [torch.zeros(s) for _, s in shapes]
        if 0 <= k < len(down) and down[k].shape == residual.shape:
            down[k] = residual
        if reverse:
            # thought in the up path's order
            down = down[::-1]
        return unet(sample, timestep, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    return fn


def test_add_at_skip_typical_mistakes():
    # counted from 1 / forgot conv_in: one place late
    fb = check_add_at_skip(_by_index(shift=1))
    assert not fb and "did you forget that conv_in's output is a skip too" in _hints(fb)
    # up path's order
    fb = check_add_at_skip(_by_index(reverse=True))
    assert not fb and "not the reversed order the up path takes them in" in _hints(fb)

    # only the down residuals, no zero mid residual
    def down_only(unet, sample, timestep, context, skip_name, residual):
        shapes = skip_shapes(unet.config, tuple(sample.shape))
        down = [residual if n == skip_name else torch.zeros(s) for n, s in shapes]
        return unet(sample, timestep, context, down_block_additional_residuals=down)

    fb = check_add_at_skip(down_only)
    assert not fb and "Give zeros for the one you do not need" in _hints(fb)

    # a forward hook on the layer: the down path changes too
    def hooked(unet, sample, timestep, context, skip_name, residual):
        if skip_name == "mid_block":
            return reference_add_at_skip(unet, sample, timestep, context, skip_name, residual)
        handle = unet.get_submodule(skip_name).register_forward_hook(lambda m, i, o: o + residual)
        try:
            return unet(sample, timestep, context)
        finally:
            handle.remove()

    fb = check_add_at_skip(hooked)
    assert not fb and "every later layer of the down path changed too" in _hints(fb)
    # the cases where the hook and the skip agree (the last skip feeds nothing later on the down path but the mid block)
    assert len(fb.failed()) < 5

    # residual ignored
    fb = check_add_at_skip(lambda unet, sample, timestep, context, skip_name, residual: unet(sample, timestep, context))
    assert not fb and "never reached it" in _hints(fb)


def test_add_at_skip_bad_answers_never_raise():
    for answer in (None, 3, lambda *a: "x", lambda *a: 1 / 0, lambda unet: unet,
                   lambda unet, sample, timestep, context, skip_name, residual: residual):
        fb = check_add_at_skip(answer)
        assert not fb
        str(fb)
