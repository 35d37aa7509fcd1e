"""SimpleUNet: study note 003's UNet with its two bugs fixed, skips on/off, skip scaling, bad input."""
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn

from unetlab import note003
from unetlab.embeddings import sinusoidal_embedding
from unetlab.simple_unet import DownBlock, ResBlock, SimpleUNet, TimeEmbedding, UpBlock, norm_groups
from unetlab.tracing import trace_shapes


_GroupNorm = nn.GroupNorm


def _fitting_group_norm(num_groups, num_channels):
    return _GroupNorm(math.gcd(num_groups, num_channels), num_channels)


def seed_model_with_bug1_patched(**kwargs):
    """Study note 003's printed SimpleUNet, with only GroupNorm's group count patched (bug 2 left in)."""
    with mock.patch.object(nn, "GroupNorm", _fitting_group_norm):
        return note003.SimpleUNet(**kwargs)


# --- the study note's bugs are real ---------------------------------------------------------------------
def test_seed_code_fails_at_construction_with_groupnorm():
    with pytest.raises(ValueError, match="divisible by num_groups"):
        note003.SimpleUNet(in_channels=4, out_channels=4, base_channels=64)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        note003.printed_test()


def test_seed_code_with_groupnorm_patched_fails_in_up1():
    model = seed_model_with_bug1_patched(in_channels=4, out_channels=4, base_channels=64)
    x, t = torch.randn(2, 4, 64, 64), torch.randint(0, 1000, (2,))
    with pytest.raises(RuntimeError):
        model(x, t)
    trace = trace_shapes(model, x, t)
    assert trace.failed_module == "up1.res.norm1"
    # 64 upsampled + 128 skip channels reach a ResBlock built for 128
    assert trace.find("up1.res")[0].input_shapes[0] == (2, 192, 32, 32)
    assert model.up1.res.conv1.in_channels == 128


# --- the fixes ------------------------------------------------------------------------------------
def test_norm_groups_divides_channels():
    for channels in (1, 3, 4, 6, 8, 12, 20, 64, 128, 192, 320):
        groups = norm_groups(channels)
        assert channels % groups == 0 and 1 <= groups <= 8
    assert norm_groups(64) == 8  # the study note's choice wherever it worked
    assert norm_groups(12) == 4  # gcd: a divisor of 8, not the largest divisor of 12 below 8


def test_only_first_groupnorm_differs_from_seed():
    model = SimpleUNet()
    groups = {name: m.num_groups for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert groups.pop("down1.res.norm1") == 4
    assert set(groups.values()) == {8}


def test_up_blocks_take_up_plus_skip_channels():
    c = 32
    model = SimpleUNet(base_channels=c)
    assert model.up1.res.conv1.in_channels == c + 2 * c
    assert model.up2.res.conv1.in_channels == c + c
    no_skips = SimpleUNet(base_channels=c, use_skips=False)
    assert no_skips.up1.res.conv1.in_channels == c
    assert no_skips.up2.res.conv1.in_channels == c


def test_structure_and_names_match_seed_where_the_seed_was_right():
    ours = SimpleUNet(base_channels=32).state_dict()
    seed = seed_model_with_bug1_patched(base_channels=32).state_dict()
    assert ours.keys() == seed.keys()
    differing = {k for k in ours if ours[k].shape != seed[k].shape}
    # only up1's ResBlock input side changes (bug 2)
    assert differing == {"up1.res.conv1.weight", "up1.res.skip.weight", "up1.res.norm1.weight", "up1.res.norm1.bias"}


def test_time_embedding_equals_seed_formula():
    t = torch.tensor([0, 1, 17, 500, 999])
    dim = 64
    # the study note's lines, written out
    half_dim = dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim) * -emb)
    emb = t[:, None] * emb[None, :]
    seed_emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    ours = sinusoidal_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1)
    # same formula; float32 rounds exp(-a*i) and exp(-(a*i)) differently, visible at t ~ 1000
    torch.testing.assert_close(ours, seed_emb, rtol=0, atol=1e-4)
    # and the whole module, with the same MLP weights, equals the study note's module
    torch.manual_seed(0)
    seed_module = note003.TimeEmbedding(dim)
    our_module = TimeEmbedding(dim)
    our_module.load_state_dict(seed_module.state_dict())
    torch.testing.assert_close(our_module(t), seed_module(t), rtol=0, atol=1e-4)


def test_resblock_equals_seed_where_seed_builds():
    torch.manual_seed(0)
    seed_block = note003.ResBlock(16, 32, 64)
    ours = ResBlock(16, 32, 64)
    ours.load_state_dict(seed_block.state_dict())
    x, time_emb = torch.randn(3, 16, 8, 8), torch.randn(3, 64)
    torch.testing.assert_close(ours(x, time_emb), seed_block(x, time_emb))


def _resblock_params(cin, cout, temb):
    conv1 = cin * cout * 9 + cout
    conv2 = cout * cout * 9 + cout
    time_mlp = temb * cout + cout
    skip = cin * cout + cout if cin != cout else 0
    return conv1 + conv2 + time_mlp + skip + 2 * cin + 2 * cout


