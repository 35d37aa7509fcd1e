"""Chapter 7 homework checkers: the reference passes, the stub is "not attempted", typical wrong answers get their hint."""
import torch

from unetlab.homework import check_add_at_skip, check_residual_shapes
from unetlab.homework.ch07 import reference_add_at_skip, reference_residual_shapes
from unetlab.sd.unet import mid_shape, skip_shapes


def _hints(fb):
    return " ".join(c.hint_en for c in fb.failed())


# --- 7.1 ----------------------------------------------------------------------------------------------


def test_shapes_reference_passes_and_is_what_the_model_gives():
    answer = reference_residual_shapes()
    assert len(answer["down"]) == 12 and answer["down"][0] == (1, 320, 96, 96) and answer["mid"] == (1, 1280, 12, 12)
    fb = check_residual_shapes(answer)
    assert fb.passed and fb.status == "passed", str(fb)
    # lists instead of tuples, torch.Size too
    fb = check_residual_shapes({"down": [list(s) for s in answer["down"]], "mid": torch.Size(answer["mid"])})
    assert fb.passed, str(fb)


def test_shapes_stub_is_not_attempted():
    fb = check_residual_shapes({"down": [None] * 12, "mid": None})
    assert fb.status == "not attempted" and "not attempted yet" in str(fb)


def test_shapes_typical_mistakes():
    ref = reference_residual_shapes()
    # the 64x64 latent's shapes
    fb = check_residual_shapes(reference_residual_shapes((1, 4, 64, 64)))
    assert not fb and "64×64 latent" in _hints(fb)
    # pixel sizes
    pixels = {"down": [(b, c, 8 * h, 8 * w) for b, c, h, w in ref["down"]], "mid": ref["mid"]}
    assert "in pixels" in _hints(check_residual_shapes(pixels))
    # downsampler skips with the next level's channels
    names = [n for n, _ in skip_shapes("sd15", (1, 4, 96, 96))]
    shifted = [(s[0], ref["down"][i + 1][1], s[2], s[3]) if "downsamplers" in names[i] else s
               for i, s in enumerate(ref["down"])]
    assert "keeps the channels" in _hints(check_residual_shapes({"down": shifted, "mid": ref["mid"]}))
    # no downsampler skips: 9
    nine = [s for s, n in zip(ref["down"], names) if "downsamplers" not in n]
    fb = check_residual_shapes({"down": nine, "mid": ref["mid"]})
    assert not fb and "downsamplers' outputs are missing" in _hints(fb)
    # the mid block one level too deep
    fb = check_residual_shapes({"down": ref["down"], "mid": (1, 1280, 6, 6)})
    assert not fb and "One level too deep" in _hints(fb) and len(fb.failed()) == 1
    # no batch axis
    assert "batch axis" in _hints(check_residual_shapes({"down": [s[1:] for s in ref["down"]], "mid": ref["mid"]}))


def test_shapes_bad_answers_never_raise():
    for answer in (None, 3, "shapes", {"down": 5, "mid": None}, {"down": [1, 2], "mid": "x"}, {"skips": []}):
        fb = check_residual_shapes(answer)
        assert not fb
        str(fb)


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
