"""Chapter 4 checkers: the reference answers pass, typical wrong answers fail with the right hint,
and no wrong answer makes a checker raise."""
import math

import pytest
import torch

from unetlab.embeddings import sinusoidal_embedding
from unetlab.homework import check_embedding, check_gap_prediction, check_similarity_matrix, check_smooth_embedding
from unetlab.homework.ch04 import GAP, SMOOTH_SPEC, gap_similarity


def sd_embedding(t, dim):
    """A learner's correct answer, written from the formula (not by calling the package)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def variant(flip, shift):
    return lambda t, dim: sinusoidal_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)


def failed_hints(fb):
    return " ".join(c.hint_en for c in fb.failed())


# ---------- exercise 4.1: the embedding ----------

def test_reference_embedding_passes():
    fb = check_embedding(sd_embedding)
    assert fb.passed, str(fb)
    assert len(fb.checks) == 6


@pytest.mark.parametrize(
    "answer, hint",
    [
        (variant(False, 1), "study note 003's formula"),
        (variant(False, 0), "sin and cos are swapped"),
        (variant(True, 1), "divided by half − 1"),
        (lambda t, d: sd_embedding(t, d).double(), "Convert the timesteps to float"),
        (lambda t, d: sd_embedding(t, d).T, "transposed"),
        (lambda t, d: sd_embedding(t, d)[:, : d // 2], "concatenate cos and sin"),
        (lambda t, d: sd_embedding(t, d).numpy(), "return the tensor"),
        (lambda t, d: sd_embedding(t.round(), d), "Do not round t"),
        (lambda t, d: sd_embedding(t, d) * 2, "At t=0"),
        (lambda t, d: sd_embedding(t * 1.01, d), "Check the frequencies"),
    ],
)
def test_wrong_embeddings_fail_with_hint(answer, hint):
    fb = check_embedding(answer)
    assert not fb.passed
    assert hint in failed_hints(fb), str(fb)


def test_embedding_checker_never_raises():
    def stub(t, dim):
        raise NotImplementedError

    fb = check_embedding(stub)
    assert not fb.passed and "NotImplementedError" in failed_hints(fb)
    fb = check_embedding(lambda t, d: 1 / 0)
    assert not fb.passed and "ZeroDivisionError" in fb.checks[0].detail_en
    fb = check_embedding(sd_embedding(torch.tensor([1]), 8))  # called instead of passed
    assert not fb.passed and "without calling it" in failed_hints(fb)
    str(fb)  # prints without error


# ---------- exercise 4.2: the similarity matrix ----------

TIMESTEPS = torch.arange(0, 1000, 50)


def unit_sim(emb):
    unit = emb / emb.norm(dim=1, keepdim=True)
    return unit @ unit.T


def test_reference_similarity_passes_for_tensor_numpy_and_list_timesteps():
    emb = sd_embedding(TIMESTEPS, 64)
    assert check_similarity_matrix(unit_sim(emb), TIMESTEPS, dim=64).passed
    assert check_similarity_matrix(unit_sim(emb).numpy(), TIMESTEPS.tolist(), dim=64).passed
    assert check_similarity_matrix(unit_sim(sd_embedding(TIMESTEPS, 320)), TIMESTEPS).passed


@pytest.mark.parametrize(
    "make_sim, hint",
    [
        (lambda e: e @ e.T, "raw dot product"),
        (lambda e: torch.nn.functional.normalize(e.T, dim=1) @ torch.nn.functional.normalize(e.T, dim=1).T, "E @ E.T"),
        (lambda e: torch.cdist(e, e), "looks like a distance"),
        (lambda e: unit_sim(variant(False, 1)(TIMESTEPS, 64)), "study note 003"),
        (lambda e: unit_sim(sd_embedding(TIMESTEPS, 320)), "dim=320"),
        (lambda e: unit_sim(e)[:-1], "E @ E.T"),
    ],
)
def test_wrong_similarity_fails_with_hint(make_sim, hint):
    fb = check_similarity_matrix(make_sim(sd_embedding(TIMESTEPS, 64)), TIMESTEPS, dim=64)
    assert not fb.passed
    assert hint in failed_hints(fb), str(fb)


@pytest.mark.parametrize("sim, timesteps, dim", [(None, TIMESTEPS, 64), ("abc", TIMESTEPS, 64),
                                                 (torch.eye(20), torch.zeros(2, 2), 64), (torch.eye(20), TIMESTEPS, 63)])
def test_similarity_checker_never_raises(sim, timesteps, dim):
    fb = check_similarity_matrix(sim, timesteps, dim=dim)
    assert not fb.passed
    str(fb)


def test_distance_matrix_of_the_exercise_gets_the_distance_hint():
    # the notebook's 40 timesteps: cdist's zero diagonal carries ~1e-3 of round-off
    ts = torch.arange(0, 1000, 25)
    e = sd_embedding(ts, 64)
    fb = check_similarity_matrix(torch.cdist(e, e), ts, dim=64)
    assert "looks like a distance" in " ".join(c.hint_en for c in fb.failed())


# ---------- exercises 4.3 and 4.4: the learner's own embedding ----------

def own_variant(t, dim, longest=1000.0):
    """A learner's own variant: SD's layout, geometric frequencies with a longest period of ~1000 instead of 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(longest) * torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def predicted_by_hand(dim=64, gap=GAP, longest=1000.0):
    """The prediction from the frequencies alone: mean_i cos(w_i gap), no embedding computed."""
    half = dim // 2
    return sum(math.cos(math.exp(-math.log(longest) * i / half) * gap) for i in range(half)) / half


