"""unetlab.ControlNet and SDUNet's ControlNet extension points, against diffusers' ControlNetModel.

Parity: both models get the same random weights (zero convolutions and the conditioning embedding's
conv_out randomised too, so nothing hides behind a zero), then the same inputs; fp32 residuals and the
UNet's output with them must agree to 1e-4 × the largest magnitude.
"""
import gc

import diffusers
import pytest
import safetensors.torch
import torch

from unetlab.configs import SD15, TINY, TINY_21, TINY_XL, UNetConfig
from unetlab.sd.controlnet import (
    ControlNet,
    check_compatible,
    controlnet_diffusers_to_ldm,
    load_controlnet,
    unet_with_controlnet,
)
from unetlab.sd.load import CheckpointError
from unetlab.sd.unet import SDUNet, mid_shape, skip_shapes

from helpers import randomise, random_unets

REL_TOL = 1e-4
SD15_CONTROLNET_PARAMS = 361_279_120


def rel_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def random_pair(config: UNetConfig, seed: int = 0, **cn_kwargs):
    """(diffusers ControlNetModel, unetlab ControlNet) with the same random weights (shared tensors:
    ours is built on the meta device and takes ref's, so full size costs one copy)."""
    with torch.device("meta"):
        ours = ControlNet(config, **cn_kwargs)
        ref = diffusers.ControlNetModel(**ours.to_diffusers())
    ref = randomise(ref.to_empty(device="cpu"), seed).eval()
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ref, ours.eval()



def inputs(config: UNetConfig, batch=2, height=8, width=8, factor=8, cond_channels=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, height, width, generator=g)
    context = torch.randn(batch, 7, config.cross_attention_dim, generator=g)
    cond = torch.rand(batch, cond_channels, factor * height, factor * width, generator=g)
    timestep = torch.tensor([981, 20, 500][:batch])
    added = None
    if config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(batch, config.text_embeds_dim, generator=g),
                 "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}
    return sample, timestep, context, cond, added


# ---- counts and names -------------------------------------------------------------------------
def test_sd15_controlnet_count_on_meta_equals_diffusers_from_unet():
    with torch.device("meta"):
        ours = ControlNet.from_unet(SDUNet("sd15"), load_weights_from_unet=False)
        ref_unet = diffusers.UNet2DConditionModel(**SD15.to_diffusers())
        ref = diffusers.ControlNetModel.from_unet(ref_unet, load_weights_from_unet=False)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == SD15_CONTROLNET_PARAMS
    assert n_ours == sum(p.numel() for p in ref.parameters())
    # same names and shapes: a diffusers ControlNet state dict loads with strict=True
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(sorted(ours_sd)) == list(sorted(ref_sd))
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ours_sd)
    # 12 zero convolutions for SD 1.5's 12 skips, plus the mid one
    assert len(ours.controlnet_down_blocks) == 12 == len(skip_shapes("sd15", (1, 4, 64, 64)))


def test_skip_shapes_sd15_at_96():
    specs = skip_shapes("sd15", (2, 4, 96, 96))
    assert [s for _, s in specs] == [
        (2, 320, 96, 96), (2, 320, 96, 96), (2, 320, 96, 96), (2, 320, 48, 48),
        (2, 640, 48, 48), (2, 640, 48, 48), (2, 640, 24, 24),
        (2, 1280, 24, 24), (2, 1280, 24, 24), (2, 1280, 12, 12),
        (2, 1280, 12, 12), (2, 1280, 12, 12),
    ]
    assert specs[5][0] == "down_blocks.1.attentions.1" and specs[6][0] == "down_blocks.1.downsamplers.0"
    assert specs[-1][0] == "down_blocks.3.resnets.1"
    assert mid_shape("sd15", (2, 4, 96, 96)) == ("mid_block", (2, 1280, 12, 12))


@pytest.mark.parametrize("config", [TINY, TINY_XL], ids=lambda c: c.name)
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_skip_shapes_match_the_live_controlnet(config, hw):
    ref, ours = random_pair(config)
    sample, t, ctx, cond, added = inputs(config, height=hw[0], width=hw[1])
    with torch.no_grad():
        down, mid = ours(sample, t, ctx, cond, added_cond=added)
    assert [tuple(r.shape) for r in down] == [s for _, s in skip_shapes(config, sample.shape)]
    assert tuple(mid.shape) == mid_shape(config, sample.shape)[1]


