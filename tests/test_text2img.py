"""Tests for the small text-to-image model (unetlab.text2img): guidance, sampling, bad input, the pixel
measurement, and the measured quality of the shipped checkpoint (attention IoU, caption accuracy)."""
import pytest
import torch

from unetlab.data import HELDOUT_SEED, SHAPES, make_shapes
from unetlab.schedule import NoiseSchedule
from unetlab.text2img import (
    CAPTION_DROPOUT, LEGACY_SCHEDULE, TEXT2IMG_SCHEDULE, TEXT2IMG_UNET, TextToImage, grounding_loss, attention_iou, build_text2img, caption_accuracy,
    check_guidance_scale, classify_image, generate, guided_eps, load_text2img, mask_iou, text2img_batch,
    text2img_loss, threshold_map, object_weight,
)
from unetlab.train import get_recipe

# Rates on the shipped checkpoint over N_CAPTIONS held-out captions x SAMPLE_SEEDS (guidance s = 3, 25 DDIM
# steps, trailing timesteps), read by unetlab.ruler. Measured 2026-11-29 on 192 images (grounding weight 0.3):
# colour, position, size and exactly one object 192/192; shape 173/192 = 0.901 (diamonds and squares drawn round 17
# times, circles read as squares twice), all right with one object 0.901; shape-word IoU 0.629 (64 images; 0.622 on
# the next 64); background residual RMS 0.043, brightest channel 0.229 on average (training: <= 0.35, a clean
# gradient 0.0002). FLOORS sit a little below what was measured and at or above issue 12's targets (ISSUE_TARGETS):
# shape and all-right-with-one-object have almost no margin (unetlab.text2img: shape varies with the grounding weight
# and the training seed; seed 1 of the same recipe drew every shape right, IoU 0.612).
N_CAPTIONS = 96
SAMPLE_SEEDS = (0, 1)
FLOORS = {"colour": 0.97, "shape": 0.90, "position": 0.95, "size": 0.95, "one_object": 0.97, "all_one": 0.88}
ISSUE_TARGETS = {"colour": 0.97, "shape": 0.90, "position": 0.90, "size": 0.90, "one_object": 0.95, "all_one": 0.85}
MIN_IOU = 0.61
ISSUE_MIN_IOU = 0.6
MAX_BACKGROUND_RMS = 0.05
# the recipe without the grounding loss: measured IoU 0.111 on the same 64 images (its maps do not localise)
NOGROUNDING_IOU = (0.0, 0.3)


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
    def fake_loss(model, x0, t=None, generator=None, captions=None, weight=None):
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


# --- the schedule travels with the model -----------------------------------------------------------------------


def test_model_carries_its_schedule_and_sampler():
    model = TextToImage()
    assert model.schedule.config == TEXT2IMG_SCHEDULE and model.prediction_type == "v_prediction"
    assert model.timestep_spacing == "trailing"
    sampler = model.make_sampler(25)
    # trailing timesteps start at t = 999, where alpha_bar is exactly 0 (no signal leak)
    assert int(sampler.timesteps[0]) == 999 and float(model.schedule.alphas_cumprod[-1]) == 0.0
    assert sampler.prediction_type == "v_prediction"
    # a config without a schedule is an older eps checkpoint's
    old = build_text2img({"unet": model.config["unet"], "text": model.config["text"]})
    assert old.schedule.config == LEGACY_SCHEDULE and old.prediction_type == "epsilon"
    assert old.timestep_spacing == "leading" and int(old.make_sampler(25).timesteps[0]) == 961
    with pytest.raises(ValueError, match="sampler"):
        model.make_sampler(10, sampler="euler")