def measured_by_hand(fn, dim=64, gap=GAP):
    e = torch.nn.functional.normalize(fn(torch.arange(1000), dim).double(), dim=1)
    return float((e[:-gap] * e[gap:]).sum(dim=1).mean())


def test_gap_prediction_reference_passes_and_the_formula_is_exact():
    predicted, measured = predicted_by_hand(), measured_by_hand(own_variant)
    assert abs(predicted - measured) < 1e-6
    fb = check_gap_prediction(own_variant, predicted, measured)
    assert fb.passed, str(fb)
    # a float32 tensor answer is fine too
    assert check_gap_prediction(own_variant, torch.tensor(predicted), torch.tensor(measured, dtype=torch.float32)).passed


def test_gap_prediction_stub_is_not_attempted():
    def stub(t, dim):
        raise NotImplementedError

    fb = check_gap_prediction(stub, None, None)
    assert fb.status == "not attempted", str(fb)
    # numbers filled in but the function not written: an attempt, told what is missing
    fb = check_gap_prediction(stub, 0.5, 0.5)
    assert fb.status == "failed" and "NotImplementedError" in fb.failed()[0].detail_en


@pytest.mark.parametrize("answer, which, hint", [
    # SD's own embedding: not the learner's variant
    (lambda: (sd_embedding, 0.7, 0.7), "own variant", "Change the frequencies"),
    # the raw dot product, not normalised
    (lambda: (own_variant, predicted_by_hand(), float((own_variant(torch.arange(1000), 64)[:-GAP] * own_variant(torch.arange(1000), 64)[GAP:]).sum(1).mean())),
     "measured", "raw dot product"),
    # measured at gap 1
    (lambda: (own_variant, predicted_by_hand(), measured_by_hand(own_variant, gap=1)), "measured", "value at gap 1"),
    # predicted with SD's frequencies (10000) instead of the learner's
    (lambda: (own_variant, predicted_by_hand(longest=10000.0), measured_by_hand(own_variant)), "prediction", "SD's frequencies"),
    # predicted from the fastest frequency only
    (lambda: (own_variant, math.cos(GAP), measured_by_hand(own_variant)), "prediction", "fastest frequency only"),
    # predicted at the wrong gap
    (lambda: (own_variant, predicted_by_hand(gap=1), measured_by_hand(own_variant)), "prediction", "value at gap 1"),
])
def test_gap_prediction_typical_mistakes_get_their_diagnosis(answer, which, hint):
    fb = check_gap_prediction(*answer())
    assert fb.status == "failed" and len(fb.failed()) == 1 and which in fb.failed()[0].what_en, str(fb)
    assert hint in fb.failed()[0].hint_en, str(fb)


def test_gap_prediction_recomputes_the_learner_variant():
    # the checker's value follows the function it is given, not a stored number
    slow = lambda t, dim: own_variant(t, dim, longest=5000.0)
    assert abs(gap_similarity(slow(torch.arange(1000), 64), GAP) - predicted_by_hand(longest=5000.0)) < 1e-6
    assert not check_gap_prediction(slow, predicted_by_hand(), measured_by_hand(own_variant)).passed


def smooth(t, dim):
    """A design that meets the spec: geometric frequencies from 0.06 rad/step (period ~105) down to 0.004."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(math.log(0.06), math.log(0.004), half, dtype=torch.float64))
    angles = t.double()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def test_smooth_embedding_reference_passes_and_sd_fails_the_near_half():
    fb = check_smooth_embedding(smooth)
    assert fb.passed, str(fb)
    fb = check_smooth_embedding(sd_embedding)
    assert [c.what_en for c in fb.failed()] == [f"mean similarity {GAP} steps apart ≥ {SMOOTH_SPEC['near']}"]
    assert "turn too fast" in fb.failed()[0].hint_en


def test_smooth_embedding_stub_is_not_attempted():
    def stub(t, dim):
        raise NotImplementedError

    assert check_smooth_embedding(stub).status == "not attempted"


@pytest.mark.parametrize("fn, hint", [
    # every frequency very slow: distant timesteps look alike
    (lambda t, dim: own_variant(t, dim, longest=1e6) * 0 + torch.cat([torch.cos(t.double()[:, None] * 1e-4 * torch.ones(dim // 2)),
                                                                   torch.sin(t.double()[:, None] * 1e-4 * torch.ones(dim // 2))], 1),
     "too slow"),
    # one frequency with a period of 250 steps: t and t + 250 coincide
    (lambda t, dim: torch.cat([torch.cos(t.double()[:, None] * 2 * math.pi / 250 * torch.ones(dim // 2)),
                               torch.sin(t.double()[:, None] * 2 * math.pi / 250 * torch.ones(dim // 2))], 1),
     "whole turns"),
])
def test_smooth_embedding_typical_mistakes_get_their_diagnosis(fn, hint):
    fb = check_smooth_embedding(fn)
    assert fb.status == "failed" and len(fb.failed()) == 1 and "pair" in fb.failed()[0].what_en, str(fb)
    assert hint in fb.failed()[0].hint_en, str(fb)


@pytest.mark.parametrize("checker", [lambda fn: check_gap_prediction(fn, 0.5, 0.5), check_smooth_embedding])
@pytest.mark.parametrize("fn", [None, 3, "abc", lambda t, dim: None, lambda t, dim: torch.zeros(len(t), dim),
                                lambda t, dim: torch.full((len(t), dim), float("nan")), lambda t, dim: torch.ones(3),
                                lambda t, dim: 1 / 0])
def test_own_embedding_checkers_never_raise(checker, fn):
    fb = checker(fn)
    assert not fb.passed
    str(fb)
