"""The checkpoints learners download (issue 10, failure list 1-3): each case built from tiny random
weights, written in the file's real layout, loaded back and compared equal to the source.

1. original single files with two UNets (training + EMA), or only the EMA copy: ``ema=``;
2. 9-, 8-, 5-channel ``conv_in`` (inpainting, instruct-pix2pix, depth), other ``out_channels``:
   the architecture comes from the tensors (``infer_unet_config``), a contradicting
   ``config=`` is refused naming ``in_channels``; ``infer_prediction_type`` as diffusers;
3. diffusers folders holding only a variant (fp16), sharded (both index names), in the
   Hugging Face cache, and the download patterns per variant.
Cross-checked against diffusers' own single-file code where it has an answer. Offline.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from unetlab.configs import TINY, TINY_21, TINY_XL, UNetConfig
from unetlab.sd.infer import select_unet_weights
from unetlab.sd.ldm_keys import LDM_UNET_PREFIX, diffusers_to_ldm, ema_to_ldm, ldm_to_ema_key, split_ema_key
from unetlab.sd.load import (
    CheckpointError,
    _download_patterns,
    find_local_weights,
    infer_config,
    infer_prediction_type,
    infer_unet_config,
    load_sd_unet,
    weight_variants,
)
from unetlab.sd.unet import SDUNet

diffusers = pytest.importorskip("diffusers")

# tiny UNets whose context width is a real SD family's, so nothing has to be guessed
SD1_WIDE = TINY.replace(name="sd1-tiny", cross_attention_dim=768, num_attention_heads=8, norm_num_groups=32,
                        sample_size=64)
SD2_WIDE = TINY_21.replace(name="sd2-tiny", cross_attention_dim=1024, block_out_channels=(64, 128, 128, 128),
                           num_attention_heads=(1, 2, 2, 2), norm_num_groups=32, sample_size=96)
XL_WIDE = TINY_XL.replace(name="xl-tiny", cross_attention_dim=2048, block_out_channels=(64, 128, 192),
                          num_attention_heads=(1, 2, 3), norm_num_groups=32, sample_size=128,
                          addition_time_embed_dim=256, projection_class_embeddings_input_dim=1280 + 6 * 256)


with torch.device("meta"):
    TINY_KEYS = list(SDUNet(TINY).state_dict())


def _random_unet(config: UNetConfig, seed: int = 0) -> SDUNet:
    """SDUNet with every tensor random (zero-initialised ones too), so a wrong copy cannot pass."""
    torch.manual_seed(seed)
    model = SDUNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _ldm(model: SDUNet, prefix: str = LDM_UNET_PREFIX) -> dict:
    return {k: v.contiguous() for k, v in diffusers_to_ldm(model.state_dict(), model.config, prefix).items()}


def _ema(model: SDUNet) -> dict:
    """The model as LitEma stores it: model_ema.diffusion_model<LDM name without dots>."""
    return {ldm_to_ema_key(k): v for k, v in _ldm(model).items()}


def _same_weights(loaded, model) -> bool:
    ours, theirs = loaded.state_dict(), model.state_dict()
    return set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(autouse=True)
def _no_stray_warnings():
    """A warning that a test does not expect is an error (the EMA warning must be deliberate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


# ---- 1. two UNets in one file: ema= ------------------------------------------------------------
@pytest.fixture(scope="module")
def two_copies():
    """(training model, EMA model, their state dicts as one original training checkpoint)."""
    training, ema = _random_unet(TINY, seed=1), _random_unet(TINY, seed=2)
    vae = {"first_stage_model.decoder.conv_in.weight": torch.zeros(3), "cond_stage_model.x": torch.ones(2)}
    bookkeeping = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5, dtype=torch.int)}
    return training, ema, {**_ldm(training), **_ema(ema), **vae, **bookkeeping}


