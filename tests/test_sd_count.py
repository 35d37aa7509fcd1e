"""Parameter counts on the meta device: the UNet by part, and the SD components (study note 001)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from unetlab.configs import get_config
from unetlab.sd.count import component_params, count_params, meta_unet, text_encoder_configs


# reference figures measured with diffusers' own configs (shared/design.md)
@pytest.mark.parametrize("name,total", [("sd15", 859_520_964), ("sd21", 865_910_724), ("sdxl", 2_567_463_684)])
def test_unet_totals(name, total):
    counts = count_params(name)
    assert counts.total == total
    assert sum(counts.by_kind().values()) == total
    assert all(p.is_meta for p in meta_unet(name).parameters())


@pytest.mark.parametrize("name", ["sd15", "sdxl", "tiny21"])
def test_breakdown_equals_diffusers_model(name):
    """Counting SDUNet by name gives, part by part and kind by kind, what diffusers' model gives."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        reference = UNet2DConditionModel(**get_config(name).to_diffusers())
    ours, theirs = count_params(name), count_params(reference)
    assert ours.counts == theirs.counts
    assert ours.column("type") == theirs.column("type")


def test_sd15_parts_in_data_flow_order():
    counts = count_params("sd15")
    parts = counts.column("part")
    assert parts == [
        "conv_in", "time_embedding",
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3",
        "mid_block",
        "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3",
        "conv_norm_out", "conv_out", "total",
    ]
    # conv_in: 4 -> 320, 3x3 kernels plus biases
    assert counts.part("conv_in") == 4 * 320 * 9 + 320
    # the last down block has no attention and no downsampler: ResNets only
    assert counts.counts["down_blocks.3"]["attentions"] == 0 and counts.counts["down_blocks.3"]["other"] == 0
    assert counts.column("type")[counts.column("part").index("up_blocks.0")] == "UpBlock2D"
    shares = counts.column("share")
    assert shares[-1] == 1.0 and abs(sum(shares[:-1]) - 1.0) < 1e-9
    text = str(counts)
    assert "859,520,964" in text and "100.0%" in text and str(counts) == text
    assert counts.records()[0] == {
        "part": "conv_in", "type": "Conv2d", "resnets": 0, "attentions": 0, "other": 11_840,
        "params": 11_840, "share": 11_840 / 859_520_964,
    }


def test_sdxl_has_add_embedding_and_three_levels():
    counts = count_params("sdxl")
    assert "add_embedding" in counts.counts and "down_blocks.3" not in counts.counts
    # (1280 text_embeds + 6 * 256) -> 1280 -> 1280
    assert counts.part("add_embedding") == 2816 * 1280 + 1280 + 1280 * 1280 + 1280


def test_counting_a_live_model_equals_counting_its_config():
    from unetlab.sd.unet import SDUNet

    torch.manual_seed(0)
    model = SDUNet("tiny")
    assert count_params(model).counts == count_params("tiny").counts
    assert count_params(model).total == sum(p.numel() for p in model.parameters())


def test_sd15_components_are_seed_001s_figures():
    components = component_params("sd15")
    assert components.counts == {"text_encoder": 123_060_480, "vae": 83_653_863, "unet": 859_520_964}
    assert components.total == 1_066_235_307
    # study note 001 prints 12% / 8% / 80%: the measured shares are 11.5% / 7.8% / 80.6%
    shares = [round(100 * s, 1) for s in components.column("share")[:3]]
    assert shares == [11.5, 7.8, 80.6]


def _clip_text_params(hidden, layers, intermediate, vocab=49408, positions=77, projection=None):
    """CLIP text transformer size, by hand: embeddings, layers (attention, MLP, 2 LayerNorms), final norm."""
    embeddings = vocab * hidden + positions * hidden
    attention = 4 * (hidden * hidden + hidden)
    mlp = hidden * intermediate + intermediate + intermediate * hidden + hidden
    norms = 2 * 2 * hidden
    total = embeddings + layers * (attention + mlp + norms) + 2 * hidden
    return total + (hidden * projection if projection else 0)