@pytest.mark.parametrize("use_skips", [True, False])
def test_parameter_count_by_formula(use_skips):
    c = 48
    t = 4 * c
    model = SimpleUNet(in_channels=4, out_channels=3, base_channels=c, use_skips=use_skips)
    time_embed = (c * t + t) + (t * t + t)
    down1 = _resblock_params(4, c, t) + (c * c * 9 + c)
    down2 = _resblock_params(c, 2 * c, t) + (2 * c * 2 * c * 9 + 2 * c)
    bottleneck = _resblock_params(2 * c, 2 * c, t)
    up1 = (2 * c * c * 16 + c) + _resblock_params(c + (2 * c if use_skips else 0), c, t)
    up2 = (c * c * 16 + c) + _resblock_params(c + (c if use_skips else 0), c, t)
    out = c * 3 + 3
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert counts == dict(time_embed=time_embed, down1=down1, down2=down2, bottleneck=bottleneck, up1=up1, up2=up2, out=out)


# --- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_skips", [True, False])
@pytest.mark.parametrize("batch,height,width", [(1, 16, 16), (2, 64, 64), (3, 32, 48), (5, 4, 8)])
def test_output_shape(batch, height, width, use_skips):
    torch.manual_seed(0)
    model = SimpleUNet(in_channels=4, out_channels=4, base_channels=16, use_skips=use_skips)
    x = torch.randn(batch, 4, height, width)
    out = model(x, torch.randint(0, 1000, (batch,)))
    assert out.shape == (batch, 4, height, width)
    assert torch.isfinite(out).all()


def test_default_model_seed_example_shapes():
    model = SimpleUNet(in_channels=4, out_channels=4, base_channels=64)
    x = torch.randn(2, 4, 64, 64)
    assert model(x, torch.randint(0, 1000, (2,))).shape == (2, 4, 64, 64)


def test_other_channel_counts():
    model = SimpleUNet(in_channels=3, out_channels=1, base_channels=20)
    assert model(torch.randn(2, 3, 16, 16), 10).shape == (2, 1, 16, 16)


def test_meta_device():
    with torch.device("meta"):
        model = SimpleUNet()
        out = model(torch.empty(2, 4, 64, 64), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 4, 64, 64) and out.device.type == "meta"


def test_backward_reaches_every_parameter():
    model = SimpleUNet(base_channels=8)
    model(torch.randn(2, 4, 16, 16), torch.tensor([3, 700])).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_without_skips_output_depends_on_input_only_through_bottleneck():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8, use_skips=False).eval()
    x1, x2 = torch.randn(2, 2, 4, 16, 16)
    t = torch.tensor([5, 5])
    # zero the bottleneck's output: then nothing about x reaches the decoder
    handle = model.bottleneck.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    try:
        torch.testing.assert_close(model(x1, t), model(x2, t))
    finally:
        handle.remove()
    assert not torch.allclose(model(x1, t), model(x2, t))


# --- timesteps ------------------------------------------------------------------------------------
def test_timestep_forms_agree():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(3, 4, 16, 16)
    reference = model(x, torch.tensor([42, 42, 42]))
    for timestep in (42, 42.0, torch.tensor(42), torch.tensor([42]), torch.tensor([42.0, 42.0, 42.0])):
        torch.testing.assert_close(model(x, timestep), reference)


def test_timestep_changes_output():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(2, 4, 16, 16)
    assert not torch.allclose(model(x, 1), model(x, 900))


@pytest.mark.parametrize("timestep", [torch.tensor([1, 2]), torch.zeros(3, 1), "10", None, [1, 2, 3], True])
def test_bad_timestep_is_a_clear_error(timestep):
    model = SimpleUNet(base_channels=8)
    with pytest.raises(ValueError, match="timestep"):
        model(torch.randn(3, 4, 16, 16), timestep)


# --- bad input ------------------------------------------------------------------------------------
def test_wrong_channel_count():
    model = SimpleUNet(base_channels=8)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 4, H, W\).*got \(2, 3, 16, 16\)"):
        model(torch.randn(2, 3, 16, 16), 1)


@pytest.mark.parametrize("height,width", [(30, 32), (32, 18), (2, 4), (7, 7)])
def test_size_the_up_path_cannot_restore(height, width):
    model = SimpleUNet(base_channels=8)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 4, height, width), 1)


def test_wrong_rank_and_type():
    model = SimpleUNet(base_channels=8)
    with pytest.raises(ValueError, match="expected x of shape"):
        model(torch.randn(4, 16, 16), 1)
    with pytest.raises(TypeError, match="must be a tensor"):
        model([[1.0]], 1)


@pytest.mark.parametrize("kwargs", [dict(in_channels=0), dict(base_channels=2.5), dict(out_channels=True)])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError, match="positive int"):
        SimpleUNet(**kwargs)