def test_ema_key_names_are_diffusers_names():
    """LitEma's names: the full LDM key minus 'model.' with its dots removed, and read back."""
    assert ldm_to_ema_key("input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"
    assert ldm_to_ema_key(LDM_UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.bias") == (
        "model_ema.diffusion_modeloutput_blocks111transformer_blocks0attn2to_out0bias"
    )
    # diffusers' rule, verbatim from convert_ldm_unet_checkpoint(extract_ema=True)
    key = LDM_UNET_PREFIX + "input_blocks.11.0.in_layers.2.weight"
    assert ldm_to_ema_key(key) == "model_ema." + "".join(key.split(".")[1:])
    assert split_ema_key("model_ema.diffusion_modelinput_blocks110in_layers2weight") == "input_blocks.11.0.in_layers.2.weight"
    assert split_ema_key("model_ema.diffusion_modellabel_emb00bias") == "label_emb.0.0.bias"
    assert split_ema_key("model_ema.decay") is None and split_ema_key("model_ema.diffusion_modelnot_a_layer") is None
    # every name of every preset survives the round trip
    for config in ("sd15", "sd21", "sdxl", TINY_XL):
        with torch.device("meta"):
            names = list(_ldm(SDUNet(config), prefix=""))
        assert [split_ema_key(ldm_to_ema_key(n)) for n in names] == names


def test_two_copies_default_is_training_copy_with_warning(two_copies, tmp_path):
    training, ema, checkpoint = two_copies
    save_file(checkpoint, tmp_path / "v1-5-pruned.safetensors")
    with pytest.warns(UserWarning, match=r"two UNets.*training \(non-EMA\).*ema=True") as record:
        loaded = load_sd_unet(tmp_path / "v1-5-pruned.safetensors", config="tiny")
    assert _same_weights(loaded, training)
    assert record[0].filename == __file__  # the warning points at the learner's line
    # asked for: no warning (the fixture turns one into an error)
    assert _same_weights(load_sd_unet(tmp_path / "v1-5-pruned.safetensors", config="tiny", ema=True), ema)
    assert _same_weights(load_sd_unet(tmp_path / "v1-5-pruned.safetensors", config="tiny", ema=False), training)
    # the same from a Lightning .ckpt
    torch.save({"state_dict": checkpoint, "global_step": 840000}, tmp_path / "v1-5-pruned.ckpt")
    assert _same_weights(load_sd_unet(tmp_path / "v1-5-pruned.ckpt", config="tiny", ema=True), ema)
    with pytest.raises(TypeError, match="ema must be None, True or False"):
        load_sd_unet(tmp_path / "v1-5-pruned.ckpt", config="tiny", ema="yes")


class _Recording(dict):
    """A state dict that remembers which values were looked up (what a lazy file would read)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_only_the_chosen_copy_is_read(two_copies):
    _, _, checkpoint = two_copies
    for ema, prefix in ((True, "model_ema.diffusion_model"), (False, LDM_UNET_PREFIX)):
        recording = _Recording(checkpoint)
        select_unet_weights(recording, ema)
        assert recording.read and all(k.startswith(prefix) for k in recording.read)
        assert len(recording.read) == len(TINY_KEYS)


def test_ema_copy_equals_diffusers_extract_ema(two_copies):
    """diffusers' convert_ldm_unet_checkpoint(extract_ema=True) picks the same tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    training, ema, checkpoint = two_copies
    converted = convert_ldm_unet_checkpoint(checkpoint, TINY.to_diffusers(), extract_ema=True)
    ours, unknown = ema_to_ldm(checkpoint, TINY)
    assert unknown == []
    ema_state = ema.state_dict()
    assert set(converted) == set(ema_state)
    assert all(torch.equal(converted[k], ema_state[k]) for k in ema_state)
    assert len(ours) == len(ema_state)


def test_ema_only_file_loads(two_copies, tmp_path):
    """A file holding only model_ema.* loads that copy (it used to be 'not an SD UNet checkpoint')."""
    _, ema, checkpoint = two_copies
    only = {k: v for k, v in checkpoint.items() if not k.startswith(LDM_UNET_PREFIX)}
    save_file(only, tmp_path / "ema-only.safetensors")
    assert _same_weights(load_sd_unet(tmp_path / "ema-only.safetensors", config="tiny"), ema)
    assert _same_weights(load_sd_unet(tmp_path / "ema-only.safetensors", config="tiny", ema=True), ema)
    with pytest.raises(CheckpointError, match="holds only the EMA copy.*Pass ema=True or ema=None"):
        load_sd_unet(tmp_path / "ema-only.safetensors", config="tiny", ema=False)
    # the architecture is read from the EMA names too
    assert infer_unet_config(_ema(_random_unet(SD1_WIDE))) == SD1_WIDE
    assert infer_config(_ema(_random_unet(SD1_WIDE))) == "sd15"


def test_ema_true_without_ema_copy_and_broken_ema(two_copies, tmp_path):
    training, _, checkpoint = two_copies
    save_file(_ldm(training), tmp_path / "emaonly-pruned.safetensors")
    with pytest.raises(CheckpointError, match="ema=True, but .* holds no EMA copy.*Pass ema=None"):
        load_sd_unet(tmp_path / "emaonly-pruned.safetensors", config="tiny", ema=True)
    # an EMA copy with a missing tensor and a stray one: both named, in the file's own spelling
    broken = {k: v for k, v in checkpoint.items() if not k.startswith(LDM_UNET_PREFIX)}
    gone = ldm_to_ema_key("out.2.weight")
    del broken[gone]
    broken["model_ema.diffusion_modelsomething_else"] = torch.zeros(1)
    save_file(broken, tmp_path / "broken-ema.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "broken-ema.safetensors", config="tiny")
    message = str(info.value)
    assert f"conv_out.weight (in the file: {gone})" in message
    assert "model_ema.diffusion_modelsomething_else" in message


def test_ema_true_on_diffusers_layouts(tmp_path):
    model = _random_unet(TINY)
    save_file(model.state_dict(), tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="no EMA copy"):
        load_sd_unet(tmp_path / "unet.safetensors", config="tiny", ema=True)


# ---- 2. the architecture from the tensors -----------------------------------------------------
@pytest.mark.parametrize("config", [SD1_WIDE, SD2_WIDE, XL_WIDE], ids=["sd1", "sd2", "xl"])
def test_infer_unet_config_exactly(config):
    """SD-width UNets: every field comes back, from LDM, EMA and diffusers names, no warning."""
    model = _random_unet(config)
    assert infer_unet_config(_ldm(model)) == config
    assert infer_unet_config(_ldm(model, prefix="")) == config
    assert infer_unet_config(_ema(model)) == config
    assert infer_unet_config(model.state_dict()) == config
    # and diffusers builds exactly these tensors from the inferred config
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**infer_unet_config(_ldm(model)).to_diffusers()).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "config,model_type",
    [
        (SD1_WIDE, "v1"),
        (SD2_WIDE, "v2"),
        (SD1_WIDE.replace(in_channels=9), "inpainting"),
        (SD2_WIDE.replace(in_channels=9), "inpainting_v2"),
    ],
)
def test_family_rules_follow_diffusers_model_types(config, model_type):
    """The family read here is diffusers' model type, and sample_size is its default image size / 8."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP, infer_diffusers_model_type

    with torch.device("meta"):
        ldm = _ldm(SDUNet(config))
    assert infer_diffusers_model_type(ldm) == model_type
    inferred = infer_unet_config(ldm)
    assert inferred.sample_size == DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP[model_type] // 8
    # heads: SD 1.x 8 per block (LDM num_heads: 8), SD 2.x 64 channels per head (num_head_channels: 64)
    assert inferred.head_dims == (tuple(c // 8 for c in config.block_out_channels) if model_type in ("v1", "inpainting")
                                  else (64,) * len(config.block_out_channels))


def test_infer_unet_config_on_full_size_presets():
    """The real SD 1.5 / 2.1 / XL shapes (meta tensors: free) give the presets back, by name."""
    for name in ("sd15", "sd21", "sdxl"):
        with torch.device("meta"):
            model = SDUNet(name)
        assert infer_unet_config(_ldm(model)).name == name
        assert infer_unet_config(model.state_dict()).name == name


@pytest.mark.parametrize("in_channels,out_channels", [(9, 4), (8, 4), (5, 4), (4, 8)])
def test_channels_read_from_conv_in_and_conv_out(in_channels, out_channels, tmp_path):
    """Inpainting (9), instruct-pix2pix (8), depth (5), a learned-variance output (8): load as they are."""
    config = SD1_WIDE.replace(in_channels=in_channels, out_channels=out_channels)
    model = _random_unet(config)
    save_file(_ldm(model), tmp_path / "model.safetensors")
    loaded = load_sd_unet(tmp_path / "model.safetensors")
    assert loaded.config == config and _same_weights(loaded, model)
    out = loaded(torch.randn(1, in_channels, 8, 8), 10, torch.randn(1, 3, 768))
    assert out.shape == (1, out_channels, 8, 8)
    assert _same_weights(load_sd_unet(tmp_path / "model.safetensors", config=config), model)


def test_inpainting_file_with_forced_config_names_in_channels(tmp_path):
    model = _random_unet(SD1_WIDE.replace(in_channels=9))
    save_file(_ldm(model), tmp_path / "512-inpainting-ema.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "512-inpainting-ema.safetensors", config=SD1_WIDE)
    message = str(info.value)
    assert ("the checkpoint's conv_in takes 9 channels (4 latent + 1 mask + 4 masked image: an inpainting model); "
            "config says 4 (in_channels)") in message
    assert "Leave config=None" in message and ".replace(in_channels=9)" in message
    # the listing below it still names the tensor, in both layouts
    assert "conv_in.weight (in the file: model.diffusion_model.input_blocks.0.0.weight)" in message
    # the brief's case: config="sd15" on a 9-channel file lists every disagreement at once
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "512-inpainting-ema.safetensors", config="sd15")
    message = str(info.value)
    assert "conv_in takes 9 channels" in message and "config says 4" in message
    assert "block_out_channels=(32, 64, 64, 64); config says (320, 640, 1280, 1280)" in message


def test_folder_config_contradicting_weights(tiny_diffusers, tmp_path):
    """A config= or an edited config.json that the folder's tensors contradict: the fields named."""
    folder = tmp_path / "unet"
    tiny_diffusers.save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"(?s)config='sd1-tiny' does not match.*context 32 wide.*config says 768"):
        load_sd_unet(folder, config=SD1_WIDE)
    edited = json.loads((folder / "config.json").read_text())
    edited["in_channels"] = 9
    (folder / "config.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(folder)
    message = str(info.value)
    assert "config.json does not describe these weights" in message
    assert "conv_in takes 4 channels (4 latent channels: a text-to-image model); config says 9" in message


def test_weights_file_given_directly_uses_its_config_json(tiny_diffusers, tmp_path):
    """unet/diffusion_pytorch_model.safetensors as the source: the config.json next to it, no guessing."""
    tiny_diffusers.save_pretrained(tmp_path / "unet")
    loaded = load_sd_unet(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")  # no guess warning
    assert loaded.config == TINY
    with pytest.raises(ValueError, match="pass variant=None, or pass the folder"):
        load_sd_unet(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", variant="fp16")


def test_depth_of_levels_without_attention_is_not_a_disagreement():
    """diffusers' SDXL refiner config says 4 transformer layers for every level, attention or not."""
    from unetlab.sd.infer import config_disagreements, unet_facts

    refiner_like = XL_WIDE.replace(transformer_layers_per_block=(1, 2, 3))
    facts = unet_facts(_ldm(_random_unet(refiner_like)))
    assert config_disagreements(refiner_like.replace(transformer_layers_per_block=(7, 2, 3)), facts) == []
    lines = config_disagreements(refiner_like.replace(transformer_layers_per_block=(1, 2, 4)), facts)
    assert len(lines) == 1 and "transformer_layers_per_block=(1, 2, 3)" in lines[0]


def test_sd2_and_xl_files_load_without_config(tmp_path):
    for config in (SD2_WIDE, XL_WIDE):
        model = _random_unet(config)
        save_file(_ldm(model), tmp_path / f"{config.name}.safetensors")
        loaded = load_sd_unet(tmp_path / f"{config.name}.safetensors")
        assert loaded.config == config and _same_weights(loaded, model)


def test_guessed_fields_warn_and_name_themselves():
    """A width that names no SD family: shapes still exact, the guesses said out loud."""
    for config in (TINY, TINY_21, TINY_XL):
        model = _random_unet(config)
        with pytest.warns(UserWarning, match="not stored in the weights and were guessed") as record:
            inferred = infer_unet_config(_ldm(model))
        assert "num_attention_heads" in str(record[0].message) and "pass config=" in str(record[0].message)
        assert record[0].filename == __file__
        for field in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                      "up_block_types", "transformer_layers_per_block", "cross_attention_dim",
                      "use_linear_projection", "addition_embed_type", "projection_class_embeddings_input_dim"):
            assert getattr(inferred, field) == getattr(config, field), field


def test_unsupported_layouts_list_every_problem():
    """Class embeddings (x4 upscaler) and a 1x1 conv_in are not SDUNet's: both named in one error."""
    state = _random_unet(TINY).state_dict()
    state["class_embedding.linear_1.weight"] = torch.zeros(2, 2)
    state["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    with pytest.raises(CheckpointError) as info:
        infer_unet_config(state)
    message = str(info.value)
    assert "class embedding (class_embedding.*) is not in SDUNet" in message and "conv_in kernel (1, 1)" in message
    assert "pass config=" in message


# ---- 2b. prediction type, as diffusers infers it --------------------------------------------
def _diffusers_prediction_type(checkpoint: dict) -> str:
    """diffusers' own answer for a single file (_legacy_load_scheduler spells the rule out)."""
    from diffusers import DDIMScheduler
    from diffusers.loaders import single_file_utils

    saved = copy.deepcopy(single_file_utils.SCHEDULER_DEFAULT_CONFIG)  # it edits this module global
    try:
        return single_file_utils._legacy_load_scheduler(DDIMScheduler, checkpoint, "scheduler").config.prediction_type
    finally:
        single_file_utils.SCHEDULER_DEFAULT_CONFIG.clear()
        single_file_utils.SCHEDULER_DEFAULT_CONFIG.update(saved)


@pytest.mark.parametrize(
    "config,step,expected",
    [
        (SD1_WIDE, None, "epsilon"),
        (SD2_WIDE, None, "v_prediction"),  # SD 2.x: the 768-px v-model
        (SD2_WIDE, 875000, "epsilon"),  # SD 2.0-base's global_step: diffusers' one exception
        (SD2_WIDE.replace(in_channels=9), None, "epsilon"),  # SD 2 inpainting
        (SD2_WIDE.replace(in_channels=8), None, "v_prediction"),  # diffusers: only 9 channels is 'inpainting'
        (XL_WIDE, None, "epsilon"),
    ],
)
def test_infer_prediction_type_as_diffusers(config, step, expected, tmp_path):
    model = _random_unet(config)
    checkpoint = _ldm(model) if step is None else {**_ldm(model), "global_step": step}
    assert _diffusers_prediction_type(checkpoint) == expected
    assert infer_prediction_type(checkpoint) == expected
    assert infer_prediction_type({"state_dict": _ldm(model), "global_step": torch.tensor(step or 0)}) == expected
    if step is None:
        assert infer_prediction_type(config) == expected
        assert infer_prediction_type(model.state_dict()) == expected
        assert infer_prediction_type(_ema(model)) == expected
        save_file(_ldm(model), tmp_path / "m.safetensors")
        assert infer_prediction_type(tmp_path / "m.safetensors") == expected  # header only
    else:
        torch.save({"state_dict": _ldm(model), "global_step": step}, tmp_path / "m.ckpt")
        assert infer_prediction_type(str(tmp_path / "m.ckpt")) == expected


def test_prediction_type_from_configs_and_folders(tmp_path):
    assert infer_prediction_type("sd21") == "v_prediction" and infer_prediction_type("sd15") == "epsilon"
    with torch.device("meta"):
        assert infer_prediction_type(SDUNet("sd21")) == "v_prediction"
    assert infer_prediction_type({"prediction_type": "sample", "beta_schedule": "linear"}) == "sample"
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        infer_prediction_type({"prediction_type": "x0"})
    pipeline = tmp_path / "pipe"
    (pipeline / "scheduler").mkdir(parents=True)
    (pipeline / "unet").mkdir()
    (pipeline / "unet" / "config.json").write_text(json.dumps(SD2_WIDE.to_diffusers()))
    # the scheduler config wins over the UNet's shape: an SD 2.x-base pipeline says epsilon
    (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    assert infer_prediction_type(pipeline) == "epsilon"
    (pipeline / "scheduler" / "scheduler_config.json").unlink()
    assert infer_prediction_type(pipeline) == "v_prediction"  # only the UNet's config left
    with pytest.raises(FileNotFoundError):
        infer_prediction_type(tmp_path / "nothing.safetensors")


# ---- 3. variants, shards, the cache -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_diffusers():
    """diffusers' UNet for TINY with random weights (it writes the folders, as a download would be)."""
    model = diffusers.UNet2DConditionModel(**TINY.to_diffusers()).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def test_fp16_only_folder(tiny_diffusers, tmp_path):
    folder = tmp_path / "unet"
    half = copy.deepcopy(tiny_diffusers)
    with torch.no_grad():
        for p in half.parameters():
            p.data = p.data.half()  # (diffusers' .to(float16) logs a note about fp32 modules)
    half.save_pretrained(folder, variant="fp16")
    assert sorted(os.listdir(folder)) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert weight_variants(folder) == ["fp16"] and weight_variants(tmp_path / "nothing") == []
    loaded = load_sd_unet(folder, variant="fp16")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    theirs = tiny_diffusers.state_dict()
    assert all(torch.equal(v, theirs[k].half().float()) for k, v in loaded.state_dict().items())
    # as in diffusers, the variant is not picked silently: the error shows the file and the argument
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(folder)
    message = str(info.value)
    assert "diffusion_pytorch_model.fp16.safetensors" in message and 'pass variant="fp16"' in message
    assert "hf download" not in message  # no advice to download what is already here
    with pytest.raises(CheckpointError, match=r'(?s)no weights for variant="bf16".*pass variant="fp16"'):
        load_sd_unet(folder, variant="bf16")
    with pytest.raises(TypeError, match="variant must be"):
        load_sd_unet(folder, variant="fp16.safetensors")


def test_sharded_folders_every_name(tiny_diffusers, tmp_path):
    plain, fp16 = tmp_path / "plain", tmp_path / "fp16"
    tiny_diffusers.save_pretrained(plain, max_shard_size="300KB")
    tiny_diffusers.save_pretrained(fp16, max_shard_size="300KB", variant="fp16")
    assert (fp16 / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    state = tiny_diffusers.state_dict()

    def same(loaded):
        return all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())

    assert same(load_sd_unet(plain)) and same(load_sd_unet(fp16, variant="fp16"))
    with pytest.raises(CheckpointError, match='pass variant="fp16"'):
        load_sd_unet(fp16)
    # the older sharded-variant layout diffusers still reads: ….fp16.safetensors.index.json, shards …-0000k-of-n.fp16.safetensors
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((fp16 / "config.json").read_text())
    index = json.loads((fp16 / "diffusion_pytorch_model.safetensors.index.fp16.json").read_text())
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        # diffusion_pytorch_model.fp16-00001-of-00054.safetensors -> diffusion_pytorch_model-00001-of-00054.fp16.safetensors
        new = shard.replace(".fp16-", "-").replace(".safetensors", ".fp16.safetensors")
        (legacy / new).write_bytes((fp16 / shard).read_bytes())
        renamed[shard] = new
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (legacy / "diffusion_pytorch_model.fp16.safetensors.index.json").write_text(json.dumps(index))
    assert same(load_sd_unet(legacy, variant="fp16"))
    # an interrupted download: the index names a shard that is not there
    missing = sorted(renamed.values())[3]
    (legacy / missing).unlink()
    with pytest.raises(CheckpointError, match=f"(?s)1 of its .* shard.*interrupted download.*{missing}"):
        load_sd_unet(legacy, variant="fp16")


def _fake_cache(root, repo: str, model, **save_kwargs):
    """The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/unet/...}."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo_dir / "snapshots" / commit / "unet", **save_kwargs)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit / "unet"


def test_cache_with_only_fp16(tiny_diffusers, tmp_path):
    hub = tmp_path / "hub"
    unet = _fake_cache(hub, "someone/tiny-sd", tiny_diffusers, variant="fp16")
    assert find_local_weights("someone/tiny-sd", cache_dir=hub) is None
    assert find_local_weights("someone/tiny-sd", variant="fp16", cache_dir=hub) == unet
    assert find_local_weights("someone/tiny-sd", subfolder="unet", variant="bf16", cache_dir=hub) is None
    state = tiny_diffusers.state_dict()
    loaded = load_sd_unet("someone/tiny-sd", variant="fp16", cache_dir=hub)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(FileNotFoundError) as info:
        load_sd_unet("someone/tiny-sd", cache_dir=hub)
    message = str(info.value)
    assert 'The cache holds unet/ weights as variant="fp16"' in message and 'pass variant="fp16"' in message
    # sharded, in the cache; then a shard lost: not usable offline, so not found
    sharded = _fake_cache(hub, "someone/sharded", tiny_diffusers, variant="fp16", max_shard_size="300KB")
    assert find_local_weights("someone/sharded", variant="fp16", cache_dir=hub) == sharded
    loaded = load_sd_unet("someone/sharded", variant="fp16", cache_dir=hub)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    next(sharded.glob("*-00002-of-*.safetensors")).unlink()
    assert find_local_weights("someone/sharded", variant="fp16", cache_dir=hub) is None


def test_download_patterns_pick_one_variant(tiny_diffusers, tmp_path):
    """snapshot_download's allow_patterns select exactly the files of the asked variant."""
    folder = tmp_path / "unet"
    for kwargs in ({}, {"variant": "fp16"}, {"max_shard_size": "300KB"}, {"variant": "fp16", "max_shard_size": "300KB"}):
        tiny_diffusers.save_pretrained(folder, **kwargs)
    tiny_diffusers.save_pretrained(folder, variant="non_ema")
    files = [f"unet/{f}" for f in os.listdir(folder)]
    assert weight_variants(folder) == [None, "fp16", "non_ema"]

    def picked(variant):
        return sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in _download_patterns("unet", variant)))

    fp16 = picked("fp16")
    assert "unet/config.json" in fp16 and "unet/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert "unet/diffusion_pytorch_model.safetensors.index.fp16.json" in fp16
    assert all("fp16" in f for f in fp16 if f != "unet/config.json")
    assert len([f for f in fp16 if "-of-" in f]) == len([f for f in files if "fp16-" in f])
    plain = picked(None)
    assert "unet/diffusion_pytorch_model.safetensors" in plain and "unet/diffusion_pytorch_model.safetensors.index.json" in plain
    assert not any("fp16" in f or "non_ema" in f for f in plain)


def test_download_asks_for_the_variant(tiny_diffusers, tmp_path, monkeypatch):
    """The download path (network replaced by a fake snapshot_download): variant files only, then loaded."""
    import huggingface_hub
    from huggingface_hub import constants

    source = tmp_path / "remote" / "unet"
    tiny_diffusers.save_pretrained(source)
    tiny_diffusers.save_pretrained(source, variant="fp16")
    calls = []

    def fake_snapshot_download(repo, allow_patterns, cache_dir):
        """Copy the 'remote' files that allow_patterns select into a cache snapshot, like the hub client."""
        calls.append((repo, list(allow_patterns)))
        repo_dir = cache_dir / ("models--" + repo.replace("/", "--"))
        commit = "89abcdef0123456789abcdef0123456789abcdef"
        unet = repo_dir / "snapshots" / commit / "unet"
        unet.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        for f in source.iterdir():
            if any(fnmatch.fnmatch(f"unet/{f.name}", p) for p in allow_patterns):
                (unet / f.name).write_bytes(f.read_bytes())
        return str(unet.parent)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = load_sd_unet("someone/remote-sd", variant="fp16", cache_dir=tmp_path / "hub")
    state = tiny_diffusers.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert calls[0][0] == "someone/remote-sd" and "unet/diffusion_pytorch_model.fp16.safetensors" in calls[0][1]
    unet = find_local_weights("someone/remote-sd", variant="fp16", cache_dir=tmp_path / "hub")
    assert sorted(f.name for f in unet.iterdir()) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    # now cached: no second download
    load_sd_unet("someone/remote-sd", variant="fp16", cache_dir=tmp_path / "hub")
    assert len(calls) == 1
    # a variant the repo does not have: the error lists what came and says what to pass
    with pytest.raises(CheckpointError, match='(?s)no weights for variant="bf16".*pass variant="fp16"'):
        load_sd_unet("someone/remote-sd", variant="bf16", cache_dir=tmp_path / "hub")


# ---- bad input: a single file with no UNet -------------------------------------------------------
def test_folder_without_config_says_what_is_there(tiny_diffusers, tmp_path):
    """A folder with weights but no config.json, or with a single file in it: the error points at the file."""
    tiny_diffusers.save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_sd_unet(tmp_path / "unet")
    message = str(info.value)
    assert "diffusion_pytorch_model.safetensors is there without its config.json: pass the file itself" in message
    (tmp_path / "downloads").mkdir()
    save_file({"x": torch.zeros(1)}, tmp_path / "downloads" / "v1-5-pruned-emaonly.safetensors")
    with pytest.raises(FileNotFoundError, match=r"(?s)In .*downloads: v1-5-pruned-emaonly.safetensors.*load by their path"):
        load_sd_unet(tmp_path / "downloads")


def test_single_file_without_unet_says_what_it_is(tmp_path):
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(2),
               "cond_stage_model.transformer.text_model.x": torch.zeros(2)}, tmp_path / "vae_clip.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_sd_unet(tmp_path / "vae_clip.safetensors")
    message = str(info.value)
    assert "no UNet in it" in message and "a VAE" in message and "a text encoder" in message
    assert "Pass the full model file" in message
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="LoRA"):
        load_sd_unet(tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="no UNet in it"):
        select_unet_weights({"decay": torch.zeros(1)})
    # a diffusers ControlNet has conv_in and down blocks, but it is not a UNet
    from diffusers import ControlNetModel

    with torch.device("meta"):
        controlnet = ControlNetModel(**{k: v for k, v in TINY.to_diffusers().items() if k not in (
            "out_channels", "up_block_types", "center_input_sample", "sample_size")})
    with pytest.raises(CheckpointError, match="(?s)no UNet in it.*a ControlNet"):
        infer_unet_config(controlnet.state_dict())
    # infer_config still reads a ControlNet's context width (unetlab.sd.controlnet relies on it)
    with torch.device("meta"):
        controlnet = ControlNetModel(cross_attention_dim=768, block_out_channels=(32, 64, 64, 64),
                                     norm_num_groups=8, attention_head_dim=4)
    assert infer_config(controlnet.state_dict()) == "sd15"
