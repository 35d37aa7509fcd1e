"""The pixel ruler (unetlab.ruler): calibrated on real held-out images, before it reads any sample.

Each figure must be read right on at least 99 % of 1000 held-out images (issue 12, item 3), also with
mild pixel noise; hand-made images check what each reading means (two objects, a speck, nothing, a moved
or resized shape); bad input gets a clear error.
"""
import math

import pytest
import torch

from unetlab.data import COLOURS, HELDOUT_SEED, POSITIONS, SHAPES, SIZES, ShapeLabel, make_shapes
from unetlab.ruler import (
    FIGURES, MIN_OBJECT_PIXELS, Reading, read_background, read_image, read_images, score_readings, wilson_interval,
)

N_CALIBRATION = 1000


@pytest.fixture(scope="module")
def heldout():
    return make_shapes(N_CALIBRATION, seed=HELDOUT_SEED)


@pytest.fixture(scope="module")
def heldout_readings(heldout):
    return read_images(heldout.images)


def test_every_reading_is_right_on_real_heldout_images(heldout, heldout_readings):
    scores = score_readings(heldout_readings, heldout.labels)
    for figure in FIGURES:
        assert scores[figure]["n"] == N_CALIBRATION
        assert scores[figure]["rate"] >= 0.99, (figure, scores[figure])
    # every value of every attribute occurs and is read (not one reading for everything)
    for attr, values in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("position", POSITIONS), ("size", SIZES)):
        for v in values:
            rows = [r for r, lab in zip(heldout_readings, heldout.labels) if getattr(lab, attr) == v]
            assert len(rows) >= 20, (attr, v)
            assert sum(getattr(r, attr) == v for r in rows) / len(rows) >= 0.98, (attr, v)


def test_fit_recovers_the_generators_geometry(heldout, heldout_readings):
    # the fitted half-size lands on the generator's 0.11 / 0.21 of the side, the fit error is near 0
    for r, lab in zip(heldout_readings[:200], heldout.labels[:200]):
        assert abs(r.half - {"small": 0.11, "large": 0.21}[lab.size]) < 0.02
        assert r.fit_error < 0.01
        assert r.objects == 1 and r.other_pixels == 0


def test_readings_survive_pixel_noise():
    batch = make_shapes(200, seed=HELDOUT_SEED, start=N_CALIBRATION)
    noisy = (batch.images + 0.06 * torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    scores = score_readings(read_images(noisy), batch.labels)
    for figure in FIGURES:
        assert scores[figure]["rate"] >= 0.99, (figure, scores[figure])


def _paste(base: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor) -> torch.Tensor:
    return other_mask * other + (1 - other_mask) * base


def test_counts_objects_and_ignores_specks():
    batch = make_shapes(40, seed=HELDOUT_SEED)
    # two images whose shapes sit in different cells: paste the second shape into the first image
    i, j = next((i, j) for i in range(40) for j in range(40)
                if batch.labels[i].position != batch.labels[j].position
                and (batch.masks[i] * batch.masks[j]).sum() == 0
                and torch.nn.functional.max_pool2d(batch.masks[i:i + 1], 5, 1, 2).mul(batch.masks[j:j + 1]).sum() == 0)
    two = _paste(batch.images[i], batch.images[j], batch.masks[j])
    r = read_image(two)
    assert r.objects == 2 and r.other_pixels > 0
    # the largest of the two is the one read
    big = i if batch.masks[i].sum() >= batch.masks[j].sum() else j
    assert r.shape == batch.labels[big].shape and r.position == batch.labels[big].position
    # a speck smaller than MIN_OBJECT_PIXELS is not an object
    speck = batch.images[i].clone()
    corner = (0, 0) if batch.labels[i].position != "top left" else (30, 30)
    speck[:, corner[0]:corner[0] + 2, corner[1]:corner[1] + 2] = 1.0
    assert MIN_OBJECT_PIXELS > 4
    assert read_image(speck).objects == 1
    # a background alone: no object, no reading
    empty = read_image(-0.6 * torch.ones(3, 32, 32))
    assert empty == Reading(objects=0)


def test_background_measure():
    batch = make_shapes(20, seed=HELDOUT_SEED)
    clean = [read_background(x) for x in batch.images]
    assert max(b["residual_rms"] for b in clean) < 0.01
    assert max(b["brightest"] for b in clean) <= 0.35 + 1e-6
    noisy = read_background((batch.images[0] + 0.2 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(-1, 1))
    assert noisy["residual_rms"] > 0.05


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35
    low, high = wilson_interval(96, 96)
    assert high == 1.0 and 0.95 < low < 0.97
    # all or none right: the interval reaches exactly 1 (or 0) and contains the rate, whatever n
    # (the formula alone rounds to 0.9999999999999999 at n = 128)
    for n in range(1, 300):
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
        for k in (1, n // 2, n - 1):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high
    # the textbook example: 81 of 263 -> (0.2553, 0.3662)
    low, high = wilson_interval(81, 263)
    assert math.isclose(low, 0.2553, abs_tol=1e-3) and math.isclose(high, 0.3662, abs_tol=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(TypeError):
        wilson_interval(1.5, 4)


def test_score_readings_counts_each_figure():
    lab = ShapeLabel(shape="circle", colour="red", row="top", column="left", size="small")
    right = Reading(objects=1, colour="red", shape="circle", position="top left", size="small")
    wrong_shape = Reading(objects=1, colour="red", shape="square", position="top left", size="small")
    doubled = Reading(objects=2, colour="red", shape="circle", position="top left", size="small")
    nothing = Reading(objects=0)
    s = score_readings([right, wrong_shape, doubled, nothing], [lab] * 4)
    assert s["colour"]["k"] == 3 and s["shape"]["k"] == 2 and s["one_object"]["k"] == 2
    assert s["all_one"]["k"] == 1 and s["ok"]["all_one"] == [True, False, False, False]
    with pytest.raises(ValueError):
        score_readings([right], [lab, lab])


def test_bad_input():
    for bad in (torch.zeros(32, 32), torch.zeros(1, 3, 32, 32), torch.zeros(3, 4, 4), "image"):
        with pytest.raises(ValueError):
            read_image(bad)
    with pytest.raises(ValueError, match="NaN"):
        read_image(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError):
        read_images(torch.zeros(3, 32, 32))
