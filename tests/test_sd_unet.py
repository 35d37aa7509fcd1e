"""SDUNet's inputs: timestep forms, clear errors for wrong inputs, dtypes, the meta device,
and the config presets' own checks."""
import pytest
import torch

from unetlab.attention import Attention
from unetlab.configs import PRESETS, SD15, SDXL, TINY, TINY_XL, UNetConfig, get_config
from unetlab.sd.unet import SDUNet


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SDUNet(TINY).eval()


@pytest.fixture(scope="module")
def tiny_xl():
    torch.manual_seed(0)
    return SDUNet(TINY_XL).eval()


@pytest.fixture(scope="module")
def sd15_meta():
    with torch.device("meta"):
        return SDUNet(SD15)


def tiny_inputs(batch=2, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, size, size, generator=g), torch.randn(batch, 7, TINY.cross_attention_dim, generator=g)


def xl_cond(batch=2):
    return {"text_embeds": torch.randn(batch, TINY_XL.text_embeds_dim), "time_ids": torch.randn(batch, 6)}


# ---- timesteps ----------------------------------------------------------------------------
def test_timestep_forms_agree(tiny):
    sample, context = tiny_inputs()
    with torch.no_grad():
        ref = tiny(sample, torch.tensor([500, 500]), context)
        for t in (500, 500.0, torch.tensor(500), torch.tensor([500]), torch.tensor([500.0], dtype=torch.float64)):
            torch.testing.assert_close(tiny(sample, t, context), ref, rtol=0, atol=0)


def test_timestep_per_sample(tiny):
    sample, context = tiny_inputs()
    with torch.no_grad():
        both = tiny(sample, torch.tensor([10, 900]), context)
        first = tiny(sample[:1], 10, context[:1])
        second = tiny(sample[1:], 900, context[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, tiny(sample[:1], 900, context[:1]).detach())


@pytest.mark.parametrize("bad", [torch.tensor([1, 2, 3]), torch.zeros(2, 1), "10", None])
def test_bad_timestep_is_a_clear_error(tiny, bad):
    sample, context = tiny_inputs()
    with pytest.raises(ValueError, match="timestep"):
        tiny(sample, bad, context)


# ---- shapes -------------------------------------------------------------------------------
def test_wrong_latent_channels(sd15_meta):
    with pytest.raises(ValueError, match="4 channels"):
        sd15_meta(torch.empty(1, 3, 64, 64, device="meta"), 1, torch.empty(1, 77, 768, device="meta"))


def test_context_from_the_wrong_text_encoder(sd15_meta):
    # SD 2.x's OpenCLIP output (1024 wide) into SD 1.5 (768)
    with pytest.raises(ValueError, match="cross_attention_dim=768"):
        sd15_meta(torch.empty(1, 4, 64, 64, device="meta"), 1, torch.empty(1, 77, 1024, device="meta"))


@pytest.mark.parametrize("shape", [(77, 768), (1, 1, 77, 768)])
def test_context_wrong_rank(sd15_meta, shape):
    with pytest.raises(ValueError, match="tokens"):
        sd15_meta(torch.empty(1, 4, 64, 64, device="meta"), 1, torch.empty(*shape, device="meta"))


def test_batch_mismatch(sd15_meta):
    with pytest.raises(ValueError, match="batch"):
        sd15_meta(torch.empty(2, 4, 64, 64, device="meta"), 1, torch.empty(1, 77, 768, device="meta"))


def test_non_tensor_inputs(tiny):
    sample, context = tiny_inputs()
    with pytest.raises(TypeError, match="sample"):
        tiny(sample.numpy(), 1, context)
    with pytest.raises(TypeError, match="context"):
        tiny(sample, 1, "a photo of a cat")


@pytest.mark.parametrize("size", [(16, 16), (13, 9), (1, 1), (24, 40)])
def test_any_latent_size_comes_back(tiny, size):
    sample = torch.randn(1, 4, *size)
    with torch.no_grad():
        assert tiny(sample, 1, torch.randn(1, 3, TINY.cross_attention_dim)).shape == (1, 4, *size)


# ---- SDXL's added_cond --------------------------------------------------------------------
def test_sdxl_needs_added_cond(tiny_xl):
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, TINY_XL.cross_attention_dim)
    with pytest.raises(ValueError, match="text_embeds"):
        tiny_xl(sample, 1, context)
    with pytest.raises(ValueError, match="time_ids"):
        tiny_xl(sample, 1, context, {"text_embeds": xl_cond()["text_embeds"]})
    bad_width = {**xl_cond(), "text_embeds": torch.randn(2, TINY_XL.text_embeds_dim + 1)}
    with pytest.raises(ValueError, match="add_embedding expects"):
        tiny_xl(sample, 1, context, bad_width)
    with pytest.raises(ValueError, match=r"\(2, n\)"):
        tiny_xl(sample, 1, context, {**xl_cond(), "time_ids": torch.randn(1, 6)})
    with torch.no_grad():
        out = tiny_xl(sample, 1, context, xl_cond())
    assert out.shape == sample.shape


def test_added_cond_changes_the_output(tiny_xl):
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 5, TINY_XL.cross_attention_dim)
    cond = xl_cond(1)
    other = {**cond, "time_ids": cond["time_ids"] + 100}
    with torch.no_grad():
        assert not torch.allclose(tiny_xl(sample, 1, context, cond), tiny_xl(sample, 1, context, other))


