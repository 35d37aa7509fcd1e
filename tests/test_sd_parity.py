"""SDUNet against diffusers' UNet2DConditionModel: parameter counts, names, and outputs.

Both models get the same random weights (every parameter randomised, conv_out and proj_out
included, so a wrong wiring anywhere shows up), then see the same inputs; fp32 outputs must
agree to 1e-4 × the output's largest magnitude. Full-size SD 1.5 / 2.1 run at a small latent
(16×16) and are marked slow.
"""
import gc

import diffusers
import pytest
import torch

from unetlab.configs import PRESETS, SD15, SD21, SDXL, TINY, TINY_21, TINY_XL, UNetConfig
from unetlab.sd.unet import SDUNet

from helpers import randomise

REL_TOL = 1e-4


# SDXL's block types, transformer depths (1, 2, 10) and text_time add-embedding, at a width a CPU test affords
SDXL_NARROW = SDXL.replace(
    name="sdxl-narrow",
    block_out_channels=(32, 64, 128),
    num_attention_heads=(2, 4, 8),
    cross_attention_dim=64,
    norm_num_groups=8,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=40 + 6 * 8,
)


def random_diffusers_unet(config: UNetConfig, seed: int = 0) -> diffusers.UNet2DConditionModel:
    """diffusers' UNet for ``config``, every parameter drawn at random (no zero-init anywhere)."""
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**config.to_diffusers())
    ref = ref.to_empty(device="cpu").eval()
    return randomise(ref, seed)


def ours_from(ref: diffusers.UNet2DConditionModel, config: UNetConfig, share: bool = True) -> SDUNet:
    """SDUNet with ref's weights, loaded with strict=True.

    ``share=True`` builds SDUNet on the meta device and assigns ref's tensors (no second copy
    of a full-size model in memory); ``share=False`` copies them.
    """
    if share:
        with torch.device("meta"):
            model = SDUNet(config)
        model.load_state_dict(ref.state_dict(), strict=True, assign=True)
    else:
        model = SDUNet(config)
        model.load_state_dict(ref.state_dict(), strict=True)
    return model.eval()


def inputs(config: UNetConfig, batch: int, height: int, width: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, height, width, generator=g)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=g)
    timestep = torch.tensor([981, 20, 500, 1][:batch])
    added_cond = None
    if config.addition_embed_type == "text_time":
        added_cond = {
            "text_embeds": torch.randn(batch, config.text_embeds_dim, generator=g),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch),
        }
    return sample, timestep, context, added_cond


def compare(config: UNetConfig, batch=2, height=16, width=16):
    """Max |ours - diffusers| and max |diffusers| for one forward."""
    ref = random_diffusers_unet(config)
    ours = ours_from(ref, config)
    sample, timestep, context, added_cond = inputs(config, batch, height, width)
    kwargs = {"added_cond_kwargs": added_cond} if added_cond is not None else {}
    with torch.no_grad():
        expected = ref(sample, timestep, encoder_hidden_states=context, **kwargs).sample
        got = ours(sample, timestep, context, added_cond)
    assert got.shape == expected.shape == sample.shape[:1] + (config.out_channels,) + sample.shape[2:]
    diff = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    del ref, ours
    gc.collect()
    return diff, scale


@pytest.mark.parametrize(
    "config, size",
    [
        (TINY, (16, 16)),
        (TINY_21, (16, 16)),
        (TINY_XL, (16, 16)),
        (SDXL_NARROW, (16, 16)),
        # sizes the down path cannot halve evenly: the up path must return to the skips' sizes
        (TINY, (13, 9)),
        (TINY_XL, (11, 6)),
    ],
    ids=["tiny", "tiny21", "tinyxl", "sdxl-narrow", "tiny-13x9", "tinyxl-11x6"],
)
def test_small_configs_equal_diffusers(config, size):
    diff, scale = compare(config, 2, *size)
    assert scale > 0.1, "outputs should be clearly non-zero, or the comparison proves nothing"
    assert diff <= REL_TOL * scale, f"{config.name}: max |diff| {diff:.3g} vs output scale {scale:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("config", [SD15, SD21], ids=["sd15", "sd21"])
def test_full_size_equals_diffusers(config):
    diff, scale = compare(config, batch=2, height=16, width=16)
    assert scale > 0.1
    assert diff <= REL_TOL * scale, f"{config.name}: max |diff| {diff:.3g} vs output scale {scale:.3g}"


def test_comparison_can_fail():
    """One changed parameter (the very last projection of an attention) must break parity."""
    ref = random_diffusers_unet(TINY)
    ours = ours_from(ref, TINY, share=False)
    with torch.no_grad():
        ours.up_blocks[-1].attentions[-1].proj_out.weight.mul_(1.01)
    sample, timestep, context, _ = inputs(TINY, 2, 16, 16)
    with torch.no_grad():
        expected = ref(sample, timestep, encoder_hidden_states=context).sample
        got = ours(sample, timestep, context)
    assert (got - expected).abs().max() > REL_TOL * expected.abs().max()


# ---- parameter counts and names, on the meta device (no memory, no time) ------------------
EXPECTED_PARAMS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_param_counts_and_names_match_diffusers(name):
    config = PRESETS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**config.to_diffusers())
        ours = SDUNet(config)
    assert sum(p.numel() for p in ref.parameters()) == EXPECTED_PARAMS[name]
    assert sum(p.numel() for p in ours.parameters()) == EXPECTED_PARAMS[name]
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(our_shapes) == sorted(ref_shapes)
    assert our_shapes == ref_shapes


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_round_trips_through_diffusers(name):
    config = PRESETS[name]
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**config.to_diffusers())
    assert UNetConfig.from_diffusers(dict(ref.config), name=name) == config


def test_from_diffusers_reads_real_config_json_values():
    # SD 2.1's unet/config.json as published (the keys that matter, with diffusers' spelling)
    sd21_json = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.10.0.dev0",
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": 96,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": True,
        "use_linear_projection": True,
    }
    assert UNetConfig.from_diffusers(sd21_json) == SD21


def test_from_diffusers_refuses_what_sdunet_lacks():
    kwargs = SD15.to_diffusers()
    with pytest.raises(ValueError, match="class_embed_type"):
        UNetConfig.from_diffusers({**kwargs, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_diffusers({**kwargs, "made_up_key": 1})
