"""IP-Adapter's decoupled cross-attention (unetlab.attention.Attention's option) and unetlab.sd.ip_adapter,
against diffusers' IPAdapterAttnProcessor2_0 and UNet2DConditionModel._load_ip_adapter_weights."""
import diffusers
import pytest
import torch
from diffusers.models.attention_processor import Attention as DiffusersAttention
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from unetlab.attention import Attention, attention_backend
from unetlab.configs import TINY, TINY_21
from unetlab.sd.ip_adapter import (
    ImageProjection,
    cross_attentions,
    enable_ip_adapter,
    ip_adapter_params,
    load_ip_adapter,
    set_ip_adapter_scale,
)
from unetlab.sd.count import meta_unet
from unetlab.sd.unet import SDUNet

from helpers import randomise, random_unets

REL_TOL = 1e-4


def rel_diff(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


def attention_pair(scale=0.7, seed=0):
    ref = DiffusersAttention(64, cross_attention_dim=48, heads=4, dim_head=16)
    ref.set_processor(IPAdapterAttnProcessor2_0(hidden_size=64, cross_attention_dim=48, num_tokens=(4,), scale=scale))
    randomise(ref, seed).eval()
    ours = Attention(64, 48, heads=4, dim_head=16)
    ours.enable_ip_adapter(scale)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("processor.")}
    sd["to_k_ip.weight"] = ref.processor.to_k_ip[0].weight
    sd["to_v_ip.weight"] = ref.processor.to_v_ip[0].weight
    ours.load_state_dict(sd, strict=True)
    return ref, ours.eval()


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_attention_parity_with_diffusers_processor(backend):
    ref, ours = attention_pair()
    g = torch.Generator().manual_seed(1)
    x, text, image = torch.randn(2, 30, 64, generator=g), torch.randn(2, 7, 48, generator=g), torch.randn(2, 4, 48, generator=g)
    with torch.no_grad(), attention_backend(backend):
        expected = ref(x, encoder_hidden_states=(text, [image]))
        got = ours(x, (text, image))
        text_only = ours(x, text)
        ours.ip_scale = 0.0
        assert torch.equal(ours(x, (text, image)), text_only)
    assert rel_diff(got, expected) <= REL_TOL
    assert rel_diff(text_only, expected) > 1e-2  # the image tokens mattered



def random_ip_state_dict(config, n_layers, image_embed_dim=24, seed=5):
    """An original-layout IP-Adapter state dict with random weights, a different matrix in every layer."""
    g = torch.Generator().manual_seed(seed)
    c = config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(4 * c, image_embed_dim, generator=g) / image_embed_dim**0.5,
                  "proj.bias": 0.1 * torch.randn(4 * c, generator=g),
                  "norm.weight": 1 + 0.1 * torch.randn(c, generator=g), "norm.bias": 0.1 * torch.randn(c, generator=g)}
    ip = {}
    for j, (_, attn) in enumerate(n_layers):
        for p in ("to_k_ip", "to_v_ip"):
            ip[f"{2 * j + 1}.{p}.weight"] = torch.randn(attn.inner_dim, c, generator=g) / c**0.5
    return {"image_proj": image_proj, "ip_adapter": ip}


@pytest.mark.parametrize("config", [TINY, TINY_21], ids=lambda c: c.name)
def test_unet_parity_with_diffusers_load_ip_adapter_weights(config):
    ref, ours = random_unets(config)
    layers = cross_attentions(ours)
    state_dict = random_ip_state_dict(config, layers)
    ref._load_ip_adapter_weights([state_dict], low_cpu_mem_usage=False)
    projection = load_ip_adapter(ours, state_dict, scale=1.0)
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 7, config.cross_attention_dim, generator=g)
    image_embeds = torch.randn(2, 24, generator=g)
    with torch.no_grad():
        # diffusers: image_embeds is a list (one per IP-Adapter) of (B, num_images, embed_dim)
        expected = ref(sample, 10, context, added_cond_kwargs={"image_embeds": [image_embeds[:, None]]}).sample
        ip_tokens = projection(image_embeds)
        assert ip_tokens.shape == (2, 4, config.cross_attention_dim)
        got = ours(sample, 10, context, ip_tokens=ip_tokens)
        set_ip_adapter_scale(ours, 0.0)
        text_only = ours(sample, 10, context, ip_tokens=ip_tokens)
        assert torch.equal(text_only, ours(sample, 10, context))
    assert rel_diff(got, expected) <= REL_TOL
    assert rel_diff(text_only, expected) > 1e-3


def test_sd15_layers_order_and_count():
    unet = meta_unet("sd15")
    names = [n for n, _ in cross_attentions(unet)]
    assert len(names) == 16  # 6 in the down blocks, 9 in the up blocks, 1 in the mid block
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert names[6].startswith("up_blocks.1.") and names[-1].startswith("mid_block.")
    assert enable_ip_adapter(unet) == 16
    # counted against diffusers' own processor and projection classes
    expected = sum(p.numel() for _, a in cross_attentions(unet)
                   for p in IPAdapterAttnProcessor2_0(a.inner_dim, 768, num_tokens=(4,)).parameters())
    from diffusers.models.embeddings import ImageProjection as DiffusersImageProjection
    expected += sum(p.numel() for p in DiffusersImageProjection(1024, 768, 4).parameters())
    assert ip_adapter_params("sd15") == expected == 22_319_616


def test_enable_copies_text_projections_and_bad_input():
    _, unet = random_unets(TINY)
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    tokens = torch.randn(1, 4, 32)
    with pytest.raises(ValueError, match="no cross-attention of this UNet has IP-Adapter projections"):
        unet(sample, 1, context, ip_tokens=tokens)
    with pytest.raises(ValueError, match="no IP-Adapter layers"):
        set_ip_adapter_scale(unet, 0.5)
    enable_ip_adapter(unet)
    attn = cross_attentions(unet)[0][1]
    assert torch.equal(attn.to_k_ip.weight, attn.to_k.weight) and attn.to_k_ip.weight is not attn.to_k.weight
    with pytest.raises(ValueError, match=r"ip_tokens must have shape \(1, n_image_tokens, 32\)"):
        unet(sample, 1, context, ip_tokens=torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="self-attention"):
        Attention(32, None, 4, 8).enable_ip_adapter()
    with pytest.raises(ValueError, match="no IP-Adapter projections"):
        Attention(32, 16, 4, 8)(torch.randn(1, 5, 32), (torch.randn(1, 3, 16), torch.randn(1, 4, 16)))
    with pytest.raises(ValueError, match=r"image_embeds must have shape \(B, 1024\)"):
        ImageProjection()(torch.randn(2, 768))
    bad = random_ip_state_dict(TINY, cross_attentions(unet)[:-1])
    with pytest.raises(ValueError, match="has 16 cross-attentions.*missing .*31.to_k_ip"):
        load_ip_adapter(unet, bad)
