"""Chapter 1 checkers: the reference answers pass; typical wrong answers fail with the right hint, never a traceback."""
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn

from unetlab import note003
from unetlab.homework import Feedback, check_layer_shapes, check_param_shares, check_unet_shapes
from unetlab.homework.ch01 import PARTS, SHAPE_POINTS, has_skip_connections, layer_shape_truth, param_share_truth
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


# --- check_layer_shapes ---------------------------------------------------------------------------
def test_layer_shapes_truth_and_reference():
    truth = layer_shape_truth()
    assert set(truth) == set(SHAPE_POINTS)
    assert truth["up1.res input"] == (2, 192, 32, 32) and truth["out output"] == (2, 4, 64, 64)
    assert check_layer_shapes(truth).passed
    assert check_layer_shapes({k: torch.Size(v) for k, v in truth.items()}).passed
    assert check_layer_shapes({k: list(v) for k, v in truth.items()}).passed


def test_layer_shapes_seed_concat_mistake():
    answer = dict(layer_shape_truth())
    answer["up1.res input"] = (2, 128, 32, 32)
    feedback = check_layer_shapes(answer)
    assert [c.what_en for c in feedback.failed()] == ["up1.res input"]
    assert "channels add up" in failed_text(feedback)


@pytest.mark.parametrize(
    "answer,hint",
    [
        (None, "keys of SHAPE_POINTS"),
        ([(2, 256)], "keys of SHAPE_POINTS"),
        ({}, "exactly those of SHAPE_POINTS"),
        ({p: None for p in SHAPE_POINTS}, "Replace each None"),
        ({p: "2x256" for p in SHAPE_POINTS}, "tuple of ints"),
        ({**{p: (1,) for p in SHAPE_POINTS}, "time_embed output": (2, 64)}, "4 × 64"),
    ],
)
def test_layer_shapes_wrong_answers(answer, hint):
    feedback = check_layer_shapes(answer)
    assert not feedback.passed and hint in failed_text(feedback)


def test_layer_shapes_unanswered_points_are_one_check():
    answer = {**layer_shape_truth(), "up1 output": None, "out output": None}
    feedback = check_layer_shapes(answer)
    assert [c.what_en for c in feedback.failed()] == ["predictions not filled in"]
    assert "['up1 output', 'out output']" in failed_text(feedback)


def test_layer_shapes_extra_key():
    answer = {**layer_shape_truth(), "mid output": (2, 128, 16, 16)}
    feedback = check_layer_shapes(answer)
    assert [c.what_en for c in feedback.failed()] == ["a prediction for every point"]
    assert "mid output" in failed_text(feedback)


# --- check_param_shares ---------------------------------------------------------------------------
def reference_shares(model):
    total = sum(p.numel() for p in model.parameters())
    return {name: sum(p.numel() for p in child.parameters()) / total for name, child in model.named_children()}


def test_param_shares_reference_passes():
    answer = reference_shares(SimpleUNet())
    assert set(answer) == set(PARTS)
    assert check_param_shares(answer).passed
    assert check_param_shares({k: round(v, 3) for k, v in answer.items()}).passed
    assert check_param_shares({k: torch.tensor(v) for k, v in answer.items()}).passed
    assert param_share_truth() == pytest.approx(answer)


def test_param_shares_other_configs():
    assert check_param_shares(reference_shares(SimpleUNet(base_channels=32, use_skips=False)), base_channels=32, use_skips=False).passed
    # shares barely depend on the width (convolutions grow as C²), but skips do matter
    assert not check_param_shares(reference_shares(SimpleUNet(base_channels=32)), base_channels=32, use_skips=False).passed


def counts(model):
    return {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}


def seed_up1_shares():
    model = SimpleUNet()
    model.up1 = UpBlock(128, 64, 256, skip_channels=64)  # the seed's ResBlock(64 * 2, 64)
    return reference_shares(model)


@pytest.mark.parametrize(
    "answer,failed,hint",
    [
        (lambda: counts(SimpleUNet()), "the shares sum to 1", "divide by the total"),
        (lambda: {k: 100 * v for k, v in reference_shares(SimpleUNet()).items()}, "the shares sum to 1", "divide by 100"),
        (lambda: {k: 0.5 for k in PARTS}, "the shares sum to 1", "add up to 1"),
        (seed_up1_shares, "each part's share", "64 + 128 = 192"),
        (lambda: reference_shares(SimpleUNet(use_skips=False)), "each part's share", "use_skips=False"),
        (lambda: {**reference_shares(SimpleUNet()), "down1": 0.0, "down2": 0.35374}, "each part's share", "p.numel()"),
        (lambda: {"encoder": 0.5, "decoder": 0.5}, "every part is there", "named_children"),
        (lambda: {k: "0.1" for k in PARTS}, "the shares are numbers", "fraction"),
        (lambda: {k: float("nan") for k in PARTS}, "the shares are numbers", "fraction"),
        (lambda: [0.1] * 7, "the answer is a dict", "share"),
        (lambda: None, "the answer is a dict", "share"),
    ],
)
def test_param_shares_wrong_answers(answer, failed, hint):
    feedback = check_param_shares(answer())
    assert not feedback.passed
    assert failed in [c.what_en for c in feedback.failed()], str(feedback)
    assert hint in failed_text(feedback), str(feedback)


def test_missing_part_reported_without_crash():
    answer = reference_shares(SimpleUNet())
    del answer["out"]
    feedback = check_param_shares(answer)
    assert [c.what_en for c in feedback.failed()] == ["every part is there"]
    assert "out" in failed_text(feedback)


class Weird:
    """An object that breaks whatever touches it."""

    def __getattr__(self, name):
        raise RuntimeError("boom")


WEIRD_ANSWERS = [None, 0, 1.5, "text", b"bytes", [], (), {}, {None: None}, Weird(), torch.zeros(3), nn.Linear(2, 2),
                 {k: Weird() for k in PARTS}, {k: [1, 2] for k in SHAPE_POINTS}, {k: torch.zeros(2) for k in PARTS}]


@pytest.mark.parametrize("checker", [check_unet_shapes, check_layer_shapes, check_param_shares])
def test_checkers_never_raise_on_wrong_answers(checker):
    for answer in WEIRD_ANSWERS:
        feedback = checker(answer)
        assert isinstance(feedback, Feedback) and not feedback.passed, (checker.__name__, answer)
        str(feedback)


def test_numpy_answers_are_accepted():
    np = pytest.importorskip("numpy")
    truth = layer_shape_truth()
    assert check_layer_shapes({k: tuple(np.int64(v) for v in shape) for k, shape in truth.items()}).passed
    shares = param_share_truth()
    assert check_param_shares({k: np.float64(v) for k, v in shares.items()}).passed
    assert check_param_shares({k: np.array(v) for k, v in shares.items()}).passed


def test_safety_net_turns_internal_errors_into_feedback(monkeypatch):
    from unetlab.homework import ch01

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(ch01, "layer_shape_truth", broken)
    feedback = ch01.check_layer_shapes({})
    assert not feedback.passed and feedback.failed()[0].what_en == "error while checking your answer"
    assert "KeyError" in feedback.failed()[0].detail_en
