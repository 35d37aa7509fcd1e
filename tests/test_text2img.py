"""Tests for the small text-to-image model (unetlab.text2img): guidance, sampling, bad input, the pixel
measurement, and the measured quality of the shipped checkpoint (attention IoU, caption accuracy)."""
import pytest
import torch

from unetlab.data import HELDOUT_SEED, SHAPES, make_shapes
from unetlab.schedule import NoiseSchedule
from unetlab.text2img import (
    CAPTION_DROPOUT, TEXT2IMG_UNET, TextToImage, grounding_loss, attention_iou, build_text2img, caption_accuracy,
    check_guidance_scale, classify_image, generate, guided_eps, load_text2img, mask_iou, text2img_batch,
    text2img_loss, threshold_map, object_weight,
)
from unetlab.train import get_recipe

# thresholds the shipped checkpoint must reach (the issue asks for IoU >= 0.5; the caption-accuracy
# floors sit below the values chapter 6 reports, so a retrained model of the same quality passes while
# a broken one fails: guessing gives colour 1/6 and shape 1/4, and the recipe without its object-weighted
# loss drew every shape as the same blob, shape accuracy at guessing level)
MIN_IOU = 0.5
MIN_COLOUR = 0.75
MIN_SHAPE = 0.5


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return TextToImage().eval()


@pytest.fixture(scope="module")
def shipped():
    return load_text2img()


# --- model and recipe ---------------------------------------------------------------------------------------


def test_forward_shapes_and_context(random_model):
    x = torch.randn(2, 3, 32, 32)
    captions = ["a small red circle at the top left", ""]
    with torch.no_grad():
        eps = random_model(x, 500, captions=captions)
        context = random_model.encode(captions)
        assert context.shape == (2, 12, TEXT2IMG_UNET.cross_attention_dim)
        assert torch.equal(random_model(x, 500, context=context), eps)
    assert eps.shape == x.shape


def test_forward_bad_input(random_model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="exactly one"):
        random_model(x, 500)
    with pytest.raises(ValueError, match="2 images"):
        random_model(x, 500, captions=["a red circle"])
    with pytest.raises(ValueError, match="cross_attention_dim"):
        TextToImage(TEXT2IMG_UNET, {"max_length": 12, "dim": 32, "depth": 1, "heads": 4})
    with pytest.raises(ValueError, match="'unet' and 'text'"):
        build_text2img({"unet": {}})


def test_config_round_trip(random_model):
    rebuilt = build_text2img(random_model.config)
    assert rebuilt.unet.config == random_model.unet.config
    assert set(rebuilt.state_dict()) == set(random_model.state_dict())


def test_recipe_registered_and_batches():
    recipe = get_recipe("text2img")
    assert recipe.arch == "TextToImage"
    assert build_text2img(recipe.config).unet.config.block_out_channels == TEXT2IMG_UNET.block_out_channels
    batch = text2img_batch(3, 4)
    assert batch["x0"].shape == (4, 3, 32, 32)
    assert batch["captions"] == make_shapes(4, start=12).captions


def test_caption_dropout_rate(monkeypatch, random_model):
    seen = []
    def fake_loss(model, x0, generator=None, captions=None, weight=None):
        seen.extend(captions)
        return torch.zeros(())
    schedule = NoiseSchedule()
    monkeypatch.setattr(schedule, "training_loss", fake_loss)
    g = torch.Generator().manual_seed(0)
    for step in range(10):
        batch = text2img_batch(step, 100)
        del batch["masks"]  # no grounding loss: the fake loss runs no model
        text2img_loss(random_model, batch, schedule, g)
    dropped = sum(c == "" for c in seen) / len(seen)
    assert abs(dropped - CAPTION_DROPOUT) < 0.03


def test_grounding_loss_measures_attention_outside_the_mask():
    masks = torch.zeros(1, 1, 8, 8)
    masks[..., :4, :4] = 1.0
    on = torch.zeros(1, 2, 64, 5)
    off = torch.zeros(1, 2, 64, 5)
    grid = torch.arange(64).reshape(8, 8)
    inside, outside = grid[:4, :4].flatten(), grid[4:, 4:].flatten()
    on[..., inside, 3] = 1.0
    off[..., outside, 3] = 1.0
    tokens = torch.tensor([[3]])
    assert grounding_loss([on], tokens, masks) < 1e-6
    assert abs(float(grounding_loss([off], tokens, masks)) - 1.0) < 1e-6
    # a 4x4 grid sees the mask average-pooled: still all inside
    on4 = torch.zeros(1, 1, 16, 5)
    on4[..., torch.tensor([0, 1, 4, 5]), 3] = 1.0
    assert grounding_loss([on4], tokens, masks) < 1e-6


def test_object_weight_covers_the_shape_and_its_edge():
    masks = torch.zeros(1, 1, 8, 8)
    masks[..., 3:5, 3:5] = 1.0
    w = object_weight(masks, extra=4.0)
    assert w.shape == masks.shape
    # the shape and a one-pixel ring around it get 1 + 4, everything else 1
    assert torch.all(w[..., 2:6, 2:6] == 5.0)
    assert float(w.sum()) == 64 + 4.0 * 16


