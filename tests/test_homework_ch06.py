"""Chapter 6 homework checkers: the reference passes, typical wrong answers fail with the right hint, nothing raises."""
import pytest
import torch

from unetlab.homework import check_ddim_step, check_guidance
from unetlab.homework.ch06 import reference_ddim_step, reference_guidance


def _hints(fb):
    return " ".join(c.hint_en for c in fb.failed())


def test_guidance_reference_passes():
    fb = check_guidance(reference_guidance)
    assert fb.passed, str(fb)
    assert "All checks passed" in str(fb)


def test_guidance_typical_mistakes():
    swapped = lambda u, c, s: c + s * (u - c)  # noqa: E731
    fb = check_guidance(swapped)
    assert not fb and "swapped" in _hints(fb)
    from_text = lambda u, c, s: c + s * (c - u)  # noqa: E731
    assert "starting point is eps_uncond" in _hints(check_guidance(from_text))
    no_brackets = lambda u, c, s: u + s * c - u  # noqa: E731
    assert "Missing brackets" in _hints(check_guidance(no_brackets))


def test_guidance_without_negative_check_fails_only_that():
    fb = check_guidance(lambda u, c, s: u + s * (c - u))
    failed = fb.failed()
    assert len(failed) == 1 and "ValueError" in failed[0].what_en


def test_guidance_bad_answers_never_raise():
    for answer in (None, 3, lambda u, c, s: "x", lambda u, c, s: u[0], lambda u, c, s: 1 / 0, lambda u: u):
        fb = check_guidance(answer)
        assert not fb
        str(fb)
    fb = check_guidance(lambda u, c, s: 1 / 0)
    assert "ZeroDivisionError" in str(fb)


def test_ddim_reference_passes():
    fb = check_ddim_step(reference_ddim_step)
    assert fb.passed, str(fb)


def test_ddim_typical_mistakes():
    # 6.3's epsilon lines with v in place of eps: nan at t = 999 (ā = 0), the v-for-ε hint elsewhere
    v_as_eps = lambda x, v, a, p: p.sqrt() * (x - (1 - a).sqrt() * v) / a.sqrt() + (1 - p).sqrt() * v  # noqa: E731
    fb = check_ddim_step(v_as_eps)
    assert "dividing by √ā_t" in _hints(fb) and "taken for ε" in _hints(fb)
    x0_only = lambda x, v, a, p: p.sqrt() * (a.sqrt() * x - (1 - a).sqrt() * v)  # noqa: E731
    assert "noise direction" in _hints(check_ddim_step(x0_only))
    flipped = lambda x, v, a, p: reference_ddim_step(x, -v, a, p)  # noqa: E731
    assert "sign of v" in _hints(check_ddim_step(flipped))
    assert "ā_prev" in _hints(check_ddim_step(lambda x, v, a, p: x))


def test_ddim_step_is_a_rotation_so_the_two_slips_agree():
    # with sqrt(abar) = cos(phi): x_prev = cos(d) x_t - sin(d) v, d = phi_t - phi_prev; swapping the two abar
    # or flipping v both turn the other way, which is why one hint covers both
    import math
    x, v = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    a, p = torch.tensor(0.3), torch.tensor(0.6)
    d = math.acos(a.sqrt()) - math.acos(p.sqrt())
    assert torch.allclose(reference_ddim_step(x, v, a, p), math.cos(d) * x - math.sin(d) * v, atol=1e-6)
    assert torch.allclose(reference_ddim_step(x, v, p, a), reference_ddim_step(x, -v, a, p), atol=1e-6)


def test_ddim_step_equals_the_sampler_of_the_retrained_model():
    from unetlab.text2img import build_text2img

    sampler = build_text2img().make_sampler(25)
    assert int(sampler.timesteps[0]) == 999 and float(sampler.schedule.alphas_cumprod[999]) == 0.0
    x, v = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    abar = sampler.schedule.alphas_cumprod
    assert torch.allclose(reference_ddim_step(x, v, abar[999], abar[959]), sampler.step(v, 999, x)[0], atol=1e-5)


def test_ddim_bad_answers_never_raise():
    import functools

    class Obj:
        def __call__(self, x, e, a, p):
            return (x, x)

    for answer in (None, lambda x, e, a, p: None, lambda x, e, a, p: x[:1], lambda x: x,
                   lambda x, e, a, p: torch.zeros(3), lambda x, e, a, p: (x, e), lambda x, e, a, p: [],
                   lambda x, e, a, p: ("x", 1), lambda x, e, a, p: 1 / 0, lambda x, e, a, p: x.to(torch.complex64),
                   lambda x, e, a, p: x.long(), lambda x, e, a, p: x + float("nan"), Obj(),
                   functools.partial(lambda k, x, e, a, p: x * k, 2.0), print, torch.add):
        fb = check_ddim_step(answer)
        assert not fb
        str(fb)


