"""Chapter 4 checkers: the reference answers pass, typical wrong answers fail with the right hint,
and no wrong answer makes a checker raise."""
import math

import pytest
import torch

from unetlab.embeddings import sinusoidal_embedding
from unetlab.homework import check_embedding, check_pattern_answers, check_similarity_matrix
from unetlab.homework.ch04 import PATTERN_STATEMENTS, _pattern_truths


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


# ---------- exercise 4.3: the pattern ----------

def test_truths_are_computed_and_as_taught():
    truths = {k: v[0] for k, v in _pattern_truths().items()}
    assert set(truths) == set(PATTERN_STATEMENTS)
    assert truths == {
        "same_norm": True, "depends_on_gap": True, "neighbours_close": True, "monotonic": False,
        "ends_orthogonal": False, "low_index_fast": True, "same_as_seed003": False,
    }


def test_truths_follow_the_embedding():
    # with a tiny width the slow dimensions are gone and the statements change with it
    small = {k: v[0] for k, v in _pattern_truths(dim=4, num_timesteps=1000).items()}
    assert small["neighbours_close"] is False  # sim(t, t+1) = (cos 1 + cos 0.01) / 2 < 0.9
    assert small["same_norm"] and small["depends_on_gap"]


def test_pattern_answers():
    right = {k: v[0] for k, v in _pattern_truths().items()}
    assert check_pattern_answers(right).passed
    wrong = dict(right, monotonic=True)
    fb = check_pattern_answers(wrong)
    assert [c.what_en.split("]")[0] for c in fb.failed()] == ["[monotonic"]
    assert "rises again" in fb.failed()[0].detail_en
    blank = check_pattern_answers({k: None for k in PATTERN_STATEMENTS})
    assert len(blank.failed()) == len(PATTERN_STATEMENTS)
    assert all("not answered" in c.detail_en for c in blank.failed())
    # the blank answer gives no verdict away
    assert not any("holds" in c.detail_en for c in blank.checks)
    # a string or 1/0 is not a bool: say so, without giving the verdict away
    quoted = check_pattern_answers(dict(right, same_norm="True", monotonic=0))
    assert [c.what_en.split("]")[0] for c in quoted.failed()] == ["[same_norm", "[monotonic"]
    assert all("must be True or False" in c.detail_en and "holds" not in c.detail_en for c in quoted.failed())
    # answers computed with torch or numpy are bools too
    import numpy as np
    computed = dict(right, same_norm=torch.tensor(right["same_norm"]), monotonic=np.bool_(right["monotonic"]))
    assert check_pattern_answers(computed).passed
    unknown = check_pattern_answers(dict(right, typo=True))
    assert not unknown.passed and "unknown keys" in unknown.checks[0].detail_en
    assert not check_pattern_answers(["same_norm"]).passed


def test_distance_matrix_of_the_exercise_gets_the_distance_hint():
    # the notebook's 40 timesteps: cdist's zero diagonal carries ~1e-3 of round-off
    ts = torch.arange(0, 1000, 25)
    e = sd_embedding(ts, 64)
    fb = check_similarity_matrix(torch.cdist(e, e), ts, dim=64)
    assert "looks like a distance" in " ".join(c.hint_en for c in fb.failed())