def test_training_loss_with_grounding_backpropagates(random_model):
    model = TextToImage().train()
    loss = text2img_loss(model, text2img_batch(0, 4), NoiseSchedule(), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.text_encoder.token_embedding.weight.grad.abs().sum() > 0


# --- guidance and sampling ----------------------------------------------------------------------------------


def test_guided_eps_matches_formula(random_model):
    unet = random_model.unet
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([700, 700])
    with torch.no_grad():
        text = random_model.encode(["a red circle at the top", "a blue square in the center"])
        empty = random_model.encode(["", ""])
        e_u, e_c = unet(x, t, empty), unet(x, t, text)
        assert torch.allclose(guided_eps(unet, x, t, text, empty, 0.0), e_u, atol=1e-5)
        assert torch.allclose(guided_eps(unet, x, t, text, empty, 1.0), e_c, atol=1e-5)
        assert torch.allclose(guided_eps(unet, x, t, text, empty, 4.0), e_u + 4 * (e_c - e_u), atol=1e-4)


def test_guidance_scale_checks():
    assert check_guidance_scale(7) == 7.0
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=">= 0"):
            check_guidance_scale(bad)
    for bad in (True, "3", None):
        with pytest.raises(TypeError):
            check_guidance_scale(bad)


def test_generate_is_deterministic_and_checks_input(random_model):
    a = generate(random_model, ["a red circle at the top", "a blue square"], num_inference_steps=3, seed=1)
    b = generate(random_model, ["a red circle at the top", "a blue square"], num_inference_steps=3, seed=1)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    # unknown words: <unk> by default (runs), an error on request
    assert generate(random_model, "a red star", num_inference_steps=2).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="star"):
        generate(random_model, "a red star", num_inference_steps=2, on_unknown="error")
    # empty caption = unconditional: with s = 3 it equals s = 0 (both halves are the same)
    e3 = generate(random_model, "", num_inference_steps=2, guidance_scale=3.0)
    e0 = generate(random_model, "", num_inference_steps=2, guidance_scale=0.0)
    assert torch.allclose(e3, e0, atol=1e-5)
    with pytest.raises(ValueError, match="at most 12"):
        generate(random_model, " ".join(["red"] * 13), num_inference_steps=2)
    with pytest.raises(ValueError, match=">= 0"):
        generate(random_model, "a red circle", guidance_scale=-1)
    with pytest.raises(ValueError, match="sampler"):
        generate(random_model, "a red circle", sampler="euler")
    assert generate(random_model, "a red circle", num_inference_steps=2, sampler="ddpm").shape == (1, 3, 32, 32)


# --- measurements -----------------------------------------------------------------------------------------------


def test_classify_image_on_clean_images():
    batch = make_shapes(400, seed=HELDOUT_SEED)
    pred = [classify_image(img) for img in batch.images]
    colour = sum(p["colour"] == lab.colour for p, lab in zip(pred, batch.labels)) / 400
    shape = sum(p["shape"] == lab.shape for p, lab in zip(pred, batch.labels)) / 400
    assert colour == 1.0
    assert shape >= 0.97
    # every shape is recognised on its own
    for s in SHAPES:
        hits = [p["shape"] == s for p, lab in zip(pred, batch.labels) if lab.shape == s]
        assert sum(hits) / len(hits) >= 0.9, s


def test_classify_image_empty_and_bad_input():
    assert classify_image(-torch.ones(3, 32, 32)) == {"colour": None, "shape": None, "pixels": 0}
    with pytest.raises(ValueError):
        classify_image(torch.zeros(32, 32))


def test_iou_and_threshold():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b[0, 1:3] = True
    assert torch.allclose(mask_iou(a, b), torch.tensor([4 / 12, 1.0]))
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    assert threshold_map(maps).sum() == 1
    with pytest.raises(ValueError):
        mask_iou(a, b[:1])
    with pytest.raises(ValueError):
        threshold_map(torch.zeros(4, 4))


def test_untrained_model_does_not_localise(random_model):
    # the measurement is not trivially high: a random model's attention does not find the shape
    assert attention_iou(random_model, n=16)["mean_iou"] < 0.35


# --- the shipped checkpoint ---------------------------------------------------------------------------------------


def test_shipped_checkpoint_matches_recipe(shipped):
    from unetlab.checkpoints import read_manifest

    entry = read_manifest()["text2img"]
    assert entry["command"].startswith("python -m unetlab train text2img")
    assert entry["arch"] == "TextToImage"
    assert shipped.unet.config == build_text2img(get_recipe("text2img").config).unet.config


def test_shipped_attention_iou(shipped):
    result = attention_iou(shipped, n=64)
    assert len(result["ious"]) == 64
    assert result["mean_iou"] >= MIN_IOU, result["mean_iou"]


def test_shipped_caption_accuracy(shipped):
    acc = caption_accuracy(shipped, n=48, guidance_scale=3.0, num_inference_steps=25)
    assert acc["colour"] >= MIN_COLOUR, acc["colour"]
    assert acc["shape"] >= MIN_SHAPE, acc["shape"]
    # guidance helps: the unconditional model gets the colour right far less often
    uncond = caption_accuracy(shipped, n=48, guidance_scale=0.0, num_inference_steps=25)
    assert uncond["colour"] < acc["colour"] - 0.2
