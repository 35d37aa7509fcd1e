"""Chapter 6 homework checkers: the reference passes, typical wrong answers fail with the right hint, nothing raises."""
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
    no_sqrt = lambda x, e, a, p: p * ((x - (1 - a) * e) / a) + (1 - p) * e  # noqa: E731
    assert "Square roots" in _hints(check_ddim_step(no_sqrt))
    x0_only = lambda x, e, a, p: p.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt()  # noqa: E731
    assert "noise direction" in _hints(check_ddim_step(x0_only))
    assert "ā_prev" in _hints(check_ddim_step(lambda x, e, a, p: x))


def test_ddim_bad_answers_never_raise():
    for answer in (None, lambda x, e, a, p: None, lambda x, e, a, p: x[:1], lambda x: x,
                   lambda x, e, a, p: torch.zeros(3)):
        fb = check_ddim_step(answer)
        assert not fb
        str(fb)
