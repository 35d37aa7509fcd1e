"""Chapter 3 homework checkers: the reference answers pass, the usual slips fail with the right hint,
the untouched stubs are "not attempted yet", and retrained models are checked against themselves."""
import pytest
import torch
import torch.nn.functional as F

from unetlab.checkpoints import load_checkpoint
from unetlab.homework import check_crossover, check_skip_ablation
from unetlab.homework.ch03 import ABLATION_TIMESTEPS, SKIPS, homework_images, mean_training_image
from unetlab.schedule import denoising_quality, fixed_noise, psnr

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return {row: load_checkpoint(name).model for row, name in (("skips", "simple-skips"), ("noskips", "simple-noskips"))}


@pytest.fixture(scope="module")
def retrained():
    """Models retrained here (a few steps, another training seed): what the chapter gets on a CUDA machine."""
    from unetlab.train import train

    return {row: train(name, steps=3, batch_size=4, seed=1, progress=False).model.cpu()
            for row, name in (("skips", "simple-skips"), ("noskips", "simple-noskips"))}


def blur(skip):
    """A learner's own replacement: a 3x3 box blur of the skip (does up2 matter for its fine detail?)."""
    return F.avg_pool2d(skip, 3, stride=1, padding=1, count_include_pad=False)


def learner_ablation(replace_fn, model):
    """What a learner writes with the chapter's tools: PSNR with one skip replaced, minus intact."""
    x0 = homework_images()
    intact = denoising_quality(model, x0, ABLATION_TIMESTEPS, seed=0)
    table = {}
    for name in SKIPS:
        replaced = denoising_quality(lambda x_t, t: model(x_t, t, skip_replace={name: replace_fn}), x0, ABLATION_TIMESTEPS, seed=0)
        table[name] = {t: replaced[t]["psnr"] - intact[t]["psnr"] for t in ABLATION_TIMESTEPS}
    verdict = {t: min(SKIPS, key=lambda name: table[name][t]) for t in ABLATION_TIMESTEPS}
    return table, verdict, intact


@pytest.fixture(scope="module")
def answer(models):
    return learner_ablation(blur, models["skips"])


STUB_TABLE = {"up1": {t: None for t in ABLATION_TIMESTEPS}, "up2": {t: None for t in ABLATION_TIMESTEPS}}
STUB_VERDICT = {t: None for t in ABLATION_TIMESTEPS}


def stub_replacement(skip):
    raise NotImplementedError


def test_ablation_reference_passes(models, answer):
    table, verdict, _ = answer
    fb = check_skip_ablation(blur, table, verdict, models=models)
    assert fb.passed, str(fb)


def test_ablation_stub_is_not_attempted():
    assert check_skip_ablation(stub_replacement, STUB_TABLE, STUB_VERDICT).status == "not attempted"


def flip(table):
    return {name: {t: -v for t, v in row.items()} for name, row in table.items()}


@pytest.mark.parametrize("make, hint", [
    (lambda tb, v, i: (blur, flip(tb), v), "sign is flipped"),
    (lambda tb, v, i: (blur, {"up1": tb["up2"], "up2": tb["up1"]}, v), "rows 'up1' and 'up2' are swapped"),
    (lambda tb, v, i: (blur, {n: {t: tb[n][t] + i[t]["psnr"] for t in ABLATION_TIMESTEPS} for n in SKIPS}, v),
     "PSNR after the replacement itself"),
    (lambda tb, v, i: (blur, tb, {t: ("up1" if s == "up2" else "up2") for t, s in v.items()}), "picked the one that costs less"),
    (lambda tb, v, i: (lambda s: torch.zeros_like(s), tb, v), "chapter already measured"),
    (lambda tb, v, i: (lambda s: s.roll(1, dims=0), tb, v), "chapter already measured"),
    (lambda tb, v, i: (lambda s: (s.sum(0, keepdim=True) - s) / (s.shape[0] - 1), tb, v), "chapter already measured"),
    (lambda tb, v, i: (lambda s: s + torch.randn_like(s), tb, v), "generator of your own"),
    (lambda tb, v, i: (lambda s: s[:, :1], tb, v), "Return a tensor of the input's shape"),
])
def test_ablation_typical_mistakes_get_their_diagnosis(models, answer, make, hint):
    table, verdict, intact = answer
    fb = check_skip_ablation(*make(table, verdict, intact), models=models)
    assert fb.status == "failed", str(fb)
    assert any(hint in c.hint_en for c in fb.failed()), str(fb)


