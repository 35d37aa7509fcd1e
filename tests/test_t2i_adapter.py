"""unetlab.T2IAdapter and SDUNet's down_intrablock_additional_residuals, against diffusers' T2IAdapter + UNet."""
import diffusers
import pytest
import torch

from unetlab.configs import TINY, TINY_21, TINY_XL
from unetlab.sd.t2i_adapter import T2IAdapter
from unetlab.sd.unet import SDUNet, intrablock_shapes

from helpers import randomise, random_unets

REL_TOL = 1e-4
SD15_T2I_ADAPTER_PARAMS = 77_369_280


def rel_diff(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


def random_adapters(channels, in_channels=3, seed=0):
    ours = T2IAdapter(in_channels, channels)
    ref = randomise(diffusers.T2IAdapter(**ours.to_diffusers()), seed).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()



def test_sd15_count_and_names():
    with torch.device("meta"):
        ours = T2IAdapter.for_unet("sd15")
        ref = diffusers.T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2,
                                   downscale_factor=8, adapter_type="full_adapter")
    assert sum(p.numel() for p in ours.parameters()) == SD15_T2I_ADAPTER_PARAMS
    assert sum(p.numel() for p in ref.parameters()) == SD15_T2I_ADAPTER_PARAMS
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("config", [TINY, TINY_21], ids=lambda c: c.name)
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_parity_features_and_unet_output(config, hw):
    ref, ours = random_adapters(config.block_out_channels)
    ref_unet, unet = random_unets(config)
    g = torch.Generator().manual_seed(2)
    B, (H, W) = 2, hw
    sample = torch.randn(B, 4, H, W, generator=g)
    context = torch.randn(B, 7, config.cross_attention_dim, generator=g)
    image = torch.rand(B, 3, 8 * H, 8 * W, generator=g)
    t = torch.tensor([900, 30])
    with torch.no_grad():
        expected_features = ref(image)
        features = ours(image)
        assert [tuple(f.shape) for f in features] == [s for _, s in intrablock_shapes(config, sample.shape)][:4]
        for got, exp in zip(features, expected_features):
            assert rel_diff(got, exp) <= REL_TOL
        # diffusers pops from (and adds in place to) what it is given: hand it copies
        expected = ref_unet(sample, t, context,
                            down_intrablock_additional_residuals=[f.clone() for f in expected_features]).sample
        got = unet(sample, t, context, down_intrablock_additional_residuals=features)
        plain = unet(sample, t, context)
    assert rel_diff(got, expected) <= REL_TOL
    assert rel_diff(plain, expected) > 1e-2


def test_intrablock_on_sdxl_blocks_and_after_the_mid_block():
    """SDXL's layout: a DownBlock2D with a downsampler first (the feature is added after it), and a 4th
    feature added after the mid block — the two branches SD 1.5 never takes."""
    ref_unet, unet = random_unets(TINY_XL)
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 7, TINY_XL.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(2, TINY_XL.text_embeds_dim, generator=g), "time_ids": torch.rand(2, 6) * 64}
    specs = intrablock_shapes(TINY_XL, sample.shape)
    assert [s for _, s in specs] == [(2, 32, 4, 4), (2, 64, 4, 4), (2, 128, 2, 2), (2, 128, 2, 2)]
    residuals = [torch.randn(s, generator=g) for _, s in specs]
    with torch.no_grad():
        expected = ref_unet(sample, 5, context, added_cond_kwargs=added,
                            down_intrablock_additional_residuals=[r.clone() for r in residuals]).sample
        got = unet(sample, 5, context, added, down_intrablock_additional_residuals=residuals)
        three = unet(sample, 5, context, added, down_intrablock_additional_residuals=residuals[:3])
    assert rel_diff(got, expected) <= REL_TOL
    assert rel_diff(three, expected) > 1e-3  # the mid-block feature mattered


def test_bad_input():
    _, ours = random_adapters(TINY.block_out_channels)
    _, unet = random_unets(TINY)
    with pytest.raises(ValueError, match="multiples of 8"):
        ours(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ours(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="only 'full_adapter'"):
        T2IAdapter(adapter_type="light_adapter")
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    features = ours(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="has 3 tensors .* takes 4 .* or 5"):
        unet(sample, 1, context, down_intrablock_additional_residuals=features[:3])
    # a control image for another latent size: the first mismatch is named with both shapes
    wrong = ours(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"down_intrablock_additional_residuals\[0\] \(added at down_blocks.0.attentions.1 "
                                         r"\(output\)\) must have shape \(1, 32, 8, 8\), got \(1, 32, 16, 16\)"):
        unet(sample, 1, context, down_intrablock_additional_residuals=wrong)
