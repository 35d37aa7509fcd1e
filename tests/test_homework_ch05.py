"""Chapter 5 checkers: the reference passes, typical wrong answers fail with the right hint, nothing raises."""
import math

import pytest
import torch
import torch.nn as nn

from unetlab.homework import check_attention_map, check_self_attention
from unetlab.homework.ch05 import reference_attention_map, reference_self_attention


def _attn(scale_fn=lambda q: 1 / math.sqrt(q.shape[-1]), axis=-1, keys="k", transpose_out=False, values=True):
    def fn(x, w_q, w_k, w_v):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        k = q if keys == "q" else k
        weights = (q @ k.transpose(-2, -1) * scale_fn(q)).softmax(axis)
        out = (weights.transpose(-2, -1) if transpose_out else weights) @ (v if values else x)
        return out, weights

    return fn


def _first_failure(fb):
    failed = fb.failed()
    assert failed, str(fb)
    return failed[0]


def test_reference_passes():
    fb = check_self_attention(reference_self_attention)
    assert fb.passed, str(fb)
    assert check_attention_map(reference_attention_map).passed


def test_a_module_answer_passes_and_a_wrong_module_fails():
    class Good(nn.Module):
        def __init__(self, c=8, d=4):
            super().__init__()
            self.to_q, self.to_k, self.to_v = nn.Linear(c, d), nn.Linear(c, d), nn.Linear(c, c)

        def forward(self, x):
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
            return w @ v, w

    class NoScale(Good):
        def forward(self, x):
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            w = (q @ k.transpose(-2, -1)).softmax(-1)
            return w @ v, w

    torch.manual_seed(0)
    assert check_self_attention(Good()).passed
    assert not check_self_attention(NoScale()).passed
    bad = _first_failure(check_self_attention(nn.Linear(3, 3)))
    assert "to_q" in bad.what_en


@pytest.mark.parametrize(
    "answer, hint_word",
    [
        (_attn(scale_fn=lambda q: 1.0), "forgot to divide by √d"),
        (_attn(scale_fn=lambda q: 1 / q.shape[-1]), "divided by d"),
        (_attn(axis=-2), "dim=-2"),
        (_attn(keys="q"), "w_k"),
        (_attn(transpose_out=True), "transposed weights"),
        (_attn(values=False), "value projection"),
    ],
    ids=["no-scale", "scale-by-d", "wrong-axis", "keys-from-w_q", "transposed-out", "no-value-projection"],
)
def test_typical_self_attention_mistakes_get_their_hint(answer, hint_word):
    fb = check_self_attention(answer)
    assert not fb.passed
    assert hint_word in _first_failure(fb).hint_en


def test_sqrt_of_input_width_and_transposed_scores_are_named():
    def sqrt_c(x, w_q, w_k, w_v):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        w = (q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1])).softmax(-1)
        return w @ v, w

    def k_q(x, w_q, w_k, w_v):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        w = (k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        return w @ v, w

    assert "√C" in _first_failure(check_self_attention(sqrt_c)).hint_en
    assert "k @ qᵀ" in _first_failure(check_self_attention(k_q)).hint_en


@pytest.mark.parametrize(
    "answer, what, hint_word",
    [
        (3, "function or a module", "Pass the function itself"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "runs", "NotImplementedError"),
        (lambda x, *w: 1 / 0, "runs", "@"),
        (lambda x, q, k, v: reference_self_attention(x, q, k, v)[0], "two tensors", "return out, weights"),
        (lambda x, q, k, v: (x, x), "shape (B, N, N)", "q @ k.transpose"),
        (lambda x, q, k, v: ((x @ v), (x @ q) @ (x @ k).transpose(-2, -1)), "rows that sum to 1", "softmax"),
    ],
    ids=["not-callable", "stub", "raises", "one-tensor", "wrong-shape", "no-softmax"],
)
def test_broken_answers_fail_without_raising(answer, what, hint_word):
    fb = check_self_attention(answer)
    first = _first_failure(fb)
    assert what in first.what_en
    assert hint_word in first.hint_en
    str(fb)  # prints in both languages without raising


def test_in_place_change_of_inputs_is_caught():
    def in_place(x, w_q, w_k, w_v):
        out = reference_self_attention(x, w_q, w_k, w_v)
        w_q.mul_(2)
        return out

    assert _first_failure(check_self_attention(in_place)).what_en == "leaves its inputs unchanged"


@pytest.mark.parametrize(
    "answer, hint_word",
    [
        (lambda W, q, s: W[:, q[0] * s[1] + q[1]].reshape(s), "took a column"),
        (lambda W, q, s: W[q[1] * s[0] + q[0]].reshape(s), "not x·h + y"),
        (lambda W, q, s: W[(q[0] * s[0] + q[1]) % (s[0] * s[1])].reshape(s), "times the width"),
        (lambda W, q, s: W[q[0] * s[1] + q[1]].reshape(s[1], s[0]), "height first"),
        (lambda W, q, s: W[q[0] * s[1] + q[1]].reshape(s).softmax(-1), "y * w + x"),
        (lambda W, q, s: "map", "(h, w) tensor"),
        (None, "Pass the function itself"),
    ],
    ids=["column", "column-major", "y-times-h", "swapped-shape", "renormalised", "not-a-tensor", "not-callable"],
)
def test_attention_map_mistakes(answer, hint_word):
    fb = check_attention_map(answer)
    assert not fb.passed
    assert hint_word in _first_failure(fb).hint_en
