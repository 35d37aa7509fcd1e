"""load_sd_unet and the LDM <-> diffusers key mapping.

Small UNets (the tiny presets) with random weights are built with diffusers, saved in each
layout (diffusers folder, pipeline folder, sharded folder, .bin, LDM .safetensors, LDM .ckpt,
a fake Hugging Face cache), loaded back with load_sd_unet, and must give diffusers' output.
Broken files must give one clear error and execute nothing. Nothing touches the network.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from unetlab.configs import get_config
from unetlab.sd.ldm_keys import LDM_UNET_PREFIX, KeyMap, diffusers_to_ldm, ldm_to_diffusers, name_table
from unetlab.sd.load import (
    CheckpointError,
    find_local_weights,
    infer_config,
    load_sd_unet,
    read_state_dict,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402

TINY_NAMES = ["tiny", "tiny21", "tinyxl"]
MARKER = "unetlab_pickle_payload_ran"


def _diffusers_unet(name: str) -> UNet2DConditionModel:
    """diffusers' UNet for a preset, every tensor random (zero-initialised ones too)."""
    config = get_config(name)
    torch.manual_seed(0)
    model = UNet2DConditionModel(**config.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _inputs(name: str):
    config = get_config(name)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    timestep = torch.tensor([3, 700])
    context = torch.randn(2, 7, config.cross_attention_dim, generator=g)
    added = None
    if config.addition_embed_type == "text_time":
        added = {
            "text_embeds": torch.randn(2, config.text_embeds_dim, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32], [64, 64, 4, 4, 32, 32]]),
        }
    return sample, timestep, context, added


@pytest.fixture(scope="module", params=TINY_NAMES)
def reference(request):
    """(name, diffusers model, its output on fixed inputs)."""
    name = request.param
    model = _diffusers_unet(name)
    sample, timestep, context, added = _inputs(name)
    with torch.no_grad():
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        out = model(sample, timestep, context, **kwargs).sample
    return name, model, out


def _same_weights(loaded, model) -> bool:
    """Every tensor of ``loaded`` equals diffusers' ``model``'s (cheaper than a forward)."""
    ours, theirs = loaded.state_dict(), model.state_dict()
    return set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def _rel_diff(model, name, expected) -> float:
    sample, timestep, context, added = _inputs(name)
    with torch.no_grad():
        out = model(sample, timestep, context, added_cond=added)
    return ((out - expected).abs().max() / expected.abs().max()).item()


