"""The shapes data set: deterministic per (seed, index), labels that match the pixels, captions, bad input."""
import pytest
import torch

from unetlab.data import (
    COLOURS, HELDOUT_SEED, POSITIONS, SHAPES, TRAIN_SEED, ShapeLabel, ShapesDataset, caption, make_shapes,
    to_unit_range, vocabulary,
)


def test_shapes_ranges_and_types():
    b = make_shapes(8, seed=TRAIN_SEED)
    assert b.images.shape == (8, 3, 32, 32) and b.masks.shape == (8, 1, 32, 32)
    assert b.images.dtype == torch.float32
    assert float(b.images.min()) >= -1 and float(b.images.max()) <= 1
    assert float(b.masks.min()) >= 0 and float(b.masks.max()) <= 1
    assert len(b) == 8 and all(isinstance(label, ShapeLabel) for label in b.labels)


def test_deterministic_per_seed_and_index():
    whole = make_shapes(10, seed=5)
    tail = make_shapes(4, seed=5, start=6)
    torch.testing.assert_close(whole.images[6:], tail.images, rtol=0, atol=0)
    assert whole.labels[6:] == tail.labels
    again = make_shapes(10, seed=5)
    torch.testing.assert_close(whole.images, again.images, rtol=0, atol=0)
    other = make_shapes(10, seed=6)
    assert not torch.equal(whole.images, other.images)


def test_heldout_split_differs_from_training():
    train = make_shapes(64, seed=TRAIN_SEED).images.flatten(1)
    held = make_shapes(64, seed=HELDOUT_SEED).images.flatten(1)
    # no held-out image equals any training image
    assert torch.cdist(held, train).min() > 1.0


def test_mask_and_colour_follow_the_label():
    b = make_shapes(200, seed=2)
    for img, mask, label in zip(b.images, b.masks, b.labels):
        inside = mask[0] > 0.99
        assert inside.sum() >= 8  # the shape is really drawn
        # mean colour inside the mask is the named colour (up to the small tint)
        rgb = to_unit_range(img)[:, inside].mean(dim=1)
        assert torch.allclose(rgb, torch.tensor(COLOURS[label.colour]), atol=0.06)
        # centre of mass in the named third of the image
        ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
        col = ("left", "center", "right")[min(int(xs.float().mean() / 32 * 3), 2)]
        row = ("top", "middle", "bottom")[min(int(ys.float().mean() / 32 * 3), 2)]
        assert (row, col) == (label.row, label.column), (label, row, col)
    # large shapes cover more pixels than small ones
    area = {s: [] for s in ("small", "large")}
    for mask, label in zip(b.masks, b.labels):
        area[label.size].append(float(mask.sum()))
    assert max(area["small"]) < min(area["large"])


def test_every_label_value_occurs():
    labels = make_shapes(400, seed=0).labels
    assert {l.shape for l in labels} == set(SHAPES)
    assert {l.colour for l in labels} == set(COLOURS)
    assert {l.position for l in labels} == set(POSITIONS)


def test_captions():
    label = ShapeLabel("circle", "red", "top", "left", "small")
    assert caption(label) == "a small red circle at the top left"
    assert label.caption() == caption(label)
    assert caption(ShapeLabel("square", "blue", "middle", "center", "large")) == "a large blue square in the center"
    words = set(vocabulary())
    for c in make_shapes(50, seed=0).captions:
        assert set(c.split()) <= words
    with pytest.raises(TypeError, match="ShapeLabel"):
        caption("a red circle")


def test_dataset_items():
    ds = ShapesDataset(5, seed=HELDOUT_SEED)
    item = ds[2]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert item["caption"] == ds.captions[2] == caption(item["label"])
    assert len(ds) == 5
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=lambda items: items)
    assert len(next(iter(loader))) == 5


def test_other_sizes():
    assert make_shapes(2, size=64).images.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("kwargs, error", [
    (dict(n=0), ValueError), (dict(n=2.5), TypeError), (dict(n=2, seed=-1), ValueError),
    (dict(n=2, size=4), ValueError), (dict(n=True), TypeError),
])
def test_bad_input(kwargs, error):
    with pytest.raises(error):
        make_shapes(**kwargs)