def test_ddim_reference_in_float64_passes():
    fb = check_ddim_step(lambda x, v, a, p: reference_ddim_step(x.double(), v.double(), a.double(), p.double()))
    assert fb.passed, str(fb)


def test_ddim_tuple_like_sampler_step_gets_its_own_hint():
    def like_step(x, v, a, p):
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        return reference_ddim_step(x, v, a, p), x0

    fb = check_ddim_step(like_step)
    assert not fb and fb.status == "failed", str(fb)
    assert "Return x_prev alone (one tensor), not a (x_prev, x0) tuple like sampler.step." in _hints(fb)
    assert "只返回 x_prev（一个张量），不要像 sampler.step 那样返回 (x_prev, x0) 元组。" in str(fb)
    assert "first element is the right x_prev" in str(fb)
    # not the guidance exercises' hint
    assert "two predictions" not in str(fb)
    fb = check_ddim_step(lambda x, v, a, p: [x * 2, x])
    assert "not a (x_prev, x0) tuple" in _hints(fb) and "first element is the right" not in str(fb)


def test_ddim_other_non_tensors_and_shapes_get_ddim_hints():
    assert "one tensor of x_t's shape" in _hints(check_ddim_step(lambda x, v, a, p: 3.0))
    fb = check_ddim_step(lambda x, v, a, p: reference_ddim_step(x, v, a, p).mean(0))
    assert "every element takes its own step" in _hints(fb) and "two halves" not in str(fb)


def test_ddim_unrecognised_mistake_gets_a_self_test_not_the_solution():
    # x0 right, eps with a wrong coefficient: none of the named slips
    def wrong_eps(x, v, a, p):
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        eps = x + a.sqrt() * v
        return p.sqrt() * x0 + (1 - p).sqrt() * eps

    fb = check_ddim_step(wrong_eps)
    hints = _hints(fb)
    assert "Put your x̂0 and ε̂ back into x_t = √ā·x0 + √(1−ā)·ε and v = √ā·ε − √(1−ā)·x0: do both hold?" in hints
    assert "把你的 x̂0、ε̂ 代回 x_t = √ā·x0 + √(1−ā)·ε 和 v = √ā·ε − √(1−ā)·x0，两个等式都成立吗？" in str(fb)
    # the closed form of x0 and ε is not given away
    for solution in ("x0 = √ā_t·x_t", "√(1−ā_t)·x_t + √ā_t·v", "ε = √(1−ā"):
        assert solution not in str(fb), str(fb)


def test_ddim_v_flipped_in_x0_only_at_t999_asks_about_zero_snr():
    # at ā = 0 this cannot be told from "v flipped everywhere" or "the two ā swapped": no sign hint there
    def flipped_in_x0(x, v, a, p):
        x0 = a.sqrt() * x + (1 - a).sqrt() * v
        eps = (1 - a).sqrt() * x + a.sqrt() * v
        return p.sqrt() * x0 + (1 - p).sqrt() * eps

    fb = check_ddim_step(flipped_in_x0)
    first = next(c for c in fb.checks if "t = 999" in c.what_en)
    assert not first.passed
    assert first.hint_en == "At t = 999, ā = 0: x̂0 must be −v and ε̂ must be x_t. Check what your x̂0 and ε̂ are at ā = 0."
    assert first.hint_zh == "t = 999 时 ā = 0：x̂0 应等于 −v，ε̂ 应等于 x_t。检查你的 x̂0 和 ε̂ 在 ā = 0 时各是什么。"
    assert "sign of v" not in _hints(fb), str(fb)


def test_ddim_sign_hint_only_where_it_is_right():
    flipped = lambda x, v, a, p: reference_ddim_step(x, -v, a, p)  # noqa: E731
    swapped = lambda x, v, a, p: reference_ddim_step(x, v, p, a)  # noqa: E731
    for answer in (flipped, swapped):
        fb = check_ddim_step(answer)
        by_t = {c.what_en.split(" → ")[0].split("t = ")[1]: c for c in fb.checks if "t = " in c.what_en}
        assert "x̂0 must be −v" in by_t["999"].hint_en and "sign of v" not in by_t["999"].hint_en, str(fb)
        assert "sign of v" in by_t["479"].hint_en and "sign of v" in by_t["39"].hint_en, str(fb)


def test_ddim_nan_at_t999_keeps_the_division_hint():
    # v flipped, and a division by √ā_t: nan at t = 999, where the finite part would get the ā = 0 hint
    fb = check_ddim_step(lambda x, v, a, p: reference_ddim_step(x, -v, a, p) + 0 * x / a.sqrt())
    first = next(c for c in fb.checks if "t = 999" in c.what_en)
    assert "dividing by √ā_t" in first.hint_en and "x̂0 must be −v" not in first.hint_en, str(fb)


def test_ddim_stub_is_not_attempted_and_its_hint_gives_equations_only():
    def my_ddim_step(x_t, v, alpha_bar_t, alpha_bar_prev):
        # TODO: 你的代码 | your code
        return x_t

    fb = check_ddim_step(my_ddim_step)
    assert fb.status == "not attempted" and not fb, str(fb)
    assert "x0 = √ā_t·x_t" not in str(fb) and "√(1−ā_t)·x_t + √ā_t·v" not in str(fb)