# ---- the key mapping -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "tiny", "tinyxl"])
def test_key_mapping_agrees_with_diffusers_converter(name):
    """Our LDM names, fed to diffusers' own converter, come back as the same diffusers names."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = get_config(name)
    with torch.device("meta"):
        model = UNet2DConditionModel(**config.to_diffusers())
    state = model.state_dict()
    ldm = diffusers_to_ldm(state, config)
    assert len(ldm) == len(state)
    converted = convert_ldm_unet_checkpoint(ldm, dict(model.config))
    assert set(converted) == set(state)
    # the same tensor object must arrive under the same name
    wrong = [k for k, v in converted.items() if v is not state[k]]
    assert wrong == []
    # and our own way back is the identity
    back = ldm_to_diffusers(ldm, config)
    assert all(back[k] is v for k, v in state.items()) and len(back) == len(state)


def test_key_map_names_and_table():
    keymap = KeyMap("sd15")
    assert keymap.to_ldm("conv_in.weight") == "input_blocks.0.0.weight"
    assert keymap.to_ldm("down_blocks.0.resnets.1.norm1.weight") == "input_blocks.2.0.in_layers.0.weight"
    assert keymap.to_ldm("down_blocks.1.downsamplers.0.conv.bias") == "input_blocks.6.0.op.bias"
    assert keymap.to_ldm("up_blocks.0.upsamplers.0.conv.weight") == "output_blocks.2.1.conv.weight"
    assert keymap.to_ldm("up_blocks.1.upsamplers.0.conv.weight") == "output_blocks.5.2.conv.weight"
    assert keymap.to_ldm("mid_block.attentions.0.proj_in.weight") == "middle_block.1.proj_in.weight"
    assert keymap.to_diffusers(LDM_UNET_PREFIX + "out.2.weight") == "conv_out.weight"
    assert keymap.to_diffusers("output_blocks.11.0.skip_connection.weight") == "up_blocks.3.resnets.2.conv_shortcut.weight"
    assert keymap.to_diffusers("input_blocks.99.0.weight") is None
    assert keymap.to_ldm("down_blocks.0.resnets.0.not_a_layer.weight") is None
    kinds = [kind for _, _, kind in keymap.modules()]
    assert kinds.count("resnet") == 8 + 2 + 12 and kinds.count("attention") == 6 + 1 + 9
    xl = KeyMap("sdxl")
    assert xl.to_ldm("add_embedding.linear_2.weight") == "label_emb.0.2.weight"
    table = name_table("sd15", kinds=("downsample", "upsample"))
    assert table.column("LDM") == [
        "input_blocks.3.0.op", "input_blocks.6.0.op", "input_blocks.9.0.op",
        "output_blocks.2.1.conv", "output_blocks.5.2.conv", "output_blocks.8.2.conv",
    ]
    assert "input_blocks.3.0.op" in str(table)
    with pytest.raises(ValueError, match="unknown kind"):
        name_table("sd15", kinds="transformer")


def test_key_map_refuses_unknown_architectures():
    with pytest.raises(ValueError, match="no LDM mapping"):
        KeyMap({**get_config("tiny").to_diffusers(), "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="unknown UNet config"):
        KeyMap("sd99")
    with pytest.raises(TypeError):
        KeyMap(42)
    with pytest.raises(ValueError, match="no diffusers name"):
        ldm_to_diffusers({"input_blocks.0.0.weight": torch.zeros(1), "input_blocks.99.0.weight": torch.zeros(1)}, "tiny")


@pytest.mark.parametrize("name,expected", [("sd15", "sd15"), ("sd21", "sd21"), ("sdxl", "sdxl")])
def test_infer_config_from_ldm_shapes(name, expected):
    config = get_config(name)
    with torch.device("meta"):
        model = UNet2DConditionModel(**config.to_diffusers())
    assert infer_config(diffusers_to_ldm(model.state_dict(), config)) == expected
    assert infer_config(model.state_dict()) == expected


# ---- loading each layout ---------------------------------------------------------------------
def test_diffusers_folder_and_pipeline_folder(reference, tmp_path):
    name, model, expected = reference
    folder = tmp_path / "unet_model"
    model.save_pretrained(folder)
    loaded = load_sd_unet(folder)
    assert type(loaded).__name__ == "SDUNet" and not loaded.training
    assert _rel_diff(loaded, name, expected) <= 1e-4

    pipeline = tmp_path / "pipeline"
    model.save_pretrained(pipeline / "unet")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert _same_weights(load_sd_unet(pipeline), model)
    assert _same_weights(load_sd_unet(str(pipeline), subfolder="unet"), model)


def test_ldm_single_files(reference, tmp_path):
    name, model, expected = reference
    config = get_config(name)
    ldm = {k: v.contiguous() for k, v in diffusers_to_ldm(model.state_dict(), config).items()}
    # a full SD checkpoint also holds the VAE and the text encoder: they are skipped
    extra = {"first_stage_model.decoder.conv_in.weight": torch.zeros(3), "cond_stage_model.x": torch.ones(2)}
    save_file({**ldm, **extra}, tmp_path / "model.safetensors")
    assert _rel_diff(load_sd_unet(tmp_path / "model.safetensors", config=name), name, expected) <= 1e-4

    torch.save({"state_dict": {**ldm, **extra}, "global_step": 1234, "epoch": 3}, tmp_path / "model.ckpt")
    assert _same_weights(load_sd_unet(tmp_path / "model.ckpt", config=config), model)

    # a file with diffusers names but no config.json next to it
    torch.save(model.state_dict(), tmp_path / "unet.pt")
    assert _same_weights(load_sd_unet(tmp_path / "unet.pt", config=name), model)


def test_ldm_file_cross_checked_with_diffusers_converter(tmp_path):
    """The file we write, read by diffusers' converter, gives diffusers the same weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = _diffusers_unet("tiny")
    ldm = {k: v.contiguous() for k, v in diffusers_to_ldm(model.state_dict(), "tiny").items()}
    save_file(ldm, tmp_path / "tiny.safetensors")
    converted = convert_ldm_unet_checkpoint(read_state_dict(tmp_path / "tiny.safetensors"), dict(model.config))
    loaded = load_sd_unet(tmp_path / "tiny.safetensors", config="tiny").state_dict()
    assert set(converted) == set(loaded)
    assert all(torch.equal(converted[k], loaded[k]) for k in loaded)