# ---- parity with diffusers --------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY, TINY_21, TINY_XL], ids=lambda c: c.name)
@pytest.mark.parametrize("scale, guess", [(1.0, False), (0.6, True)])
def test_parity_residuals_and_unet_output(config, scale, guess):
    ref, ours = random_pair(config)
    ref_unet, unet = random_unets(config)
    sample, t, ctx, cond, added = inputs(config)
    kw = {"added_cond_kwargs": added} if added is not None else {}
    with torch.no_grad():
        exp_down, exp_mid = ref(sample, t, ctx, cond, conditioning_scale=scale, guess_mode=guess,
                                return_dict=False, **kw)
        down, mid = ours(sample, t, ctx, cond, conditioning_scale=scale, guess_mode=guess, added_cond=added)
        assert len(down) == len(exp_down)
        for got, exp in zip(down, exp_down):
            assert rel_diff(got, exp) <= REL_TOL
        assert rel_diff(mid, exp_mid) <= REL_TOL
        expected = ref_unet(sample, t, ctx, down_block_additional_residuals=exp_down,
                            mid_block_additional_residual=exp_mid, **kw).sample
        got = unet_with_controlnet(unet, ours, sample, t, ctx, cond, conditioning_scale=scale, guess_mode=guess,
                                   added_cond=added)
        plain = unet(sample, t, ctx, added)
    assert rel_diff(got, expected) <= REL_TOL
    # the residuals really changed the output (the comparison above is not comparing two plain UNets)
    assert rel_diff(plain, expected) > 1e-2


@pytest.mark.parametrize("option", [{"global_pool_conditions": True}, {"controlnet_conditioning_channel_order": "bgr"},
                                    {"conditioning_channels": 1, "conditioning_embedding_out_channels": (8, 16)}],
                         ids=["pooled", "bgr", "gray-factor2"])
def test_parity_options(option):
    """ControlNetModel's options: pooled residuals (B, C, 1, 1) broadcast by the UNet, BGR input, a
    1-channel control image through a shallower embedding (factor 2)."""
    ref, ours = random_pair(TINY, **option)
    ref_unet, unet = random_unets(TINY)
    k, factor = ours.conditioning_channels, ours.cond_factor
    sample, t, ctx, cond, _ = inputs(TINY, factor=factor, cond_channels=k)
    with torch.no_grad():
        exp_down, exp_mid = ref(sample, t, ctx, cond, return_dict=False)
        expected = ref_unet(sample, t, ctx, down_block_additional_residuals=exp_down,
                            mid_block_additional_residual=exp_mid).sample
        got = unet_with_controlnet(unet, ours, sample, t, ctx, cond)
    assert rel_diff(got, expected) <= REL_TOL


def test_guess_mode_scales_are_logspace():
    _, ours = random_pair(TINY)
    sample, t, ctx, cond, _ = inputs(TINY)
    with torch.no_grad():
        plain_down, plain_mid = ours(sample, t, ctx, cond)
        down, mid = ours(sample, t, ctx, cond, conditioning_scale=0.5, guess_mode=True)
    scales = torch.logspace(-1, 0, len(down) + 1) * 0.5
    for p, g, s in zip(plain_down, down, scales):
        torch.testing.assert_close(g, p * s)
    torch.testing.assert_close(mid, plain_mid * scales[-1])


def test_from_unet_copies_like_diffusers():
    ref_unet, unet = random_unets(TINY_XL)
    ours = ControlNet.from_unet(unet)
    ref = diffusers.ControlNetModel.from_unet(ref_unet)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert sorted(ours_sd) == sorted(ref_sd)
    for k, v in ours_sd.items():
        if k.startswith("controlnet_cond_embedding.") and not k.startswith("controlnet_cond_embedding.conv_out"):
            continue  # fresh random init on both sides
        if k.startswith(("controlnet_", )):
            assert not v.any(), f"{k} must start at zero"
        else:
            assert torch.equal(v, unet.state_dict()[k]), k
        assert torch.equal(v, ref_sd[k]), k


def test_zero_convolutions_leave_the_unet_unchanged():
    _, unet = random_unets(TINY)
    controlnet = ControlNet.from_unet(unet)
    sample, t, ctx, cond, _ = inputs(TINY)
    with torch.no_grad():
        plain = unet(sample, t, ctx)
        steered = unet_with_controlnet(unet, controlnet, sample, t, ctx, cond, conditioning_scale=3.0)
        assert torch.equal(steered, plain)
        # and the test can fail: one non-zero zero-conv changes the output
        controlnet.controlnet_down_blocks[4].bias.fill_(0.1)
        assert not torch.equal(unet_with_controlnet(unet, controlnet, sample, t, ctx, cond), plain)