# --- 6.3 a negative prompt ---------------------------------------------------------------------------------------

import torch as _torch

from unetlab.homework import check_ddim_sigma, check_negative_prompt
from unetlab.homework.ch06 import StandInUNet, reference_ddim_sigma, reference_negative_prompt
from unetlab.samplers import ddim_step as _ddim_step
from unetlab.schedule import NoiseSchedule as _NoiseSchedule


def test_negative_prompt_reference_passes():
    fb = check_negative_prompt(reference_negative_prompt)
    assert fb.passed, str(fb)


def test_negative_prompt_two_calls_right_values_but_flagged():
    def two_calls(unet, x, t, c, n, s):
        e_n, e_c = unet(x, t, n), unet(x, t, c)
        return e_n + s * (e_c - e_n)

    fb = check_negative_prompt(two_calls)
    assert not fb.passed and "runs once" in str(fb)
    # every value check passed: only the one-call check failed
    assert sum(not c.passed for c in fb.checks) == 1, str(fb)


def _neg_by_halves(combine):
    def fn(unet, x, t, c, n, s):
        out = unet(_torch.cat([x] * 2), _torch.cat([t] * 2), _torch.cat([n, c]))
        e_n, e_c = out.chunk(2)
        return combine(e_n, e_c, s, unet, x, t, n)
    return fn


@pytest.mark.parametrize("combine, hint", [
    (lambda e_n, e_c, s, *_: e_c + s * (e_n - e_c), "halves are swapped"),
    (lambda e_n, e_c, s, *_: e_c + s * (e_c - e_n), "starting point is eps_neg"),
    (lambda e_n, e_c, s, unet, x, t, n: (lambda e_u: e_u + s * (e_c - e_u) - s * (e_n - e_u))(unet(x, t, _torch.zeros_like(n))),
     "not a third term"),
])
def test_negative_prompt_typical_mistakes(combine, hint):
    fb = check_negative_prompt(_neg_by_halves(combine))
    assert not fb.passed and hint in _hints(fb), str(fb)


def test_negative_prompt_ignoring_the_negative_fails():
    fb = check_negative_prompt(lambda unet, x, t, c, n, s: unet(x, t, c))
    assert not fb.passed and fb.status != "not attempted", str(fb)


def test_negative_prompt_crashing_answer_does_not_raise():
    fb = check_negative_prompt(lambda *a: 1 / 0)
    assert not fb.passed


def test_stand_in_unet_reads_every_input():
    unet = StandInUNet()
    x, c = _torch.randn(2, 3, 8, 8), _torch.randn(2, 5, 8)
    t = _torch.tensor([700, 300])
    base = unet(x, t, c)
    assert not _torch.allclose(base, unet(x, t, c + 1))
    assert not _torch.allclose(base, unet(x, t + 1, c))
    assert not _torch.allclose(base, unet(x + 1, t, c))


# --- 6.4 DDIM's sigma -------------------------------------------------------------------------------------------

def test_ddim_sigma_reference_passes_and_equals_ddim_step():
    assert check_ddim_sigma(reference_ddim_sigma).passed
    # the reference's sigma is the one ddim_step adds: x_prev(eta, noise) - x_prev(eta, 0) = sigma * noise
    s = _NoiseSchedule()
    x, e, z = _torch.randn(1, 3, 4, 4), _torch.randn(1, 3, 4, 4), _torch.randn(1, 3, 4, 4)
    with_noise, _ = _ddim_step(s, e, 481, x, 441, eta=0.5, noise=z)
    without, _ = _ddim_step(s, e, 481, x, 441, eta=0.5, noise=_torch.zeros_like(z))
    sigma = reference_ddim_sigma(s.alphas_cumprod[481], s.alphas_cumprod[441], 0.5)
    assert _torch.allclose(with_noise - without, sigma * z, atol=1e-6)


@pytest.mark.parametrize("answer, hint", [
    (lambda a, p, e: e * (1 - p) / (1 - a) * (1 - a / p), "variance, not the standard deviation"),
    (lambda a, p, e: e**2 * ((1 - p) / (1 - a) * (1 - a / p)).sqrt(), "not η²"),
    (lambda a, p, e: e * ((1 - p) / (1 - a) * (1 - p / a)).abs().sqrt(), "upside down"),
    (lambda a, p, e: e * (1 - a / p).sqrt(), "Only √β_t"),
])
def test_ddim_sigma_typical_mistakes(answer, hint):
    fb = check_ddim_sigma(answer)
    assert not fb.passed and hint in _hints(fb), str(fb)


def test_ddim_sigma_not_a_number_and_crash():
    assert not check_ddim_sigma(lambda a, p, e: "sigma").passed
    assert not check_ddim_sigma(lambda a, p, e: 1 / 0).passed