def test_bin_sharded_and_dtype(tmp_path):
    model = _diffusers_unet("tiny")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    assert _same_weights(load_sd_unet(tmp_path / "bin"), model)

    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert _same_weights(load_sd_unet(tmp_path / "sharded"), model)

    model.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert _same_weights(load_sd_unet(tmp_path / "fp16", variant="fp16"), model)
    with pytest.raises(CheckpointError, match="no weights"):
        load_sd_unet(tmp_path / "fp16")  # only the variant is there

    half = load_sd_unet(tmp_path / "bin", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_conv_projections_are_reshaped_for_linear_models(tmp_path):
    """SD 2.x weights with proj_in/proj_out saved as 1x1 convs load into the linear layers."""
    name = "tiny21"
    model = _diffusers_unet(name)
    ldm = diffusers_to_ldm(model.state_dict(), name)
    as_conv = {k: (v[:, :, None, None] if (".proj_in.weight" in k or ".proj_out.weight" in k) else v).contiguous()
               for k, v in ldm.items()}
    assert any(v.ndim == 4 and ".proj_in." in k for k, v in as_conv.items())
    save_file(as_conv, tmp_path / "conv_proj.safetensors")
    assert _same_weights(load_sd_unet(tmp_path / "conv_proj.safetensors", config=name), model)


def test_hub_id_from_local_cache_offline(tmp_path):
    """A hub id is served from the Hugging Face cache without any network."""
    model = _diffusers_unet("tiny")
    # the hub cache layout: models--org--name/{refs/main, snapshots/<commit>/unet/...}
    repo_dir = tmp_path / "hub" / "models--someone--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo_dir / "snapshots" / commit / "unet")
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)

    found = find_local_weights("someone/tiny-sd", cache_dir=tmp_path / "hub")
    assert found is not None and found.name == "unet"
    assert find_local_weights("someone/other", cache_dir=tmp_path / "hub") is None
    assert _same_weights(load_sd_unet("someone/tiny-sd", cache_dir=tmp_path / "hub"), model)


