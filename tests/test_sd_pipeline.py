"""unetlab.sd.pipeline on a tiny random pipeline in diffusers layout: sizes from configs, parity, bad input."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from unetlab.sd.ldm_keys import diffusers_to_ldm
from unetlab.sd.pipeline import (
    ENV_DEVICE,
    ENV_WEIGHTS,
    ComponentError,
    WeightsNotFoundError,
    find_sd_weights,
    load_sd_components,
    no_weights_message,
    select_device,
    select_dtype,
)
from unetlab.sd.random_pipeline import save_random_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_random_pipeline(tmp_path_factory.mktemp("pipe") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_sd_components(tiny_dir, device="cpu")


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No variable set, and an empty Hugging Face cache."""
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(ENV_DEVICE, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return tmp_path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---- sizes come from the configs, not from SD 1.5 -------------------------------------------
def test_every_size_is_read_from_the_configs(tiny):
    assert (tiny.latent_channels, tiny.vae_scale_factor, tiny.vae_scaling_factor) == (6, 4, 0.5)
    assert (tiny.text_width, tiny.token_length, tiny.prediction_type) == (32, 16, "v_prediction")
    assert (tiny.sample_size, tiny.image_size) == (16, 64)
    assert tiny.latent_shape(2) == (2, 6, 16, 16)
    assert tiny.latent_shape(1, 96, 32) == (1, 6, 24, 8)
    assert tiny.encode_prompt(["", "a red fox"]).shape == (2, 16, 32)
    assert tiny.decode(torch.zeros(1, 6, 16, 16)).shape == (1, 3, 64, 64)
    assert tiny.unet.dtype == torch.float32 and tiny.device.type == "cpu" and tiny.kind == "pipeline"
    text = tiny.describe()
    assert "6 latent channels" in text and "v_prediction" in text and "(1, 6, 16, 16)" in text


def test_latent_shape_refuses_sizes_the_unet_cannot_halve(tiny):
    # VAE factor 4 × one UNet downsampling = multiples of 8
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny.latent_shape(1, 60, 64)
    with pytest.raises(ValueError, match=r"shape \(B, 6, h, w\)"):
        tiny.decode(torch.zeros(1, 4, 16, 16))


def test_components_equal_diffusers_pipeline(tiny, tiny_dir):
    """Same text context, UNet output and decoded image as diffusers' StableDiffusionPipeline."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    prompts = ["a red fox in the snow", ""]
    context = tiny.encode_prompt(prompts)
    with torch.no_grad():
        ref_context = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
        torch.testing.assert_close(context, ref_context)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(tiny.latent_shape(2), generator=g)
        ours = tiny.unet(latents, torch.tensor([999, 10]), context)
        ref = pipe.unet(latents, torch.tensor([999, 10]), encoder_hidden_states=context).sample
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
        ref_image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(tiny.decode(latents), ref_image)


def test_sampler_follows_the_scheduler_config(tiny, tiny_dir):
    """v-prediction and trailing timesteps, as diffusers' DDIMScheduler reads the same config."""
    from diffusers import DDIMScheduler

    sampler = tiny.sampler(10)
    assert (sampler.prediction_type, sampler.timestep_spacing) == ("v_prediction", "trailing")
    reference = DDIMScheduler.from_pretrained(tiny_dir / "scheduler")
    reference.set_timesteps(10)
    assert sampler.timesteps.tolist() == reference.timesteps.tolist()


def test_time_estimate_comes_from_a_timed_call(tiny):
    seconds = tiny.time_unet_call(batch=2)
    assert seconds > 0
    line = tiny.estimate(30, batch=2)
    assert line.startswith("30 UNet calls × ") and "batch 2, cpu, float32" in line


# ---- where the weights are --------------------------------------------------------------------
def test_environment_variable_overrides_the_search(no_env, monkeypatch, tiny_dir):
    assert find_sd_weights() is None  # empty cache, no variable
    monkeypatch.setenv(ENV_WEIGHTS, str(tiny_dir))
    assert find_sd_weights() == tiny_dir.resolve()
    assert load_sd_components(device="cpu").source == tiny_dir.resolve()


def test_variable_pointing_at_nothing_is_a_clear_error(no_env, monkeypatch):
    monkeypatch.setenv(ENV_WEIGHTS, str(no_env / "nowhere"))
    with pytest.raises(WeightsNotFoundError, match=f"{ENV_WEIGHTS}=.*nowhere.*no such file or folder"):
        find_sd_weights()
    with pytest.raises(WeightsNotFoundError, match="Unset UNETLAB_SD_WEIGHTS"):
        load_sd_components(device="cpu")
    # a hub id that is not in the cache: never downloaded, the error says how to get it
    monkeypatch.setenv(ENV_WEIGHTS, "some-user/some-model")
    with pytest.raises(WeightsNotFoundError, match="not in the Hugging Face cache(.|\n)*hf download some-user/some-model"):
        find_sd_weights()


def test_no_weights_anywhere_says_what_to_do(no_env):
    with pytest.raises(WeightsNotFoundError, match="UNETLAB_SD_WEIGHTS is not set(.|\n)*hf download"):
        load_sd_components(device="cpu")
    assert "UNETLAB_SD_WEIGHTS" in no_weights_message() and "README" in no_weights_message()


def test_hub_id_found_in_the_cache(no_env, monkeypatch, tiny_dir):
    """A pipeline in the HF cache layout (models--org--name/snapshots/rev/...) is found by id, offline."""
    cache = no_env / "cache"
    repo = cache / "models--some-org--tiny-sd"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    _copy(tiny_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert find_sd_weights("some-org/tiny-sd") == snapshot
    monkeypatch.setenv(ENV_WEIGHTS, "some-org/tiny-sd")
    assert load_sd_components(device="cpu").source == snapshot


# ---- device and dtype --------------------------------------------------------------------------
def test_device_variable_is_validated(monkeypatch):
    monkeypatch.setenv(ENV_DEVICE, "gpu")
    with pytest.raises(ValueError, match="UNETLAB_DEVICE='gpu': expected 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        select_device()
    monkeypatch.setenv(ENV_DEVICE, "CPU")
    assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv(ENV_DEVICE, "cuda")
        with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
            select_device()


def test_dtype_is_fp16_on_a_gpu_and_fp32_on_the_cpu():
    assert select_dtype("cpu") == torch.float32
    assert select_dtype("cuda") == torch.float16
    assert select_dtype("mps") == torch.float16
    assert select_dtype("cpu", torch.bfloat16) == torch.bfloat16
    with pytest.raises(TypeError, match="floating torch.dtype"):
        select_dtype("cpu", torch.int64)


def test_fp16_weights_with_fp32_inputs_is_a_clear_error(tiny_dir):
    half = load_sd_components(tiny_dir, device="cpu", dtype=torch.float16)
    assert half.unet.dtype == half.text_encoder.dtype == half.vae.dtype == torch.float16
    sample = torch.zeros(half.latent_shape(1))
    context = torch.zeros(1, half.token_length, half.text_width)
    with pytest.raises(TypeError, match=r"sample has dtype torch.float32 and context has dtype torch.float32 but the "
                                        r"model's weights are torch.float16: cast the inputs"):
        half.unet(sample, 10, context)


# ---- folders that cannot run ------------------------------------------------------------------
def test_folder_missing_components_lists_every_one(tiny_dir, tmp_path):
    broken = _copy(tiny_dir, tmp_path / "broken")
    shutil.rmtree(broken / "vae")
    (broken / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(ComponentError, match=r"missing 2 component file\(s\):\n    vae/config.json\n    tokenizer/vocab.json"):
        load_sd_components(broken, device="cpu")


def test_unet_folder_alone_points_at_the_pipeline(tiny_dir):
    with pytest.raises(ComponentError, match="looks like a UNet folder on its own"):
        load_sd_components(tiny_dir / "unet", device="cpu")


def test_text_width_unlike_the_unet_is_a_clear_error(tiny_dir, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    mixed = _copy(tiny_dir, tmp_path / "mixed")
    config = CLIPTextConfig.from_pretrained(mixed / "text_encoder")
    config.hidden_size, config.projection_dim = 48, 48
    shutil.rmtree(mixed / "text_encoder")
    CLIPTextModel(config).save_pretrained(mixed / "text_encoder")
    with pytest.raises(ComponentError, match="context 48 wide .* expects cross_attention_dim=32"):
        load_sd_components(mixed, device="cpu")


def test_sdxl_pipeline_is_refused_clearly(tiny_dir, tmp_path):
    xl = _copy(tiny_dir, tmp_path / "xl")
    index = json.loads((xl / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (xl / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ComponentError, match="SDXL pipeline .* not supported"):
        load_sd_components(xl, device="cpu")


def test_fp16_variant_only_folder_loads(tiny_dir, tmp_path):
    """What `hf download ... --include '*fp16*'` leaves: only *.fp16.safetensors in every model folder."""
    variant = _copy(tiny_dir, tmp_path / "variant")
    for folder, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (variant / folder / f"{stem}.safetensors").rename(variant / folder / f"{stem}.fp16.safetensors")
    sd = load_sd_components(variant, device="cpu")
    assert any("fp16 variant" in note for note in sd.notes)
    reference = load_sd_components(tiny_dir, device="cpu")
    x = torch.randn(sd.latent_shape(1), generator=torch.Generator().manual_seed(0))
    context = sd.encode_prompt(["a red apple"])
    with torch.no_grad():
        torch.testing.assert_close(sd.unet(x, 500, context), reference.unet(x, 500, context))


# ---- a single file ----------------------------------------------------------------------------
def _single_file(tiny_dir, path, with_clip=False):
    """The tiny UNet under LDM names (model.diffusion_model.input_blocks…), as an original checkpoint stores it."""
    from unetlab.sd.pipeline import _unet_config_of

    unet = load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors")
    tensors = diffusers_to_ldm(unet, _unet_config_of(tiny_dir))
    if with_clip:
        clip = load_file(tiny_dir / "text_encoder" / "model.safetensors")
        # SD 1.x files keep HF's CLIP names under cond_stage_model.transformer.text_model.; shift the weights so the
        # test sees that they were used
        tensors.update({f"cond_stage_model.transformer.text_model.{k}": v + 0.5 for k, v in clip.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_single_file_unet_with_a_base_pipeline(tiny, tiny_dir, tmp_path):
    path = _single_file(tiny_dir, tmp_path / "tiny-ldm.safetensors", with_clip=True)
    single = load_sd_components(path, device="cpu", base=tiny_dir)
    # the tensors say nothing about v: like diffusers, the loader calls this file epsilon, unlike its base
    assert single.prediction_type == "epsilon" and any("prediction type: epsilon" in n for n in single.notes)
    assert load_sd_components(path, device="cpu", base=tiny_dir, prediction_type="v_prediction").prediction_type == "v_prediction"
    assert single.kind == "single file" and single.source == path.resolve()
    assert any("text encoder: weights from the file" in n for n in single.notes)
    assert any("VAE: the file has none" in n for n in single.notes)
    x = torch.randn(tiny.latent_shape(2), generator=torch.Generator().manual_seed(0))
    context = tiny.encode_prompt(["", "a red fox"])
    with torch.no_grad():
        torch.testing.assert_close(single.unet(x, 300, context), tiny.unet(x, 300, context))
        # the file's (shifted) text encoder weights replaced the base's
        word = tiny.text_encoder.get_input_embeddings().weight
        torch.testing.assert_close(single.text_encoder.get_input_embeddings().weight, word + 0.5)


def test_single_file_without_a_base_says_what_else_is_needed(tiny_dir, tmp_path, no_env):
    path = _single_file(tiny_dir, tmp_path / "tiny-ldm.safetensors")
    # the loader warns that a non-SD file's head count was guessed, then the pipeline refuses: no base
    with pytest.raises(ComponentError, match="never a tokenizer(.|\n)*base="), pytest.warns(UserWarning, match="guessed"):
        load_sd_components(path, device="cpu")


def test_random_pipeline_refuses_unknown_sizes(tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        save_random_pipeline(tmp_path / "x", size="huge")
    with pytest.raises(ValueError, match="prediction_type"):
        save_random_pipeline(tmp_path / "x", prediction_type="v")


def test_full_size_configs_are_sd15s():
    """gpu_check's pipeline has SD 1.5's exact component sizes (counted on the meta device, nothing allocated)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unetlab.configs import SD15
    from unetlab.sd import random_pipeline as rp

    vocab, _ = rp._vocabulary()
    text = CLIPTextConfig(bos_token_id=vocab[rp.BOS], eos_token_id=vocab[rp.EOS], pad_token_id=vocab[rp.EOS],
                          **rp._TEXT["sd15"])
    with torch.device("meta"):
        counts = [sum(p.numel() for p in m.parameters()) for m in (
            UNet2DConditionModel(**SD15.to_diffusers()), AutoencoderKL(**rp._VAE["sd15"]), CLIPTextModel(text))]
    # the course's reference figures (shared/design.md)
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert max(vocab.values()) < text.vocab_size