def test_text_encoders_match_hand_count():
    sd15 = component_params("sd15").counts
    assert sd15["text_encoder"] == _clip_text_params(768, 12, 3072)
    sd21 = component_params("sd21").counts
    assert sd21["text_encoder"] == _clip_text_params(1024, 23, 4096)
    assert sd21["unet"] == 865_910_724 and sd21["vae"] == sd15["vae"]
    xl = component_params("sdxl").counts
    assert xl["text_encoder"] == sd15["text_encoder"]
    assert xl["text_encoder_2"] == _clip_text_params(1280, 32, 5120, projection=1280)
    assert xl["unet"] == 2_567_463_684
    assert text_encoder_configs("sd21")["text_encoder"].hidden_act == "gelu"
    assert text_encoder_configs("sd15")["text_encoder"].hidden_act == "quick_gelu"


def test_bad_input():
    with pytest.raises(ValueError, match="unknown UNet config"):
        count_params("sd99")
    with pytest.raises(TypeError, match="preset name"):
        count_params(3.5)
    with pytest.raises(ValueError, match="no parameters"):
        count_params(nn.ReLU())
    with pytest.raises(ValueError, match="component counts exist"):
        component_params("tiny")
    with pytest.raises(KeyError, match="no part"):
        count_params("tiny").part("down_blocks.9")


def test_params_cli(capsys):
    from unetlab.cli import main

    assert main(["params", "sd15", "--components"]) == 0
    out = capsys.readouterr().out
    assert "sd15 UNet parameters" in out and "859,520,964" in out
    assert "123,060,480" in out and "83,653,863" in out and "1,066,235,307" in out
    assert main(["params", "tiny"]) == 0
    assert "tiny UNet parameters" in capsys.readouterr().out
    assert main(["params", "nope"]) == 2
    assert "unknown UNet config" in capsys.readouterr().err


def _hand_transformer_counts(C: int, context: int, linear: bool) -> dict[str, int]:
    """One SD 1.5-style Transformer2DModel (1 BasicTransformerBlock, width C), counted by hand."""
    return {
        # proj_in, proj_out: C×C weights (1×1 conv or Linear, same count) + biases
        "proj": 2 * (C * C + C),
        # to_q, to_k, to_v without bias, to_out with bias
        "attn1": 3 * C * C + C * C + C,
        # to_k, to_v read the text: context × C
        "attn2": C * C + 2 * context * C + C * C + C,
        # GEGLU C -> 2·4C, then 4C -> C
        "ff": C * 8 * C + 8 * C + 4 * C * C + C,
        # GroupNorm + 3 LayerNorms, weight and bias each
        "norms": 4 * 2 * C,
    }


def test_transformer_params_split_matches_hand_count_and_attentions_column():
    from unetlab.sd.count import TRANSFORMER_KINDS, transformer_params

    # SD 1.5's transformers: 2 per down block at 320, 640, 1280, 1 in the mid block, 3 per up block
    widths = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    for name, context in (("sd15", 768), ("sd21", 1024)):
        split = transformer_params(name)
        want = {k: sum(_hand_transformer_counts(C, context, name == "sd21")[k] for C in widths) for k in TRANSFORMER_KINDS}
        assert dict(split.counts) == want, name
        assert split.total == count_params(name).by_kind()["attentions"]
        assert split.unet == count_params(name).total
    sd15 = transformer_params("sd15")
    # the issue-11 claim the chapter states: the feed-forward is the largest part, attention alone ≈ 11% of the UNet
    assert max(sd15.counts, key=sd15.counts.get) == "ff"
    assert 0.10 < (sd15.counts["attn1"] + sd15.counts["attn2"]) / sd15.unet < 0.12
    assert transformer_params("sdxl").total == count_params("sdxl").by_kind()["attentions"]
    with pytest.raises(ValueError, match="no transformers"):
        transformer_params(nn.Linear(2, 2))
