"""Attention modules: study note 003's SelfAttention, SD's Attention (SDPA vs explicit softmax, probs
hooks, half precision) and the transformer blocks, against diffusers with the same weights."""
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock as DiffusersBlock
from diffusers.models.attention import FeedForward as DiffusersFeedForward
from diffusers.models.attention_processor import Attention as DiffusersAttention
from diffusers.models.transformers.transformer_2d import Transformer2DModel as DiffusersTransformer2D

from unetlab.attention import (
    Attention,
    AttnResBlock,
    BasicTransformerBlock,
    FeedForward,
    SelfAttention,
    Transformer2DModel,
    attention_backend,
)

from helpers import randomise

# diffusers' transformer_2d module warns about its own deprecated output class on use
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def copy_into(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    randomise(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)


# ---- study note 003 ---------------------------------------------------------------------------
def test_self_attention_is_softmax_attention_plus_residual():
    torch.manual_seed(0)
    attn = SelfAttention(16)
    randomise(attn)
    x = torch.randn(2, 16, 5, 6)
    q, k, v = attn.qkv(attn.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
    expected = x + attn.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 16, 5, 6))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_self_attention_clear_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        SelfAttention(12)
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        SelfAttention(16)(torch.randn(2, 8, 4, 4))


def test_attn_res_block_keeps_shape():
    block = AttnResBlock(16, time_emb_dim=32)
    out = block(torch.randn(2, 16, 8, 8), torch.randn(2, 32))
    assert out.shape == (2, 16, 8, 8)


# ---- SD Attention -----------------------------------------------------------------------
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_attention_equals_diffusers_both_paths(cross):
    ref = DiffusersAttention(query_dim=32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8, bias=False)
    ours = Attention(32, 24 if cross else None, heads=4, dim_head=8)
    copy_into(ours, ref)
    x = torch.randn(2, 10, 32)
    context = torch.randn(2, 7, 24) if cross else None
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context)
        sdpa = ours(x, context)
        ours.use_sdpa = False
        explicit = ours(x, context)
    torch.testing.assert_close(sdpa, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, expected, rtol=1e-5, atol=1e-5)


def test_attention_parameter_names():
    names = set(Attention(32, 24, heads=4, dim_head=8).state_dict())
    assert names == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}


def test_attention_backend_switch_is_temporary_and_checked():
    assert Attention.use_sdpa
    with attention_backend("explicit"):
        assert not Attention.use_sdpa
    assert Attention.use_sdpa
    with pytest.raises(ValueError, match="sdpa"):
        with attention_backend("flash"):
            pass


def test_probs_hook_sees_probabilities_without_changing_output():
    torch.manual_seed(0)
    attn = Attention(32, 24, heads=4, dim_head=8)
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    seen = []
    with torch.no_grad():
        plain = attn(x, context)  # SDPA
        handle = attn.register_probs_hook(lambda module, probs: seen.append((module, probs.clone())))
        hooked = attn(x, context)
        handle.remove()
        attn(x, context)
    assert len(seen) == 1, "the hook runs once per forward and stops after remove()"
    module, probs = seen[0]
    assert module is attn
    assert probs.shape == (2, 4, 10, 7)  # (B, heads, N_query, N_key)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 10))
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


def test_probs_hook_can_replace_probabilities():
    torch.manual_seed(0)
    attn = Attention(16, 8, heads=2, dim_head=8)
    x, context = torch.randn(1, 5, 16), torch.randn(1, 3, 8)
    # uniform attention: every query gets the mean of the values
    attn.register_probs_hook(lambda module, probs: torch.full_like(probs, 1 / probs.shape[-1]))
    with torch.no_grad():
        out = attn(x, context)
        mean_v = attn.to_v(context).mean(1, keepdim=True).expand(1, 5, 16)
        expected = attn.to_out[0](mean_v)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_probs_hook_wrong_return_is_a_clear_error():
    attn = Attention(16, None, heads=2, dim_head=8)
    attn.register_probs_hook(lambda module, probs: probs[:, :1])
    with pytest.raises(ValueError, match="probs hook"):
        attn(torch.randn(1, 5, 16))
    with pytest.raises(TypeError, match="callable"):
        attn.register_probs_hook("not a function")


def test_attention_input_errors():
    attn = Attention(16, 8, heads=2, dim_head=8)
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        attn(torch.randn(1, 5, 12), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"\(1, M, 8\)"):
        attn(torch.randn(1, 5, 16), torch.randn(1, 3, 10))


def test_upcast_attention_keeps_fp16_finite():
    """Large q·k overflow fp16 (max 65504); upcast_attention computes them in float32."""
    torch.manual_seed(0)
    results = {}
    for upcast in (False, True):
        attn = Attention(64, None, heads=1, dim_head=64, upcast_attention=upcast)
        with torch.no_grad():
            attn.to_q.weight.copy_(torch.eye(64) * 40)
            attn.to_k.weight.copy_(torch.eye(64) * 40)
        attn = attn.half()
        attn.use_sdpa = False
        x = torch.full((1, 4, 64), 1.0, dtype=torch.float16)
        with torch.no_grad():
            results[upcast] = attn(x)
    # q·k = 64 · 40 · 40 = 102400 > 65504: inf in fp16 without the upcast
    assert not torch.isfinite(results[False]).all()
    assert torch.isfinite(results[True]).all()


# ---- transformer pieces -----------------------------------------------------------------
def test_feed_forward_equals_diffusers():
    ref = DiffusersFeedForward(32, activation_fn="geglu")
    ours = FeedForward(32)
    copy_into(ours, ref)
    assert {"net.0.proj.weight", "net.2.weight"} <= set(ours.state_dict())
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_basic_transformer_block_equals_diffusers():
    ref = DiffusersBlock(32, 4, 8, cross_attention_dim=24, activation_fn="geglu")
    ours = BasicTransformerBlock(32, 4, 8, cross_attention_dim=24)
    copy_into(ours, ref)
    x, context = torch.randn(2, 9, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, context), ref(x, encoder_hidden_states=context), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("linear", [False, True], ids=["conv-proj", "linear-proj"])
def test_transformer2d_equals_diffusers(linear):
    kwargs = dict(num_layers=2, norm_num_groups=8, use_linear_projection=linear)
    ref = DiffusersTransformer2D(num_attention_heads=2, attention_head_dim=16, in_channels=32, cross_attention_dim=24, **kwargs)
    ours = Transformer2DModel(2, 16, 32, cross_attention_dim=24, **kwargs)
    copy_into(ours, ref)
    x, context = torch.randn(2, 32, 6, 5), torch.randn(2, 7, 24)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context).sample
        torch.testing.assert_close(ours(x, context), expected, rtol=1e-5, atol=1e-5)
        with attention_backend("explicit"):
            torch.testing.assert_close(ours(x, context), expected, rtol=1e-5, atol=1e-5)
