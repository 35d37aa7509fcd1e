"""The ControlNet recipe of chapter 7 (unetlab.controlnet_train), on the shipped text-to-image model.

Short training runs check the code; the shipped ControlNet (data/controlnet.safetensors, made by
``python -m unetlab train controlnet --threads 1``) is checked against its measured target: IoU with the
control mask >= 0.7 on 96 held-out controls, above the same captions sampled without control.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unetlab.controlnet_train import (
    ControlledTextToImage, base_schedule, build_controlled, control_image, control_iou, controlnet_batch,
    controlnet_loss, generate_controlled, load_controlnet_checkpoint,
)
from unetlab.recipes import get_recipe, list_recipes
from unetlab.schedule import NoiseSchedule
from unetlab.text2img import load_text2img

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base():
    return load_text2img()


@pytest.fixture()
def model(base):
    torch.manual_seed(0)
    return build_controlled(base=base)


def test_recipe_is_registered_lazily():
    assert "controlnet" in list_recipes()
    r = get_recipe("controlnet")
    assert r.arch == "ControlledTextToImage" and r.config["control"] == "mask"
    # the base it is trained on is pinned by its sha256
    from unetlab.checkpoints import read_manifest
    assert r.config["base_sha256"] == read_manifest()["text2img"]["sha256"]


def test_a_controlnet_for_another_base_is_refused(base):
    config = {**get_recipe("controlnet").config, "base_sha256": "0" * 64}
    with pytest.raises(ValueError, match="only fits the UNet it was copied from"):
        build_controlled(config)


def test_only_the_controlnet_is_trained_and_saved(model, base):
    names = list(model.state_dict())
    assert names and all(n.startswith("controlnet.") for n in names)
    assert all(not p.requires_grad for p in base.parameters())
    n_cn = sum(p.numel() for p in model.parameters())
    # the copy of the encoder + zero convs is smaller than the whole base, bigger than nothing
    assert 0 < n_cn < sum(p.numel() for p in base.parameters())
    model.train()
    assert not model.base.training and model.controlnet.training


def test_output_exactly_unchanged_at_initialisation(model):
    """Zero convolutions: the residuals are exact zeros, so the UNet's output is bit-for-bit the base's."""
    b = controlnet_batch(0, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 32, 32, generator=g)
    t = torch.tensor([0, 50, 250, 500, 750, 999])
    with torch.no_grad():
        steered = model(x, t, b["captions"], controls=b["controls"])
        plain = model.base.unet(x, t, model.encode(b["captions"]))
        down, mid = model.controlnet(x, t, model.encode(b["captions"]), b["controls"])
    assert torch.equal(steered, plain)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0


def test_after_one_step_the_output_changes(model):
    """...and it is not unchanged by construction: one optimiser step on the zero convs moves it."""
    b = controlnet_batch(0, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = controlnet_loss(model, b, NoiseSchedule(), torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([300, 600])
    with torch.no_grad():
        assert not torch.equal(model(x, t, b["captions"][:2], controls=b["controls"][:2]),
                               model.base.unet(x, t, model.encode(b["captions"][:2])))


def test_first_gradient_reaches_only_the_zero_convolutions(model):
    """At init dL/d(skip) = W_zero^T dL/d(residual) = 0: only the zero convs' own weights get a gradient."""
    b = controlnet_batch(0, 8)
    loss = controlnet_loss(model, b, NoiseSchedule(), torch.Generator().manual_seed(0))
    loss.backward()
    zero_convs = {n for n, _ in model.controlnet.named_parameters()
                  if n.startswith(("controlnet_down_blocks", "controlnet_mid_block"))}
    grads = {n: p.grad for n, p in model.controlnet.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in zero_convs if n.endswith("weight"))
    others = [n for n in grads if n not in zero_convs]
    assert others and all(grads[n] is None or torch.count_nonzero(grads[n]) == 0 for n in others)


def test_control_images():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 2:6, 2:6] = 1.0
    filled = control_image(masks, "mask")
    edges = control_image(masks, "edges")
    assert int(filled.sum()) == 16
    # the outline of a 4x4 square: 12 pixels, all inside the mask
    assert int(edges.sum()) == 12 and bool((edges <= filled).all())
    # a shape touching the border keeps its border pixels as edges
    masks[0, 0, 0:3, 0:3] = 1.0
    assert control_image(masks, "edges")[0, 0, 0, 0] == 1
    with pytest.raises(ValueError, match="kind must be one of"):
        control_image(masks, "canny")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        control_image(masks[0], "mask")


def test_bad_inputs_are_named(model):
    b = controlnet_batch(0, 2)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="controls= is required"):
        model(x, 10, b["captions"])
    with pytest.raises(ValueError, match="must be 32×32"):
        model(x, 10, b["captions"], controls=torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="unknown controlnet config keys"):
        build_controlled({"base": "text2img", "size": 3}, base=model.base)
    with pytest.raises(ValueError, match="one width here"):
        build_controlled({"conditioning_embedding_out_channels": [16, 32]}, base=model.base)


