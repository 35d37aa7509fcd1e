"""unetlab.sampling_lessons: the starting points of the signal-leak lesson, sampling, rates read by the ruler."""
import math

import pytest
import torch

from unetlab.data import TRAIN_SEED, make_shapes
from unetlab.ruler import read_image, score_readings, wilson_interval
from unetlab.sampling_lessons import (EPS_FIX, RATES, accuracy_over_seeds, background_colour, backgrounds,
                                      first_captions, mean_training_image, noise_means, sample_images, start_noise)
from unetlab.schedule import NoiseSchedule


def test_start_noise_kinds_share_z():
    shape = (4, 3, 32, 32)
    z = start_noise(shape, torch.Generator().manual_seed(3), "noise")
    mean = mean_training_image(64)
    x_mean = start_noise(shape, torch.Generator().manual_seed(3), "mean", t0=961, mean_image=mean)
    a = NoiseSchedule().alphas_cumprod[961]
    assert torch.allclose(x_mean, a.sqrt() * mean + (1 - a).sqrt() * z)
    off = start_noise(shape, torch.Generator().manual_seed(3), "offset", offset_strength=0.5)
    # the offset is constant over each image's channel
    d = off - z
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-6) and d.abs().max() > 0
    with pytest.raises(ValueError):
        start_noise(shape, torch.Generator(), "zeros")
    with pytest.raises(ValueError):
        start_noise(shape, torch.Generator(), "mean", mean_image=torch.zeros(3, 16, 16))


def test_mean_training_image_is_the_data_mean():
    assert torch.allclose(mean_training_image(16), make_shapes(16, seed=TRAIN_SEED).images.mean(0))


def test_backgrounds_of_training_images_and_noise_means():
    imgs = make_shapes(3, seed=TRAIN_SEED).images
    bg = backgrounds(imgs)
    # every training background is a dark gradient (brightest channel <= 0.35) and clean (grain ~0.002)
    assert bg["colour"].shape == (3, 3) and (bg["brightest"] <= 0.36).all() and (bg["grain"] < 0.01).all()
    assert torch.equal(background_colour(imgs), bg["colour"])
    # a flat grey image: its background is that grey
    grey = torch.full((1, 3, 32, 32), 0.2)
    assert torch.allclose(background_colour(grey), torch.full((1, 3), 0.6, dtype=torch.float32), atol=1e-6)
    # grain: noise on the background raises it
    noisy = imgs + 0.1 * torch.randn(imgs.shape, generator=torch.Generator().manual_seed(0))
    assert (backgrounds(noisy)["grain"] > 0.03).all()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(noise_means(x), x.mean(dim=(2, 3)))
    with pytest.raises(ValueError):
        background_colour(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError):
        noise_means(torch.zeros(3, 8))


@pytest.fixture(scope="module")
def model():
    from unetlab.text2img import load_text2img
    return load_text2img()


@pytest.fixture(scope="module")
def eps_model():
    from unetlab.text2img import load_text2img
    return load_text2img("text2img-eps")


@pytest.mark.parametrize("which", ["model", "eps_model"])
def test_sample_images_from_pure_noise_is_generate(which, request):
    from unetlab.text2img import generate
    m = request.getfixturevalue(which)
    caps = ["a large red circle at the top left", "a small blue square in the center"]
    # the model's own sampler: v + trailing for text2img, eps + leading for text2img-eps
    ours = sample_images(m, caps, num_inference_steps=3, seed=5)
    assert torch.allclose(ours, generate(m, caps, num_inference_steps=3, seed=5), atol=1e-5)
    lead = sample_images(m, caps, num_inference_steps=3, seed=5, timestep_spacing="leading")
    assert torch.allclose(lead, generate(m, caps, num_inference_steps=3, seed=5, timestep_spacing="leading"), atol=1e-5)
    # a negative caption changes the result; the empty negative caption is the default
    neg = sample_images(m, caps, num_inference_steps=3, seed=5, negative_captions=["a large red circle at the top left"] * 2)
    assert not torch.allclose(neg, ours, atol=1e-3)
    with pytest.raises(ValueError):
        sample_images(m, caps, negative_captions=[""])
    with pytest.raises(ValueError):
        sample_images(m, caps, guidance_scale=-1)


def test_mean_start_uses_the_models_schedule(eps_model, model):
    caps = ["a large red circle at the top left"]
    # eps model, trailing: the chain starts at t = 999 where SD's schedule keeps sqrt(abar) = 0.068 of the mean
    _, x_T = sample_images(eps_model, caps, num_inference_steps=2, seed=1, return_start=True, **EPS_FIX)
    z = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    a = eps_model.schedule.alphas_cumprod[999]
    assert torch.allclose(x_T, a.sqrt() * mean_training_image() + (1 - a).sqrt() * z, atol=1e-6)
    # zero terminal SNR: abar_999 = 0, so the "mean" start at t = 999 is pure noise
    _, x_T = sample_images(model, caps, num_inference_steps=2, seed=1, return_start=True, start="mean")
    assert torch.allclose(x_T, z, atol=1e-6)


def test_accuracy_over_seeds_counts_with_the_ruler(eps_model):
    acc = accuracy_over_seeds(eps_model, n=3, sample_seeds=(0, 1), num_inference_steps=2)
    assert acc["n"] == 6 and acc["images"].shape == (6, 3, 32, 32) and set(acc["per_seed"]) == {0, 1}
    readings = [read_image(img) for img in acc["images"]]
    assert readings == acc["readings"]
    scored = score_readings(readings, acc["labels"])
    for key in RATES:
        k = acc[key]["k"]
        assert acc[key]["n"] == 6 and acc[key]["rate"] == k / 6 and acc[key]["ci"] == wilson_interval(k, 6)
        assert math.isclose(sum(acc["per_seed"][s][key] for s in (0, 1)) / 2, k / 6)
        if key != "both":
            assert k == scored[key]["k"]
    both = sum(r.colour == lab.colour and r.shape == lab.shape for r, lab in zip(readings, acc["labels"]))
    assert acc["both"]["k"] == both
    # the first caption of each seed: the same images as a one-caption run (up to batch-size rounding)
    sub = first_captions(acc, 1)
    one = accuracy_over_seeds(eps_model, n=1, sample_seeds=(0, 1), num_inference_steps=2)
    assert torch.allclose(sub["images"], one["images"], atol=1e-4) and sub["n"] == 2
    what = lambda r: (r.objects, r.colour, r.shape, r.position, r.size)  # noqa: E731
    assert [what(r) for r in sub["readings"]] == [what(r) for r in one["readings"]]
    with pytest.raises(ValueError):
        first_captions(acc, 4)
    with pytest.raises(ValueError):
        accuracy_over_seeds(eps_model, n=0)
