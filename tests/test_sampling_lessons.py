"""unetlab.sampling_lessons: Wilson intervals, the starting points of the signal-leak lesson, sampling."""
import math

import pytest
import torch

from unetlab.data import TRAIN_SEED, make_shapes
from unetlab.sampling_lessons import (accuracy_over_seeds, background_colour, mean_training_image, noise_means,
                                      sample_images, start_noise, wilson_interval)
from unetlab.schedule import NoiseSchedule


def test_wilson_interval_known_values():
    # 8 of 10: Wilson 95% interval (0.490, 0.943) (e.g. statsmodels proportion_confint method="wilson")
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    assert wilson_interval(20, 20)[1] == 1.0
    for bad in [(-1, 10), (11, 10), (1, 0), (1.5, 10)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


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


def test_background_colour_and_noise_means():
    imgs = make_shapes(3, seed=TRAIN_SEED).images
    bg = background_colour(imgs)
    assert bg.shape == (3, 3) and (bg <= 0.36).all()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(noise_means(x), x.mean(dim=(2, 3)))
    with pytest.raises(ValueError):
        background_colour(torch.zeros(3, 32, 32))


@pytest.fixture(scope="module")
def model():
    from unetlab.text2img import load_text2img
    return load_text2img()


def test_sample_images_from_pure_noise_with_leading_is_generate(model):
    from unetlab.text2img import generate
    caps = ["a large red circle at the top left", "a small blue square in the center"]
    ours = sample_images(model, caps, num_inference_steps=3, seed=5, start="noise", timestep_spacing="leading")
    assert torch.allclose(ours, generate(model, caps, num_inference_steps=3, seed=5), atol=1e-5)
    # a negative caption changes the result; the empty negative caption is the default
    neg = sample_images(model, caps, num_inference_steps=3, seed=5, start="noise", timestep_spacing="leading",
                        negative_captions=["a large red circle at the top left"] * 2)
    assert not torch.allclose(neg, ours, atol=1e-3)
    with pytest.raises(ValueError):
        sample_images(model, caps, negative_captions=[""])


def test_accuracy_over_seeds_counts(model):
    acc = accuracy_over_seeds(model, n=2, sample_seeds=(0, 1), num_inference_steps=2)
    assert acc["n"] == 4 and acc["images"].shape == (4, 3, 32, 32) and set(acc["per_seed"]) == {0, 1}
    for key in ("colour", "shape", "both"):
        k = acc[key]["k"]
        assert acc[key]["rate"] == k / 4 and acc[key]["ci"] == wilson_interval(k, 4)
        assert math.isclose(sum(acc["per_seed"][s][key] for s in (0, 1)) / 2, k / 4)