def test_upblock_rejects_a_skip_of_the_wrong_shape():
    block = UpBlock(16, 8, 32, skip_channels=16)
    x, time_emb = torch.randn(1, 16, 4, 4), torch.randn(1, 32)
    assert block(x, torch.randn(1, 16, 8, 8), time_emb).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"expected a skip of shape \(B, 16, 8, 8\)"):
        block(x, torch.randn(1, 8, 8, 8), time_emb)
    with pytest.raises(ValueError, match="expected a skip"):
        block(x, None, time_emb)
    with pytest.raises(ValueError, match="skip_channels=0"):
        UpBlock(16, 8, 32, skip_channels=0)(x, torch.randn(1, 8, 8, 8), time_emb)


def test_downblock_returns_downsampled_and_skip():
    h, skip = DownBlock(4, 8, 16)(torch.randn(2, 4, 12, 12), torch.randn(2, 16))
    assert h.shape == (2, 8, 6, 6) and skip.shape == (2, 8, 12, 12)


# --- skip_scale -----------------------------------------------------------------------------------
def test_skip_scale_one_is_a_no_op_and_zero_changes_the_output():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(2, 4, 16, 16)
    plain = model(x, 3)
    torch.testing.assert_close(model(x, 3, skip_scale={"up1": 1.0, "up2": 1.0}), plain)
    torch.testing.assert_close(model(x, 3, skip_scale={}), plain)
    for name in ("up1", "up2"):
        assert not torch.allclose(model(x, 3, skip_scale={name: 0.0}), plain)


@pytest.mark.parametrize("up_block,down_block", [("up1", "down2"), ("up2", "down1")])
def test_skip_scale_zero_equals_zeroing_that_skip(up_block, down_block):
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(2, 4, 16, 16)
    dropped = model(x, 3, skip_scale={up_block: 0.0})
    # the same by hand: the down block hands a zero skip to the up path
    handle = getattr(model, down_block).register_forward_hook(lambda m, a, out: (out[0], torch.zeros_like(out[1])))
    try:
        by_hand = model(x, 3)
    finally:
        handle.remove()
    torch.testing.assert_close(dropped, by_hand)


def test_skip_scale_half_is_linear_in_the_skip():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(1, 4, 8, 8)
    captured = {}
    handle = model.up2.res.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    model(x, 3, skip_scale={"up2": 0.5})
    handle.remove()
    _, skip1 = model.down1(x, model.time_embed(torch.tensor([3])))
    torch.testing.assert_close(captured["x"][:, 8:], 0.5 * skip1)


def test_skip_scale_bad_input():
    model = SimpleUNet(base_channels=8)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="keys must be among"):
        model(x, 1, skip_scale={"down1": 0.0})
    with pytest.raises(TypeError, match="skip_scale must be"):
        model(x, 1, skip_scale=0.0)
    with pytest.raises(ValueError, match="use_skips=False"):
        SimpleUNet(base_channels=8, use_skips=False)(x, 1, skip_scale={"up1": 0.0})
    assert set(SimpleUNet.SKIP_RESOLUTIONS) == {"up1", "up2"}


def test_note003_is_the_notes_code_verbatim_up_to_whitespace():
    import inspect
    import pathlib
    import re

    seed_file = pathlib.Path(__file__).resolve().parents[2] / "shared" / "seeds" / "003_2dee815946ce4761.txt"
    if not seed_file.exists():
        pytest.skip("the seed notes are not part of this checkout")
    text = seed_file.read_text(encoding="utf-8")
    printed = text[text.index("import torch\n"):text.index('print(f"Parameters')]
    source = inspect.getsource(note003)
    source = source[source.index("import torch\n"):]
    # the test lines live in printed_test(); drop its def line and docstring
    source = re.sub(r'def printed_test\(\):\n    """.*?"""\n', "", source, flags=re.S)
    squeeze = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    assert squeeze(source).startswith(squeeze(printed))


def test_seed003_is_a_deprecated_alias_of_note003():
    import importlib
    import sys

    sys.modules.pop("unetlab.seed003", None)
    with pytest.warns(DeprecationWarning, match="unetlab.note003"):
        old = importlib.import_module("unetlab.seed003")
    assert old.SimpleUNet is note003.SimpleUNet and old.seed_test is note003.printed_test


def test_skip_replace_substitutes_the_skip_and_checks_its_input():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=8).eval()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        plain = model(x, 5)
        # the identity changes nothing; zeros equal skip_scale 0; another image's skip changes the output
        torch.testing.assert_close(model(x, 5, skip_replace={"up2": lambda s: s}), plain)
        torch.testing.assert_close(model(x, 5, skip_replace={"up1": torch.zeros_like}),
                                   model(x, 5, skip_scale={"up1": 0.0}))
        swapped = model(x, 5, skip_replace={"up2": lambda s: s.roll(1, dims=0)})
    assert not torch.allclose(swapped, plain)
    with pytest.raises(ValueError, match="skip's shape"):
        model(x, 5, skip_replace={"up2": lambda s: s[:1]})
    with pytest.raises(ValueError, match="keys must be among"):
        model(x, 5, skip_replace={"down1": lambda s: s})
    with pytest.raises(TypeError, match="must be a function"):
        model(x, 5, skip_replace={"up1": 0.0})
    with pytest.raises(ValueError, match="use_skips=False"):
        SimpleUNet(base_channels=8, use_skips=False)(x, 5, skip_replace={"up1": lambda s: s})
