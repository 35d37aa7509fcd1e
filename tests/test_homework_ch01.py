"""Chapter 1 checkers: the reference answers pass; typical wrong answers fail with the right hint, never a traceback."""
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn

from unetlab import note003
from unetlab.homework import Feedback, check_own_trace, check_param_scaling, check_unet_shapes
from unetlab.homework.ch01 import (PARTS, SCALING_TARGET, SCALING_WIDTHS, has_skip_connections, own_trace_truth,
                                   param_counts, param_polynomial)
from unetlab.simple_unet import DownBlock, ResBlock, SimpleUNet, TimeEmbedding, UpBlock


def failed_text(feedback: Feedback) -> str:
    return "\n".join(f"{c.what_en} {c.detail_en} {c.hint_en}" for c in feedback.failed())


# --- check_unet_shapes ----------------------------------------------------------------------------
class ThreeLevelUNet(nn.Module):
    """A different correct answer: three resolutions, built from unetlab's blocks."""

    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        super().__init__()
        c, t = base_channels, 4 * base_channels
        self.time_embed = TimeEmbedding(c)
        self.down1, self.down2, self.down3 = DownBlock(in_channels, c, t), DownBlock(c, 2 * c, t), DownBlock(2 * c, 2 * c, t)
        self.mid = ResBlock(2 * c, 2 * c, t)
        self.up1 = UpBlock(2 * c, 2 * c, t, skip_channels=2 * c)
        self.up2 = UpBlock(2 * c, c, t, skip_channels=2 * c)
        self.up3 = UpBlock(c, c, t, skip_channels=c)
        self.out = nn.Conv2d(c, out_channels, 1)

    def forward(self, x, timestep):
        time_emb = self.time_embed(timestep)
        h, s1 = self.down1(x, time_emb)
        h, s2 = self.down2(h, time_emb)
        h, s3 = self.down3(h, time_emb)
        h = self.mid(h, time_emb)
        h = self.up1(h, s3, time_emb)
        h = self.up2(h, s2, time_emb)
        return self.out(self.up3(h, s1, time_emb))


class AddedSkipsUNet(SimpleUNet):
    """Skips added instead of concatenated (still skip connections)."""

    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        super().__init__(in_channels, out_channels, base_channels, use_skips=False)
        self.reduce = nn.Conv2d(2 * base_channels, base_channels, 1)

    def forward(self, x, timestep):
        time_emb = self.time_embed(timestep)
        h1, skip1 = self.down1(x, time_emb)
        h2, skip2 = self.down2(h1, time_emb)
        h = self.bottleneck(h2, time_emb)
        h = self.up1(h, None, time_emb) + self.reduce(skip2)
        h = self.up2(h, None, time_emb) + skip1
        return self.out(h)


@pytest.mark.parametrize("answer", [SimpleUNet, SimpleUNet(base_channels=8), ThreeLevelUNet, AddedSkipsUNet])
def test_correct_unets_pass(answer):
    feedback = check_unet_shapes(answer)
    assert feedback.passed, str(feedback)
    assert "All checks passed" in str(feedback)


def test_model_mode_is_restored():
    model = SimpleUNet(base_channels=8).train()
    check_unet_shapes(model)
    assert model.training


def test_unet_without_skips_fails_the_skip_check():
    feedback = check_unet_shapes(lambda **kw: SimpleUNet(use_skips=False, **kw))
    assert [c.what_en for c in feedback.failed()] == ["skip connections"]
    assert "torch.cat([h, skip], dim=1)" in failed_text(feedback)


def test_has_skip_connections_and_skip_scale():
    torch.manual_seed(0)
    assert has_skip_connections(SimpleUNet(base_channels=8))
    assert not has_skip_connections(SimpleUNet(base_channels=8, use_skips=False))


def test_seed_code_fails_with_the_groupnorm_hint():
    feedback = check_unet_shapes(note003.SimpleUNet)
    assert not feedback.passed and len(feedback.checks) == 1
    assert "GroupNorm(8, 4)" in feedback.checks[0].hint_en


def test_seed_code_with_bug1_patched_fails_in_up1_with_the_concat_hint():
    group_norm = nn.GroupNorm

    class Patched(note003.SimpleUNet):
        def __init__(self, **kwargs):
            with mock.patch.object(nn, "GroupNorm", lambda g, c: group_norm(math.gcd(g, c), c)):
                super().__init__(**kwargs)

    feedback = check_unet_shapes(Patched)
    text = failed_text(feedback)
    assert "failed in up1.res.norm1 (GroupNorm)" in text
    assert "up-path + skip channels" in text