def test_generate_reads_the_prediction_type_from_the_model(random_model):
    # the same weights read as v and as eps give different images; generate follows the model's schedule
    torch.manual_seed(0)
    v_model = TextToImage().eval()
    eps_model = build_text2img({**v_model.config, "schedule": LEGACY_SCHEDULE}).eval()
    eps_model.load_state_dict(v_model.state_dict())
    caption = "a large red circle at the top left"
    x_v = generate(v_model, caption, num_inference_steps=4, seed=3)
    x_eps = generate(eps_model, caption, num_inference_steps=4, seed=3)
    assert not torch.allclose(x_v, x_eps, atol=1e-3)
    # by hand: the v sampler, trailing timesteps, the guided output
    from unetlab.samplers import DDIMSampler

    sampler = DDIMSampler(v_model.schedule, num_inference_steps=4, timestep_spacing="trailing",
                          prediction_type="v_prediction")
    ctx, unc = v_model.encode([caption]), v_model.encode([""])
    with torch.no_grad():
        by_hand = sampler.sample(lambda x, t: guided_eps(v_model.unet, x, t, ctx, unc, 3.0), (1, 3, 32, 32),
                                 generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.allclose(by_hand, x_v, atol=1e-5)


def test_object_weight_scaled_by_signal():
    masks = torch.zeros(2, 1, 8, 8)
    masks[..., 3:5, 3:5] = 1.0
    w = object_weight(masks, extra=8.0, scale=torch.tensor([1.0, 0.25]))
    assert float(w[0].max()) == 9.0 and float(w[1].max()) == 3.0 and float(w.min()) == 1.0


def test_nogrounding_recipe_differs_only_in_the_grounding_loss():
    a, b = get_recipe("text2img"), get_recipe("text2img-nogrounding")
    assert a.config == b.config and a.steps == b.steps and a.ema_decay == b.ema_decay
    model = TextToImage().train()
    batch = text2img_batch(0, 4)
    # same generator state: the two losses differ by the grounding term only
    la = a.loss_fn(model, batch, a.schedule, torch.Generator().manual_seed(0))
    lb = b.loss_fn(model, batch, b.schedule, torch.Generator().manual_seed(0))
    plain = text2img_loss(model, batch, a.schedule, torch.Generator().manual_seed(0), grounding_weight=0.0)
    assert torch.equal(lb, plain) and float(la.detach()) > float(lb.detach())


def test_training_is_bit_identical_and_ships_the_ema():
    from unetlab.train import train

    r1 = train("text2img", steps=1700, batch_size=4, stop_after=3, progress=False)
    r2 = train("text2img", steps=1700, batch_size=4, stop_after=3, progress=False)
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.losses == r2.losses and r1.metadata["ema_decay"] == get_recipe("text2img").ema_decay
    assert r1.metadata["prediction_type"] == "v_prediction" and r1.metadata["schedule"] == TEXT2IMG_SCHEDULE
    # the EMA after 3 steps (decay 1/10, 2/11, 3/12) is not the raw weights: it lags behind them
    torch.manual_seed(0)
    init = TextToImage().state_dict()
    k = "unet.conv_in.weight"
    assert not torch.equal(s1[k], init[k])


# --- the shipped checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_rates(shipped):
    return caption_accuracy(shipped, n=N_CAPTIONS, sample_seeds=SAMPLE_SEEDS, guidance_scale=3.0,
                            num_inference_steps=25)


def test_shipped_checkpoint_matches_recipe(shipped):
    from unetlab.checkpoints import read_manifest, read_metadata, DATA_DIR

    entry = read_manifest()["text2img"]
    assert entry["command"].startswith("python -m unetlab train text2img")
    assert entry["arch"] == "TextToImage"
    assert shipped.unet.config == build_text2img(get_recipe("text2img").config).unet.config
    meta = read_metadata(DATA_DIR / entry["file"])
    # generate() and the chapters read these from the file: v-prediction, zero terminal SNR, EMA weights
    assert meta["prediction_type"] == "v_prediction" and meta["schedule"] == TEXT2IMG_SCHEDULE
    assert meta["config"]["schedule"] == TEXT2IMG_SCHEDULE and meta["ema_decay"] is not None
    assert shipped.schedule.config == TEXT2IMG_SCHEDULE


def test_shipped_caption_rates(shipped_rates):
    rates = shipped_rates["rates"]
    assert shipped_rates["N"] == N_CAPTIONS * len(SAMPLE_SEEDS)
    for figure, floor in FLOORS.items():
        assert rates[figure]["rate"] >= max(floor, ISSUE_TARGETS[figure]), (figure, rates[figure])


def test_shipped_backgrounds_are_clean(shipped_rates):
    from unetlab.ruler import read_background

    bgs = [read_background(x) for x in shipped_rates["images"]]
    # as dark as training backgrounds (all <= 0.35), and nearly as smooth as a clean gradient
    assert sum(b["brightest"] for b in bgs) / len(bgs) <= 0.35
    assert sum(b["residual_rms"] for b in bgs) / len(bgs) <= MAX_BACKGROUND_RMS


def test_shipped_guidance_helps(shipped):
    uncond = caption_accuracy(shipped, n=48, guidance_scale=0.0, num_inference_steps=25)
    guided = caption_accuracy(shipped, n=48, guidance_scale=3.0, num_inference_steps=25)
    assert uncond["colour"] < guided["colour"] - 0.2


@pytest.fixture(scope="module")
def shipped_iou(shipped):
    return attention_iou(shipped, n=64)


def test_shipped_attention_iou(shipped_iou):
    assert len(shipped_iou["ious"]) == 64
    assert shipped_iou["mean_iou"] >= max(MIN_IOU, ISSUE_MIN_IOU), shipped_iou["mean_iou"]


def test_nogrounding_checkpoint_iou():
    model = load_text2img("text2img-nogrounding")
    assert model.schedule.config == TEXT2IMG_SCHEDULE
    iou = attention_iou(model, n=64)["mean_iou"]
    # what cross-attention learns without being told where the words are (measured, see data/CHECKPOINTS.md)
    assert NOGROUNDING_IOU[0] <= iou <= NOGROUNDING_IOU[1], iou


def test_grounding_weight_of_each_recipe():
    from unetlab.recipes import EPS_GROUNDING_WEIGHT, grounding_weight
    from unetlab.text2img import GROUNDING_WEIGHT

    # the shipped recipe uses the default; the other two pin theirs in their loss
    assert grounding_weight("text2img") == GROUNDING_WEIGHT
    assert grounding_weight("text2img-nogrounding") == 0.0
    assert grounding_weight("text2img-eps") == EPS_GROUNDING_WEIGHT != GROUNDING_WEIGHT
    with pytest.raises(ValueError):
        grounding_weight("no-such-recipe")