@pytest.mark.slow
def test_parity_sd15_full_size_small_latent():
    """Full SD 1.5 UNet + ControlNet (1.2 B parameters) at a 16x16 latent, 128x128 control image."""
    torch.manual_seed(0)
    ref_unet, unet = random_unets(SD15)
    ref, ours = random_pair(SD15)
    sample, t, ctx, cond, _ = inputs(SD15, batch=1, height=16, width=16)
    ctx = torch.randn(1, 77, 768)
    with torch.no_grad():
        exp_down, exp_mid = ref(sample, t, ctx, cond, return_dict=False)
        down, mid = ours(sample, t, ctx, cond)
        for got, exp in zip(down, exp_down):
            assert rel_diff(got, exp) <= REL_TOL
        assert rel_diff(mid, exp_mid) <= REL_TOL
        expected = ref_unet(sample, t, ctx, down_block_additional_residuals=exp_down,
                            mid_block_additional_residual=exp_mid).sample
        del ref_unet, ref
        gc.collect()
        got = unet(sample, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert rel_diff(got, expected) <= REL_TOL


# ---- bad input ----------------------------------------------------------------------------------
def test_control_image_size_must_be_8x_the_latent():
    _, ours = random_pair(TINY)
    sample, t, ctx, cond, _ = inputs(TINY)
    with pytest.raises(ValueError, match=r"64×64 \(8 × the latent"):
        ours(sample, t, ctx, cond[:, :, :32, :32])
    with pytest.raises(ValueError, match="3-channel control image"):
        ours(sample, t, ctx, cond[:, :1])
    # a different embedding depth changes the factor: (16, 32) -> 2
    cn2 = ControlNet(TINY, conditioning_embedding_out_channels=(16, 32))
    assert cn2.cond_factor == 2
    with pytest.raises(ValueError, match="must be 16×16"):
        cn2(sample, t, ctx, cond)


def test_wrong_residuals_are_named():
    _, unet = random_unets(TINY)
    sample, t, ctx, _, _ = inputs(TINY)
    down = [torch.zeros(s) for _, s in skip_shapes(TINY, sample.shape)]
    mid = torch.zeros(mid_shape(TINY, sample.shape)[1])
    with pytest.raises(ValueError, match="has 11 tensors but this UNet .* has 12 skips"):
        unet(sample, t, ctx, down_block_additional_residuals=down[:-1], mid_block_additional_residual=mid)
    bad = list(down)
    bad[6] = torch.zeros(2, 64, 8, 8)
    with pytest.raises(ValueError, match=r"down_block_additional_residuals\[6\] \(skip of down_blocks.1.downsamplers.0\) "
                                         r"must have shape \(2, 64, 2, 2\) .*got \(2, 64, 8, 8\)"):
        unet(sample, t, ctx, down_block_additional_residuals=bad, mid_block_additional_residual=mid)
    with pytest.raises(ValueError, match="mid_block_additional_residual .* must have shape"):
        unet(sample, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid[:, :3])
    with pytest.raises(ValueError, match="without mid_block_additional_residual"):
        unet(sample, t, ctx, down_block_additional_residuals=down)
    with pytest.raises(TypeError, match="tuple/list of 12 tensors"):
        unet(sample, t, ctx, down_block_additional_residuals=torch.zeros(3), mid_block_additional_residual=mid)
    with pytest.raises(TypeError, match="float64"):
        unet(sample, t, ctx, down_block_additional_residuals=[d.double() for d in down], mid_block_additional_residual=mid)


def test_controlnet_for_another_unet_is_refused():
    _, unet = random_unets(TINY)
    other = ControlNet(TINY.replace(block_out_channels=(32, 64, 64, 128), name="wider"))
    with pytest.raises(ValueError, match=r"block_out_channels: ControlNet \(32, 64, 64, 128\), UNet \(32, 64, 64, 64\)"):
        check_compatible(other, unet)
    sample, t, ctx, cond, _ = inputs(TINY)
    with pytest.raises(ValueError, match="does not fit this UNet"):
        unet_with_controlnet(unet, other, sample, t, ctx, cond)
    check_compatible(ControlNet(TINY), unet)  # same config: fine


# ---- loading ------------------------------------------------------------------------------------
def test_load_diffusers_folder_and_original_single_file(tmp_path):
    ref, ours = random_pair(TINY, seed=3)
    ref.save_pretrained(tmp_path / "cn")
    loaded = load_controlnet(tmp_path / "cn")
    assert loaded.config.block_out_channels == TINY.block_out_channels
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    # the original layout: our renaming must be what diffusers' own converter reads back
    ldm = controlnet_diffusers_to_ldm(ref.state_dict(), ours)
    assert "control_model.input_hint_block.14.weight" in ldm and "control_model.zero_convs.11.0.bias" in ldm
    assert "control_model.middle_block_out.0.weight" in ldm
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    theirs = convert_controlnet_checkpoint(dict(ldm), {"layers_per_block": TINY.layers_per_block})
    assert sorted(theirs) == sorted(ref.state_dict())
    assert all(torch.equal(theirs[k], v) for k, v in ref.state_dict().items())

    file = tmp_path / "control_tiny.safetensors"
    # a full original file also holds other models' weights: those are skipped
    safetensors.torch.save_file({**ldm, "first_stage_model.x": torch.zeros(1)}, file)
    from_file = load_controlnet(file, config=TINY)
    for k, v in ref.state_dict().items():
        assert torch.equal(from_file.state_dict()[k], v), k
    sample, t, ctx, cond, _ = inputs(TINY)
    with torch.no_grad():
        torch.testing.assert_close(from_file(sample, t, ctx, cond)[1], ref(sample, t, ctx, cond, return_dict=False)[1])


def test_load_errors(tmp_path):
    ref, ours = random_pair(TINY)
    ldm = controlnet_diffusers_to_ldm(ref.state_dict(), ours)
    del ldm["control_model.zero_convs.3.0.weight"]
    file = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(ldm, file)
    with pytest.raises(CheckpointError, match="missing key.*controlnet_down_blocks.3.weight"):
        load_controlnet(file, config=TINY)
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"foo.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="does not look like a ControlNet"):
        load_controlnet(other)
    with pytest.raises(FileNotFoundError):
        load_controlnet(tmp_path / "nothing")
    ref.save_pretrained(tmp_path / "cn")
    with pytest.raises(CheckpointError, match="block_out_channels"):
        load_controlnet(tmp_path / "cn", config="sd15")


def test_counts_by_part_and_adapter_table():
    from unetlab.sd.count import adapter_params, count_params, meta_controlnet

    table = count_params(meta_controlnet("sd15"))
    assert table.total == SD15_CONTROLNET_PARAMS
    # the copied encoder equals the UNet's own encoder, part by part
    unet_table = count_params("sd15")
    for part in ("conv_in", "time_embedding", "down_blocks.0", "down_blocks.3", "mid_block"):
        assert table.part(part) == unet_table.part(part)
    # 12 zero convs: C² + C each, for the skips' widths
    widths = [s[1] for _, s in skip_shapes("sd15", (1, 4, 64, 64))]
    assert table.part("controlnet_down_blocks") == sum(c * c + c for c in widths)
    costs = adapter_params("sd15")
    assert costs.counts == {"ControlNet": 361_279_120, "T2I-Adapter": 77_369_280, "IP-Adapter": 22_319_616}
    assert costs.unet == 859_520_964


def test_sd15_on_the_meta_device_and_from_a_diffusers_config():
    """Shapes of the full SD 1.5 ControlNet + UNet without weights (meta), and a ControlNet built from
    the config.json diffusers writes for an SD 1.5 ControlNet."""
    with torch.device("meta"):
        unet = SDUNet("sd15")
        controlnet = ControlNet.from_unet(unet)
        sample, ctx = torch.randn(2, 4, 96, 96), torch.randn(2, 77, 768)
        cond = torch.rand(2, 3, 768, 768)
        down, mid = controlnet(sample, 500, ctx, cond, guess_mode=True)
        out = unet(sample, 500, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        ref = diffusers.ControlNetModel.from_unet(diffusers.UNet2DConditionModel(**SD15.to_diffusers()),
                                                  load_weights_from_unet=False)
        rebuilt = ControlNet.from_diffusers_config(dict(ref.config))
    assert [tuple(d.shape) for d in down] == [s for _, s in skip_shapes("sd15", sample.shape)]
    assert out.shape == (2, 4, 96, 96)
    assert rebuilt.config.block_out_channels == SD15.block_out_channels and rebuilt.conditioning_channels == 3
    assert sum(p.numel() for p in rebuilt.parameters()) == SD15_CONTROLNET_PARAMS


def test_bfloat16_runs_in_the_weights_dtype():
    _, unet = random_unets(TINY)
    controlnet = ControlNet.from_unet(unet)
    randomise(controlnet.controlnet_down_blocks, 4)
    sample, t, ctx, cond, _ = inputs(TINY)
    with torch.no_grad():
        full = unet_with_controlnet(unet, controlnet, sample, t, ctx, cond)
        unet16, cn16 = unet.to(torch.bfloat16), controlnet.to(torch.bfloat16)
        half = unet_with_controlnet(unet16, cn16, sample.bfloat16(), t, ctx.bfloat16(), cond.bfloat16())
        with pytest.raises(TypeError, match="controlnet_cond is torch.float32"):
            cn16(sample.bfloat16(), t, ctx.bfloat16(), cond)
    assert half.dtype == torch.bfloat16
    assert rel_diff(half.float(), full) < 0.1