class NoTime(SimpleUNet):
    def forward(self, x, timestep):
        return super().forward(x, 0)


class Stub(nn.Module):
    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        super().__init__()

    def forward(self, x, timestep):
        raise NotImplementedError


class NoDown(nn.Module):
    def __init__(self, in_channels=4, out_channels=4):  # no base_channels: still buildable
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, x, timestep):
        t = timestep.float()[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.conv(torch.cat([x, t], 1))


class WrongChannels(SimpleUNet):
    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        super().__init__(in_channels, 3, base_channels)


class OddUp(SimpleUNet):
    def forward(self, x, timestep):
        return super().forward(x, timestep)[..., 1:, :]


class ReturnsTuple(SimpleUNet):
    def forward(self, x, timestep):
        return super().forward(x, timestep), None


class NoSuperInit(nn.Module):
    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        self.out = nn.Conv2d(in_channels, out_channels, 1)  # forgot super().__init__()


@pytest.mark.parametrize(
    "answer,failed,hint",
    [
        (NoTime, "the timestep changes the output", "(B, C, 1, 1)"),
        (Stub, "output shape for input (2, 4, 32, 32)", "replace raise NotImplementedError"),
        (NoDown, "U shape: the down path halves H and W at least twice", "stride-2"),
        (WrongChannels, "output shape for input (2, 4, 32, 32)", "out_channels = 4"),
        (OddUp, "output shape for input (2, 4, 32, 32)", "restores the size"),
        (ReturnsTuple, "output shape for input (2, 4, 32, 32)", "return one tensor"),
        (42, "build the model", "nn.Module"),
        ("MyUNet", "build the model", "nn.Module"),
        (lambda **kw: 5, "build the model", "subclass nn.Module"),
        (lambda: SimpleUNet(), "build the model", "in_channels, out_channels"),
        (lambda **kw: 1 / 0, "build the model", "in_channels"),
        (NoSuperInit, "build the model", "Call super().__init__()"),
    ],
)
def test_wrong_unets_get_the_right_hint(answer, failed, hint):
    feedback = check_unet_shapes(answer)
    assert not feedback.passed
    assert failed in [c.what_en for c in feedback.failed()]
    assert hint in failed_text(feedback), str(feedback)
    assert "提示" in str(feedback) and "Hint" in str(feedback)


def test_no_down_without_base_channels_is_built_without_it():
    feedback = check_unet_shapes(NoDown)
    assert feedback.checks[0].passed and "NoDown(in_channels=4, out_channels=4)" in feedback.checks[0].detail_en


def test_shape_failure_stops_before_the_other_checks():
    feedback = check_unet_shapes(Stub)
    assert [c.what_en for c in feedback.checks] == ["build the model", "output shape for input (2, 4, 32, 32)", "remaining checks"]


class Weird:
    """An object that breaks whatever touches it."""

    def __getattr__(self, name):
        raise RuntimeError("boom")


WEIRD_ANSWERS = [None, 0, 1.5, "text", b"bytes", [], (), {}, {None: None}, Weird(), torch.zeros(3), nn.Linear(2, 2),
                 {k: Weird() for k in PARTS}, {k: [1, 2] for k in PARTS}, {k: torch.zeros(2) for k in PARTS},
                 {"quadratic": Weird(), "at_128": {k: "x" for k in PARTS}}]


CHECKERS = [check_unet_shapes, lambda answer: check_own_trace(SimpleUNet, answer), lambda answer: check_own_trace(answer, {}),
            check_param_scaling]


@pytest.mark.parametrize("checker", CHECKERS)
def test_checkers_never_raise_on_wrong_answers(checker):
    for answer in WEIRD_ANSWERS:
        feedback = checker(answer)
        assert isinstance(feedback, Feedback) and not feedback.passed, answer
        str(feedback)


def test_safety_net_turns_internal_errors_into_feedback(monkeypatch):
    from unetlab.homework import ch01

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(ch01, "param_polynomial", broken)
    feedback = ch01.check_param_scaling({"quadratic": {k: 1 for k in PARTS}, "at_128": {k: 1 for k in PARTS}})
    assert not feedback.passed and feedback.failed()[0].what_en == "error while checking your answer"
    assert "KeyError" in feedback.failed()[0].detail_en


# --- check_own_trace ------------------------------------------------------------------------------
def by_hand(c=16, b=2, h=64):
    """The learner's predictions for SimpleUNet(base_channels=c), worked out by hand (not traced)."""
    return {"time_embed": (b, 4 * c), "down1": (b, c, h // 2, h // 2), "down2": (b, 2 * c, h // 4, h // 4),
            "bottleneck": (b, 2 * c, h // 4, h // 4), "up1": (b, c, h // 2, h // 2), "up2": (b, c, h, h), "out": (b, 4, h, h)}


def test_own_trace_reference_answers_pass():
    assert check_own_trace(SimpleUNet, by_hand()).passed
    # a deeper path and an input point may be added; lists and torch.Size are shapes too
    extra = {**by_hand(), "up1.res input": (2, 16 + 32, 32, 32), "down1.res": [2, 16, 64, 64], "out": torch.Size((2, 4, 64, 64))}
    fb = check_own_trace(SimpleUNet, extra)
    assert fb.passed, str(fb)
    # another architecture: three downsamplings; its parts are its own names
    c = 16
    three = {"time_embed": (2, 64), "down1": (2, c, 32, 32), "down2": (2, 2 * c, 16, 16), "down3": (2, 2 * c, 8, 8),
             "mid": (2, 2 * c, 8, 8), "up1": (2, 2 * c, 16, 16), "up2": (2, c, 32, 32), "up3": (2, c, 64, 64), "out": (2, 4, 64, 64)}
    fb = check_own_trace(ThreeLevelUNet, three)
    assert fb.passed, str(fb)
    # the truth is the trace of the learner's model, not a table
    truth = own_trace_truth(ThreeLevelUNet())
    assert {p: truth[p][0] for p in three} == three


def test_own_trace_stub_and_untouched_unet_are_not_attempted():
    class Stub(nn.Module):
        def __init__(self, in_channels=4, out_channels=4, base_channels=16):
            super().__init__()

        def forward(self, x, timestep):
            raise NotImplementedError

    for model, answer in ((Stub, {}), (Stub, by_hand()), (SimpleUNet, {}), (SimpleUNet, {p: None for p in PARTS})):
        fb = check_own_trace(model, answer)
        assert fb.status == "not attempted", str(fb)


@pytest.mark.parametrize("change, hint", [
    (dict(down1=(2, 16, 64, 64)), "you gave output number 2"),            # the down block's skip, not its h
    (dict(up1=(16, 32, 32)), "batch dimension is missing"),
    (dict(bottleneck=(2, 32, 8, 8)), "too many halvings"),
    (dict(up2=(2, 16, 128, 128)), "too few halvings"),
    (dict(down2=(2, 128, 16, 16)), "base_channels=16, not 64"),         # predicted for base_channels=64
    (dict(up1=(2, 48, 32, 32)), "a block outputs its own out_channels"),  # the concatenated width instead
    (dict(out=(2, 16, 64, 64)), "input shape, not its output"),
])
def test_own_trace_typical_mistakes_get_their_diagnosis(change, hint):
    fb = check_own_trace(SimpleUNet, {**by_hand(), **change})
    assert fb.status == "failed" and len(fb.failed()) == 1, str(fb)
    assert hint in fb.failed()[0].hint_en, str(fb)


def test_own_trace_missing_and_unknown_parts_are_named():
    answer = by_hand()
    del answer["up2"]
    answer["decoder"] = (2, 4, 64, 64)
    fb = check_own_trace(SimpleUNet, answer)
    assert not fb.passed and "missing ['up2']" in fb.failed()[0].detail_en and "decoder" in fb.failed()[0].detail_en


def test_own_trace_broken_model_names_the_failing_layer():
    group_norm = nn.GroupNorm
    with mock.patch.object(nn, "GroupNorm", lambda g, c: group_norm(math.gcd(g, c), c)):
        note_model = note003.SimpleUNet(in_channels=4, out_channels=4, base_channels=16)
    fb = check_own_trace(note_model, by_hand())
    assert fb.status == "failed" and "up1" in fb.failed()[0].detail_en, str(fb)


# --- check_param_scaling --------------------------------------------------------------------------
def fitted_by_hand():
    """The learner's way: count at three widths, solve the 3x3 system with torch, predict 128."""
    widths = torch.tensor(SCALING_WIDTHS, dtype=torch.float64)
    system = torch.stack([widths ** 2, widths, torch.ones(3, dtype=torch.float64)], dim=1)
    counts = {}
    for c in SCALING_WIDTHS:
        model = SimpleUNet(base_channels=c)
        counts[c] = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    quadratic, at_128 = {}, {}
    for part in PARTS:
        a, b, c = torch.linalg.solve(system, torch.tensor([counts[w][part] for w in SCALING_WIDTHS], dtype=torch.float64))
        quadratic[part] = round(a.item())
        at_128[part] = round((a * 128 ** 2 + b * 128 + c).item())
    return {"quadratic": quadratic, "at_128": at_128}, counts


def test_param_scaling_reference_passes_and_is_the_real_count():
    answer, counts = fitted_by_hand()
    fb = check_param_scaling(answer)
    assert fb.passed, str(fb)
    # the truth is counted from a model, and the quadratic really is one: check against a real build at 128
    real = SimpleUNet(base_channels=SCALING_TARGET)
    assert answer["at_128"] == {n: sum(p.numel() for p in part.parameters()) for n, part in real.named_children()}
    assert answer["quadratic"]["out"] == 0 and all(param_polynomial()[p][0] == answer["quadratic"][p] for p in PARTS)
    assert param_counts(32) == counts[32]


def test_param_scaling_stub_is_not_attempted():
    fb = check_param_scaling({"quadratic": {p: None for p in PARTS}, "at_128": {p: None for p in PARTS}})
    assert fb.status == "not attempted"


@pytest.mark.parametrize("make, what, hint", [
    (lambda r, n: {**r, "at_128": {p: n[32][p] * 16 for p in PARTS}}, "counts at C = 128", "multiplied every part by (128/32)² = 16"),
    (lambda r, n: {**r, "at_128": {p: n[64][p] * 4 for p in PARTS}}, "counts at C = 128", "multiplied every part by (128/32)² = 16"),
    (lambda r, n: {**r, "at_128": {p: n[32][p] * 4 for p in PARTS}}, "counts at C = 128", "scaled linearly"),
    (lambda r, n: {**r, "at_128": {p: r["quadratic"][p] * 128 ** 2 for p in PARTS}}, "counts at C = 128", "dropped b·C + c"),
    (lambda r, n: {**r, "quadratic": {p: n[64][p] / 64 ** 2 for p in PARTS}}, "coefficient a", "divided the counts at C = 64 by C²"),
])
def test_param_scaling_typical_mistakes_get_their_diagnosis(make, what, hint):
    right, counts = fitted_by_hand()
    fb = check_param_scaling(make(right, counts))
    assert fb.status == "failed" and len(fb.failed()) == 1 and what in fb.failed()[0].what_en, str(fb)
    assert hint in fb.failed()[0].hint_en, str(fb)


def test_param_scaling_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    right, _ = fitted_by_hand()
    answer = {key: {p: np.int64(v) for p, v in inner.items()} for key, inner in right.items()}
    assert check_param_scaling(answer).passed


# --- has_skip_connections: a global residual is not a skip connection ------------------------------
class NoSkipUNet(nn.Module):
    """A U without skips: everything goes through the bottom."""

    def __init__(self, in_channels=4, out_channels=4, base_channels=16, residual="none"):
        super().__init__()
        self.inner = SimpleUNet(in_channels, out_channels, base_channels, use_skips=False)
        self.residual = residual
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, timestep):
        h = self.inner(x, timestep)
        if self.residual == "add":
            return h + x            # global residual, no module sees x after the bottom
        if self.residual == "conv":
            return h + self.proj(x)  # a 1x1 conv of the raw input, added at the end
        return h


@pytest.mark.parametrize("residual", ["none", "add", "conv"])
def test_a_global_residual_does_not_count_as_skips(residual):
    assert not has_skip_connections(NoSkipUNet(residual=residual))
    fb = check_unet_shapes(lambda **kw: NoSkipUNet(residual=residual, **kw))
    assert [c.what_en for c in fb.failed()] == ["skip connections"], str(fb)


def test_skips_are_found_in_unets_that_have_them():
    assert has_skip_connections(SimpleUNet(4, 4, 16))
    assert has_skip_connections(ThreeLevelUNet())