def test_schedule_and_prediction_type_come_from_the_base_checkpoint(tmp_path):
    # the shipped checkpoint: whatever its metadata says (old ones: eps, SD's betas)
    meta = json.loads(__import__("safetensors").safe_open(str(ROOT / "data" / "text2img.safetensors"), "pt")
                      .metadata()["unetlab"])
    expected = NoiseSchedule.from_config(meta.get("schedule") or {})
    assert base_schedule("text2img").config == expected.config
    # a v-prediction, zero-terminal-SNR base
    path = tmp_path / "vbase.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"unetlab": json.dumps(
        {"schedule": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}})})
    s = base_schedule(path)
    assert s.prediction_type == "v_prediction" and s.rescale_betas_zero_snr and float(s.alphas_cumprod[-1]) == 0.0
    assert base_schedule(tmp_path / "missing.safetensors").config == NoiseSchedule().config


def test_untrained_controlnet_samples_exactly_like_the_base(model):
    """Both arms of the evaluation, with an untrained ControlNet: identical images, IoU difference 0."""
    result = control_iou(model, n=4, num_inference_steps=3, batch_size=2)
    assert torch.equal(result["images_with"], result["images_without"])
    assert result["difference"][0] == 0.0
    mean, lo, hi = result["with"]
    assert 0.0 <= lo <= mean <= hi or (lo != lo)  # nan interval only for n = 1
    assert result["iou_with"].shape == (4,) and bool(((result["iou_with"] >= 0) & (result["iou_with"] <= 1)).all())


def test_guess_mode_and_scale_change_samples_of_a_perturbed_controlnet(model):
    with torch.no_grad():
        for p in model.controlnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = controlnet_batch(0, 2)
    kw = dict(num_inference_steps=3, seed=0)
    a = generate_controlled(model, b["captions"], b["controls"], **kw)
    assert not torch.equal(a, generate_controlled(model, b["captions"], b["controls"], conditioning_scale=0.5, **kw))
    assert not torch.equal(a, generate_controlled(model, b["captions"], b["controls"], guess_mode=True, **kw))
    # scale 0: the ControlNet's residuals vanish, the base model alone
    assert torch.equal(generate_controlled(model, b["captions"], b["controls"], conditioning_scale=0.0, **kw),
                       generate_controlled(model, b["captions"], None, **kw))


def test_cli_short_run_writes_a_loadable_controlnet(tmp_path, base):
    out = tmp_path / "cn.safetensors"
    proc = subprocess.run([sys.executable, "-m", "unetlab", "train", "controlnet", "--steps", "2", "--batch-size", "4",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "train controlnet" in proc.stderr  # the tqdm bar
    assert "trained controlnet: 2 steps" in proc.stdout
    state = load_file(str(out))
    assert state and all(k.startswith("controlnet.") for k in state)
    loaded = load_controlnet_checkpoint(out, base=base)
    assert isinstance(loaded, ControlledTextToImage) and not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k])