def test_no_weights_no_network_says_how_to_get_them(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for source in ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        with pytest.raises(FileNotFoundError) as info:
            load_sd_unet(source, cache_dir=tmp_path)
        message = str(info.value)
        assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
        assert "unet/diffusion_pytorch_model.safetensors" in message and "local path" in message
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_sd_unet("sdxl", download=False, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_sd_unet(tmp_path / "nothing_here.safetensors")
    with pytest.raises(FileNotFoundError, match="found neither"):
        load_sd_unet(tmp_path)  # an empty folder
    with pytest.raises(TypeError):
        load_sd_unet(3)


# ---- broken files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ldm():
    model = _diffusers_unet("tiny")
    return {k: v.contiguous() for k, v in diffusers_to_ldm(model.state_dict(), "tiny").items()}


def test_truncated_files(tiny_ldm, tmp_path):
    save_file(tiny_ldm, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    for cut in (5, 1000, len(data) // 2):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="cut.safetensors.*truncated"):
            load_sd_unet(tmp_path / "cut.safetensors", config="tiny")
    torch.save({"state_dict": tiny_ldm}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt.*truncated"):
        load_sd_unet(tmp_path / "cut.ckpt", config="tiny")


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tiny_ldm, tmp_path):
    marker = tmp_path / MARKER
    torch.save({"state_dict": tiny_ldm, "callback": _Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "evil.ckpt", config="tiny")
    assert "NOTHING in it was executed" in str(info.value) and "evil.ckpt" in str(info.value)
    assert not marker.exists()
    # a plain pickle (not torch's zip format) is refused the same way
    import pickle

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="NOTHING in it was executed"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_unexpected_and_misshapen_keys_in_one_error(tiny_ldm, tmp_path):
    broken = dict(tiny_ldm)
    gone = sorted(k for k in broken if ".emb_layers.1.weight" in k)[:12]
    for k in gone:
        del broken[k]
    broken[LDM_UNET_PREFIX + "input_blocks.1.0.extra.weight"] = torch.zeros(3)
    broken[LDM_UNET_PREFIX + "not_a_layer.weight"] = torch.zeros(3)
    bad_shape = LDM_UNET_PREFIX + "out.2.weight"
    broken[bad_shape] = torch.zeros(5, 32, 3, 3)
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "broken.safetensors", config="tiny")
    message = str(info.value)
    assert "broken.safetensors" in message
    assert "12 missing key(s)" in message and "… and 2 more" in message
    # missing keys are named in both layouts
    assert f"(in the file: {gone[0]})" in message
    assert "2 unexpected key(s)" in message and LDM_UNET_PREFIX + "not_a_layer.weight" in message
    assert "1 shape mismatch(es)" in message and "conv_out.weight" in message and "(5, 32, 3, 3), model: (4, 32, 3, 3)" in message


def test_wrong_architecture_and_foreign_files(tiny_ldm, tmp_path):
    save_file(tiny_ldm, tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "tiny.safetensors", config="tiny21")
    # why the config is wrong, then the key/shape listing it causes, in one message
    message = str(info.value)
    assert "config='tiny21' does not match the weights" in message
    assert "context 32 wide (attn2.to_k); config says 48 (cross_attention_dim" in message
    assert "shape mismatch(es)" in message and "does not fit this UNet config" in message
    # a tiny UNet's context width names no SD version: built from the tensors, the guesses named
    with pytest.warns(UserWarning, match="guessed: num_attention_heads") as record:
        loaded = load_sd_unet(tmp_path / "tiny.safetensors")
    assert record[0].filename == __file__
    assert loaded.config.name == "inferred" and loaded.config.block_out_channels == (32, 64, 64, 64)
    save_file({"encoder.weight": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="no UNet in it"):
        load_sd_unet(tmp_path / "vae.safetensors", config="tiny")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        load_sd_unet(tmp_path / "list.pt", config="tiny")
    torch.save({"a": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="not tensors"):
        read_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "weights.npz").write_bytes(b"nothing")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        load_sd_unet(tmp_path / "weights.npz", config="tiny")
    folder = tmp_path / "no_weights"
    folder.mkdir()
    shutil.copy(__file__, folder / "unrelated.py")
    (folder / "config.json").write_text(json.dumps(get_config("tiny").to_diffusers()))
    with pytest.raises(CheckpointError, match="no weights"):
        load_sd_unet(folder)


@pytest.mark.slow
def test_full_size_sd15_ldm_file_infers_config_and_matches_diffusers(tmp_path):
    """The real SD 1.5 architecture (random weights), written as an original single file."""
    torch.manual_seed(0)
    model = UNet2DConditionModel(**get_config("sd15").to_diffusers()).eval()
    save_file(diffusers_to_ldm(model.state_dict(), "sd15"), tmp_path / "v1-5-random.safetensors")
    g = torch.Generator().manual_seed(1)
    # a small latent keeps the forward cheap; the weights are what is being checked
    sample, context = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        expected = model(sample, 500, context).sample
    del model
    loaded = load_sd_unet(tmp_path / "v1-5-random.safetensors")  # config inferred: sd15
    assert loaded.config.name == "sd15"
    with torch.no_grad():
        out = loaded(sample, 500, context)
    assert ((out - expected).abs().max() / expected.abs().max()).item() <= 1e-4
