"""Study-note-000-style tables measured by tracing SDUNet on the meta device."""
from __future__ import annotations

import pytest
import torch

from unetlab.configs import get_config
from unetlab.sd.tables import Table, block_table, io_table, skip_table


def test_sd15_block_table_against_study_note_000():
    table = block_table("sd15")
    records = {r["block"]: r for r in table.records()}
    assert list(records) == [f"down_blocks.{i}" for i in range(4)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(4)]
    # study note 000's down table: sizes and channels
    assert table.column("resolution")[:4] == ["64×64 → 32×32", "32×32 → 16×16", "16×16 → 8×8", "8×8 → 8×8"]
    assert table.column("channels")[:4] == ["320 → 320", "320 → 640", "640 → 1280", "1280 → 1280"]
    # study note 000's up table: sizes (up block 4 stays at 64×64)
    assert table.column("resolution")[5:] == ["8×8 → 16×16", "16×16 → 32×32", "32×32 → 64×64", "64×64 → 64×64"]
    assert table.column("resnets") == [2, 2, 2, 2, 2, 3, 3, 3, 3]
    assert table.column("transformers") == [2, 2, 2, 0, 1, 0, 3, 3, 3]
    assert table.column("type")[3] == "DownBlock2D" and table.column("type")[5] == "UpBlock2D"
    # the blocks without attention do not read the text; only up blocks read skips
    assert records["down_blocks.3"]["inputs"] == "h, time_emb"
    assert records["down_blocks.0"]["inputs"] == "h, time_emb, context"
    assert records["up_blocks.0"]["inputs"] == "h, time_emb, skips"
    assert records["up_blocks.3"]["inputs"] == "h, time_emb, context, skips"
    # 12 skips saved (conv_in's + 3 + 3 + 3 + 2 ... conv_in is not a block), 12 taken
    assert table.column("skips")[:4] == ["saves 3", "saves 3", "saves 3", "saves 2"]
    assert table.column("skips")[5:] == ["takes 3"] * 4
    assert "time_emb is (1, 1280), context (1, 77, 768)." in str(table)


def test_sd15_skip_table_matches_the_resnets_weights():
    """h + skip from the trace equals the in-channels of each up ResNet's first conv (diffusers' model)."""
    from diffusers import UNet2DConditionModel

    table = skip_table("sd15")
    assert len(table) == 12
    with torch.device("meta"):
        reference = UNet2DConditionModel(**get_config("sd15").to_diffusers())
    expected = {
        f"up_blocks.{i}.resnets.{j}": resnet.conv1.in_channels
        for i, block in enumerate(reference.up_blocks)
        for j, resnet in enumerate(block.resnets)
    }
    for r in table.records():
        assert r["h"] + r["+ skip"] == r["= in"] == expected[r["resnet"]]
    # study note 000 says "1280 + 1280 -> 640" for up block 2; the ResNets really see 1920, 1280, 960
    assert table.column("= in")[6:9] == [1920, 1280, 960]
    # last in, first out: the first up ResNet takes the last down output, the last one conv_in's
    assert table.column("skip from")[0] == "down_blocks.3.resnets.1"
    assert table.column("skip from")[2] == "down_blocks.2.downsamplers.0"
    assert table.column("skip from")[-1] == "conv_in"
    assert table.column("resolution")[-1] == "64×64"


def test_sd15_io_table_time_embedding():
    table = io_table("sd15")
    records = {r["module"]: r for r in table.records()}
    assert records["time_proj"]["output"] == "(1, 320)"
    assert records["time_embedding"]["output"] == "(1, 1280)"
    assert records["conv_in"]["output"] == "(1, 320, 64, 64)" and records["conv_out"]["output"] == "(1, 4, 64, 64)"
    assert records["(model)"]["params"] == 859_520_964
    assert "time_emb (1, 1280)" in str(table)


def test_sdxl_tables():
    table = block_table("sdxl")
    assert table.column("block") == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                     "up_blocks.0", "up_blocks.1", "up_blocks.2"]
    # default latent = sample_size = 128; transformer depth 1/2/10 per level (none at level 0)
    assert table.column("resolution")[0] == "128×128 → 64×64"
    assert table.column("layers") == [None, 2, 10, 10, 10, 2, None]
    assert table.column("inputs")[0] == "h, time_emb"
    io = {r["module"]: r for r in io_table("sdxl").records()}
    assert io["add_embedding"]["output"] == "(1, 1280)"
    skips = skip_table("sdxl")
    assert len(skips) == 9 and skips.column("skip from")[-1] == "conv_in"


def test_latent_batch_and_odd_sizes():
    table = block_table("tiny", latent=20, batch=2)
    # 20 -> 10 -> 5 -> 3 (stride-2 conv rounds up); the up path returns to 20
    assert table.column("resolution")[:3] == ["20×20 → 10×10", "10×10 → 5×5", "5×5 → 3×3"]
    assert table.column("resolution")[-1] == "20×20 → 20×20"
    assert "(2, 128)" in str(table)  # time_emb for a batch of 2
    skips = skip_table("tiny", latent=20)
    assert all(r["h"] + r["+ skip"] == r["= in"] for r in skips.records())


def test_a_model_is_traced_as_its_config():
    from unetlab.sd.unet import SDUNet

    with torch.device("meta"):
        model = SDUNet("tiny21")
    assert str(block_table(model)) == str(block_table("tiny21"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="latent"):
        block_table("tiny", latent=0)
    with pytest.raises(ValueError, match="latent"):
        skip_table("tiny", latent="64")
    with pytest.raises(ValueError, match="batch"):
        io_table("tiny", batch=0)
    with pytest.raises(ValueError, match="unknown UNet config"):
        block_table("sd99")
    with pytest.raises(TypeError, match="preset name"):
        block_table(12)


def test_table_text_and_records():
    table = Table("title", ["name", "n", "share"], [("a", 1234, 0.5), ("bb", None, 0.25)], formats={"n": ",", "share": ".0%"})
    assert str(table) == "title\nname      n  share\n----  -----  -----\na     1,234    50%\nbb             25%"
    assert table.records() == [{"name": "a", "n": 1234, "share": 0.5}, {"name": "bb", "n": None, "share": 0.25}]
    with pytest.raises(ValueError, match="cells"):
        Table("t", ["a", "b"], [(1,)])
    with pytest.raises(KeyError, match="no column"):
        table.column("nope")


def test_trace_cli(capsys):
    from unetlab.cli import main

    assert main(["trace", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny UNet blocks, latent 32×32" in out and "what each up-block ResNet concatenates" in out
    assert main(["trace", "tiny", "--size", "16", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "latent 16×16" in out and "down_blocks.0" in out and "down_blocks.0.resnets.0 " not in out