def test_added_cond_refused_without_add_embedding(tiny):
    sample, context = tiny_inputs()
    with pytest.raises(ValueError, match="added_cond"):
        tiny(sample, 1, context, {"text_embeds": torch.randn(2, 8), "time_ids": torch.randn(2, 6)})


# ---- dtype and device ---------------------------------------------------------------------
def test_dtype_mismatch_is_a_clear_error(tiny):
    sample, context = tiny_inputs()
    with pytest.raises(TypeError, match="float64"):
        tiny(sample.double(), 1, context)
    with pytest.raises(TypeError, match="context has dtype torch.float16"):
        tiny(sample, 1, context.half())


def test_device_mismatch_is_a_clear_error(sd15_meta):
    with pytest.raises(ValueError, match="meta"):
        sd15_meta(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 77, 768))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype):
    torch.manual_seed(0)
    model = SDUNet(TINY).eval()
    sample, context = tiny_inputs(1)
    with torch.no_grad():
        full = model(sample, 500, context)
        half_model = SDUNet(TINY).to(dtype=dtype).eval()
        half_model.load_state_dict(model.state_dict())
        half = half_model(sample.to(dtype), torch.tensor(500), context.to(dtype))
    assert half.dtype == dtype == half_model.dtype
    assert torch.isfinite(half).all()
    # bf16 keeps 8 bits of mantissa: a few per cent of the output's scale
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


# ---- meta device: shapes for free ---------------------------------------------------------
@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_meta_forward_gives_shapes(name):
    config = PRESETS[name]
    with torch.device("meta"):
        model = SDUNet(config)
        sample = torch.empty(2, 4, 96, 64)
        context = torch.empty(2, 77, config.cross_attention_dim)
        added_cond = None
        if config.addition_embed_type:
            added_cond = {"text_embeds": torch.empty(2, 1280), "time_ids": torch.empty(2, 6)}
        out = model(sample, 999, context, added_cond)
    assert out.device.type == "meta" and out.shape == (2, 4, 96, 64)


def test_explicit_attention_equals_sdpa_in_the_whole_unet(tiny):
    sample, context = tiny_inputs()
    with torch.no_grad():
        sdpa = tiny(sample, 300, context)
        try:
            Attention.use_sdpa = False
            explicit = tiny(sample, 300, context)
        finally:
            Attention.use_sdpa = True
    torch.testing.assert_close(explicit, sdpa, rtol=1e-5, atol=1e-5)


def test_probs_hooks_in_the_unet(tiny):
    """Hooks on every cross-attention fire once each and leave the prediction unchanged."""
    sample, context = tiny_inputs()
    shapes = []
    handles = [
        m.register_probs_hook(lambda module, probs: shapes.append(tuple(probs.shape)))
        for name, m in tiny.named_modules()
        if name.endswith("attn2")
    ]
    with torch.no_grad():
        hooked = tiny(sample, 300, context)
        for h in handles:
            h.remove()
        plain = tiny(sample, 300, context)
    # SD 1.5 layout: 2 + 2 + 2 down, 1 mid, 3 + 3 + 3 up transformer blocks
    assert len(shapes) == 16
    # first down block, at the latent's full 16×16: (B, heads, 256 pixels, 7 tokens)
    assert shapes[0] == (2, TINY.num_attention_heads[0], 16 * 16, 7)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


# ---- configs ------------------------------------------------------------------------------
def test_config_lookup_and_errors():
    assert get_config("SD1.5") is SD15 and get_config("sdxl") is SDXL
    with pytest.raises(KeyError, match="sd15, sd21, sdxl"):
        get_config("sd3")
    with pytest.raises(ValueError, match="attention heads"):
        SD15.replace(num_attention_heads=7)
    with pytest.raises(ValueError, match="one int per down block"):
        SD15.replace(num_attention_heads=(8, 8))
    with pytest.raises(ValueError, match="down block type"):
        SD15.replace(down_block_types=("AttnDownBlock2D",) * 4)
    with pytest.raises(TypeError, match="no field"):
        SD15.replace(attention_head_dim=8)
    with pytest.raises(ValueError, match="addition_time_embed_dim"):
        SD15.replace(addition_embed_type="text_time")
    with pytest.raises(TypeError, match="cross_attention_dim"):
        SD15.replace(cross_attention_dim=[768] * 4)


def test_config_derived_sizes():
    assert SD15.time_embed_dim == 1280
    assert SD15.head_dims == (40, 80, 160, 160)
    assert PRESETS["sd21"].head_dims == (64, 64, 64, 64)
    assert SDXL.text_embeds_dim == 1280 and SDXL.transformer_layers_per_block == (1, 2, 10)
    assert isinstance(SD15.replace(sample_size=32), UNetConfig)
    assert SDUNet("tiny").config is TINY


def test_every_parameter_gets_a_gradient():
    """A training step reaches every weight (nothing built but left unused), SDXL's add_embedding too."""
    torch.manual_seed(0)
    model = SDUNet(TINY_XL)
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, TINY_XL.cross_attention_dim)
    model(sample, torch.tensor([1, 999]), context, xl_cond()).pow(2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