def test_a_v_prediction_zero_snr_base_trains_and_samples_on_its_own_schedule(model):
    """The retrained base may predict v on a zero-terminal-SNR schedule: loss and sampler follow model.schedule."""
    from unetlab.controlnet_train import _timestep_spacing
    from unetlab.samplers import DDIMSampler

    model.schedule = NoiseSchedule(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert _timestep_spacing(model.schedule) == "trailing"
    assert DDIMSampler(model.schedule, num_inference_steps=3, timestep_spacing="trailing").timesteps[0] == 999
    b = controlnet_batch(0, 4)
    g = torch.Generator().manual_seed(0)
    loss_v = controlnet_loss(model, b, NoiseSchedule(), g)
    # the same draw on an epsilon schedule gives another loss: the target really changed
    model.schedule = NoiseSchedule()
    loss_eps = controlnet_loss(model, b, NoiseSchedule(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss_v) and not torch.isclose(loss_v, loss_eps)
    model.schedule = NoiseSchedule(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    x = generate_controlled(model, b["captions"][:2], b["controls"][:2], num_inference_steps=3)
    assert x.shape == (2, 3, 32, 32) and bool(torch.isfinite(x).all())


def test_object_iou_reads_the_held_out_images_and_sees_a_shift():
    """The reading's ceiling: clean held-out images score near 1 against their own masks; shifted ones do not."""
    from unetlab.controlnet_train import object_iou
    from unetlab.data import HELDOUT_SEED, make_shapes

    b = make_shapes(24, seed=HELDOUT_SEED)
    masks = b.masks[:, 0] > 0.5
    own = object_iou(b.images, masks)
    assert own.shape == (24,) and float(own.mean()) > 0.9
    # every object moved 8 pixels right and down: most of it leaves its mask
    moved = object_iou(torch.roll(b.images, shifts=(8, 8), dims=(2, 3)), masks)
    assert float(moved.mean()) < float(own.mean()) - 0.3
    with pytest.raises(ValueError, match="masks must be"):
        object_iou(b.images, masks[:3])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        object_iou(b.images[:, :1], masks)


def test_control_iou_reports_the_reference_and_can_skip_the_baseline(model):
    result = control_iou(model, n=3, num_inference_steps=2, baseline=False)
    assert result["without"] is None and result["difference"] is None and result["images_without"] is None
    mean, lo, hi = result["reference"]
    assert 0.0 <= lo <= mean <= hi <= 1.0
    assert torch.equal(result["iou_reference"] > 0.5, torch.ones(3, dtype=torch.bool))


def test_text_vs_control_pairs_captions_with_controls_from_another_cell(model):
    from unetlab.controlnet_train import CONFLICT_ATTRIBUTES, text_vs_control

    result = text_vs_control(model, n=5, num_inference_steps=2)
    caps, ctls = result["caption_labels"], result["control_labels"]
    # every pair disagrees on the cell, and the control really is image j's
    assert all(c.position != k.position for c, k in zip(caps, ctls))
    assert all(i != j for i, j in result["pairs"])
    from unetlab.data import HELDOUT_SEED, make_shapes
    b = make_shapes(5, seed=HELDOUT_SEED)
    assert torch.equal(result["controls"], control_image(b.masks[[j for _, j in result["pairs"]]], "mask"))
    for attr in CONFLICT_ATTRIBUTES:
        f = result["follows"][attr]
        n = f["control"]["n"]
        assert f["control"]["k"] + f["caption"]["k"] + f["neither"]["k"] == n
        expected = sum(getattr(c, attr) != getattr(k, attr) for c, k in zip(caps, ctls))
        assert n == expected
    assert result["follows"]["position"]["control"]["n"] == 5
    with pytest.raises(ValueError, match="at least 2"):
        text_vs_control(model, n=1)


# --- the shipped ControlNet -----------------------------------------------------------------------------------

#: held-out controls the shipped ControlNet is measured on (the issue asks for at least 96)
N_HELDOUT_CONTROLS = 96
#: the issue's target for the mean IoU with the control
IOU_TARGET = 0.7
#: floor a little below the shipped ControlNet's measured value (0.897, interval 0.881-0.914; without control 0.674,
#: paired difference 0.223 (0.198-0.248); 2026-11-29, on the text2img of grounding weight 0.3)
IOU_FLOOR = 0.85


@pytest.fixture(scope="module")
def shipped(base):
    return load_controlnet_checkpoint("controlnet", base=base)


@pytest.fixture(scope="module")
def shipped_iou(shipped):
    return control_iou(shipped, n=N_HELDOUT_CONTROLS)


def test_shipped_controlnet_is_pinned_to_the_shipped_base():
    from unetlab.checkpoints import read_manifest

    manifest = read_manifest()
    entry = manifest["controlnet"]
    assert entry["recipe"] == "controlnet" and entry["command"].startswith("python -m unetlab train controlnet")
    # trained on exactly the text2img that data/ ships: a retrained base needs a retrained ControlNet
    assert entry["config"]["base_sha256"] == manifest["text2img"]["sha256"]
    assert entry["config"]["base"] == "text2img" and entry["config"]["control"] == "mask"
    # loading it without a base checks that sha256 itself
    assert isinstance(load_controlnet_checkpoint("controlnet"), ControlledTextToImage)


def test_shipped_controlnet_is_trained(shipped):
    """Its zero convolutions left zero: the residuals are not zero any more."""
    b = controlnet_batch(0, 2)
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([300, 700])
    with torch.no_grad():
        down, mid = shipped.controlnet(x, t, shipped.encode(b["captions"]), b["controls"])
    assert all(torch.count_nonzero(r) > 0 for r in (*down, mid))


def test_shipped_controlnet_meets_its_iou_target(shipped_iou):
    """IoU between the sampled object and the control mask on 96 held-out controls, with 95 % intervals."""
    r = shipped_iou
    assert r["n"] == N_HELDOUT_CONTROLS and r["iou_with"].shape == (N_HELDOUT_CONTROLS,)
    mean, lo, hi = r["with"]
    assert mean >= IOU_FLOOR >= IOU_TARGET, f"IoU with control {mean:.3f} ({lo:.3f}-{hi:.3f}) below {IOU_FLOOR}"
    # the control is what makes it: the paired difference's interval excludes 0
    d_mean, d_lo, d_hi = r["difference"]
    assert d_lo > 0, f"with - without = {d_mean:.3f} ({d_lo:.3f}-{d_hi:.3f}): the interval reaches 0"
    # and the reading itself is not the limit: the held-out images score above the samples
    assert r["reference"][0] > r["without"][0]


def test_shipped_controlnet_conditioning_scale_zero_is_the_base(shipped):
    b = controlnet_batch(0, 2)
    kw = dict(num_inference_steps=3, seed=0)
    assert torch.equal(generate_controlled(shipped, b["captions"], b["controls"], conditioning_scale=0.0, **kw),
                       generate_controlled(shipped, b["captions"], None, **kw))