def test_ablation_with_retrained_models(retrained, models, answer):
    table, verdict, _ = learner_ablation(blur, retrained["skips"])
    shipped, _, _ = answer
    assert any(abs(table[n][t] - shipped[n][t]) > 0.5 for n in SKIPS for t in ABLATION_TIMESTEPS)
    assert check_skip_ablation(blur, table, verdict, models=retrained).passed
    # compared with the shipped checkpoint instead, the same correct answer fails: models= matters
    assert not check_skip_ablation(blur, table, verdict).passed


@pytest.mark.parametrize("fn, table, verdict", [
    (None, STUB_TABLE, STUB_VERDICT), (blur, None, None), (blur, {"up1": 1}, {}), (blur, "abc", STUB_VERDICT),
    (lambda s: 1 / 0, STUB_TABLE, STUB_VERDICT), (stub_replacement, {"up1": {10: 1.0}}, STUB_VERDICT),
])
def test_ablation_checker_never_raises(fn, table, verdict):
    fb = check_skip_ablation(fn, table, verdict)
    assert not fb.passed and fb.status == "failed", str(fb)


# --- 3.2 the crossover ----------------------------------------------------------------------------
def bisect_crossover(model):
    """The learner's search: the model wins at lo and loses at hi; halve the bracket."""
    x0 = homework_images()
    noise = fixed_noise(x0.shape, 0)
    baseline = psnr(mean_training_image().expand_as(x0), x0).item()

    def wins(t):
        from unetlab.schedule import denoise
        _, estimate = denoise(model, x0, t, noise)
        return psnr(estimate, x0).item() > baseline

    lo, hi = 500, 999
    assert wins(lo) and not wins(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if wins(mid) else (lo, mid)
    return hi


@pytest.fixture(scope="module")
def crossing(models):
    return {row: bisect_crossover(model) for row, model in models.items()}


def test_crossover_reference_passes(models, crossing):
    fb = check_crossover(crossing, models=models)
    assert fb.passed, str(fb)
    # the model with skips holds out longer
    assert crossing["skips"] > crossing["noskips"]


def test_crossover_stub_is_not_attempted():
    assert check_crossover({"skips": None, "noskips": None}).status == "not attempted"


@pytest.mark.parametrize("shift, hint", [(-60, "still beats the mean image"), (+60, "already loses")])
def test_crossover_typical_mistakes(models, crossing, shift, hint):
    fb = check_crossover({**crossing, "skips": crossing["skips"] + shift}, models=models)
    assert fb.status == "failed" and len(fb.failed()) == 1 and hint in fb.failed()[0].hint_en, str(fb)


@pytest.mark.parametrize("answer", [None, {}, {"skips": 800}, {"skips": 800.5, "noskips": 750}, {"skips": 1200, "noskips": 750},
                                    {"skips": "800", "noskips": 750}, [800, 750]])
def test_crossover_layout_mistakes_never_raise(answer):
    fb = check_crossover(answer)
    assert fb.status == "failed" and not fb.passed, str(fb)


def test_crossover_with_retrained_models(retrained, crossing):
    fb = check_crossover({"skips": 600, "noskips": 600}, models=retrained)
    # the barely trained models lose long before: the checker recomputes on them, not on the shipped ones
    assert not fb.passed and all("already loses" in c.hint_en or "still beats" in c.hint_en for c in fb.failed())
