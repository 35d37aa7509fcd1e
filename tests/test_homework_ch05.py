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


# --- 5.3 the DAAM-style aggregation -------------------------------------------------------------------------
import torch.nn.functional as F  # noqa: E402

from unetlab.homework import check_aggregation, check_word_swap  # noqa: E402
from unetlab.homework.ch05 import _swap, reference_aggregation, reference_word_swap, swap_sample  # noqa: E402
from unetlab.homework.feedback import NOT_ATTEMPTED  # noqa: E402


def _agg(kind_filter=True, mode="bilinear", align=False, head=None, summed=False):
    def fn(records, token, size):
        per_layer = {}
        for r in records:
            if kind_filter and r.kind != "cross":
                continue
            h, w = r.size
            col = r.probs[..., token]
            col = col.mean(1) if head is None else col[:, head]
            per_layer.setdefault(r.layer, []).append(col.reshape(-1, h, w))
        maps = [torch.stack(v).mean(0) for v in per_layer.values()]
        kw = {"align_corners": align} if mode == "bilinear" else {}
        up = torch.stack([F.interpolate(m[:, None], size=size, mode=mode, **kw)[:, 0] for m in maps])
        return up.sum(0) if summed else up.mean(0)

    return fn


def test_aggregation_reference_and_a_rewritten_answer_pass():
    assert check_aggregation(reference_aggregation).passed
    assert check_aggregation(_agg()).passed


def test_aggregation_stub_is_not_attempted():
    def my_aggregate(records, token, size):
        raise NotImplementedError

    assert check_aggregation(my_aggregate).status == NOT_ATTEMPTED


@pytest.mark.parametrize("answer, needle", [
    (_agg(kind_filter=False), "r.kind"),
    (_agg(mode="nearest"), "bilinear"),
    (_agg(align=True), "align_corners=False"),
    (_agg(head=0), "head 0"),
    (_agg(summed=True), "summed"),
    (lambda recs, token, size: _agg()(recs, token + 1, size), "token + 1"),
    (lambda recs, token, size: _agg()([r for r in recs if r.size == (4, 6)], token, size), "largest grid"),
    (lambda recs, token, size: _agg()(recs, token, size)[0], "shape"),
])
def test_aggregation_typical_mistakes_get_their_hint(answer, needle):
    fb = check_aggregation(answer)
    assert not fb.passed and fb.status != NOT_ATTEMPTED
    assert needle in str(fb), str(fb)


# --- 5.4 the prompt-to-prompt word swap (samples the shipped small model: a few seconds each) ----------------
@pytest.fixture(scope="module")
def small_model():
    from unetlab.text2img import load_text2img

    return load_text2img()


def test_word_swap_reference_passes_and_changes_the_image(small_model):
    assert check_word_swap(reference_word_swap, model=small_model).passed
    src, edited = reference_word_swap(small_model, "a large red square at the bottom left", "a large red circle at the bottom left", 0)
    plain = swap_sample(small_model, "a large red circle at the bottom left", 0)
    # the injected maps move the edited image away from the plain target sample, and it is not the source
    assert (edited - plain).abs().mean() > 1e-3 and (edited - src).abs().mean() > 1e-3


def test_swap_sample_samples_the_model_as_it_was_trained(small_model):
    # the model's own sampler (schedule, prediction type, spacing): the same image as generate() gives
    from unetlab.homework.ch05 import SWAP_GUIDANCE, SWAP_STEPS
    from unetlab.text2img import generate

    prompt = "a small blue triangle at the top"
    steps = []
    image = swap_sample(small_model, prompt, 3, on_step=steps.append)
    expected = generate(small_model, prompt, guidance_scale=SWAP_GUIDANCE, num_inference_steps=SWAP_STEPS, seed=3)
    assert torch.allclose(image, expected, atol=1e-5)
    assert steps == [int(t) for t in small_model.make_sampler(SWAP_STEPS).timesteps]
    assert len(steps) == SWAP_STEPS


def test_word_swap_stub_is_not_attempted(small_model):
    def word_swap(model, source, target, seed):
        raise NotImplementedError

    assert check_word_swap(word_swap, model=small_model).status == NOT_ATTEMPTED


@pytest.mark.parametrize("answer, needle", [
    (lambda m, s, t, seed: (swap_sample(m, s, seed), swap_sample(m, t, seed)), "no map was injected"),
    (lambda m, s, t, seed: (swap_sample(m, s, seed), swap_sample(m, s, seed)), "used the source prompt again"),
    (lambda m, s, t, seed: _swap(m, s, t, seed, rows=(0, 1)), "both halves"),
    (lambda m, s, t, seed: _swap(m, s, t, seed, shift=1), "next step"),
    (lambda m, s, t, seed: (swap_sample(m, s, seed + 1), swap_sample(m, t, seed)), "random seed"),
])
def test_word_swap_typical_mistakes_get_their_hint(small_model, answer, needle):
    fb = check_word_swap(answer, model=small_model)
    assert not fb.passed and fb.status != NOT_ATTEMPTED
    assert needle in str(fb), str(fb)
