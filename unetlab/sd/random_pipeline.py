"""A Stable Diffusion pipeline with random weights, saved in diffusers layout — made offline.

The real-weights path of the course (``unetlab.sd.pipeline.load_sd_components`` and the real
cells of chapters 2, 5 and 6) must be tested without the real weights: CI has no network and no
4 GB download. This module writes a pipeline folder exactly as ``hf download`` leaves one on disk,
with all five components built from diffusers' and transformers' own classes:

    folder/
      model_index.json
      unet/          config.json + diffusion_pytorch_model.safetensors   (UNet2DConditionModel)
      vae/           config.json + diffusion_pytorch_model.safetensors   (AutoencoderKL)
      text_encoder/  config.json + model.safetensors                     (CLIPTextModel)
      tokenizer/     vocab.json + merges.txt + tokenizer_config.json     (CLIPTokenizer)
      scheduler/     scheduler_config.json                               (DDIMScheduler)

The tokenizer's vocabulary is written here: every byte-level character (alone and as a word
end, so any text tokenizes), plus merges that make a short list of words single tokens.

API
---
``save_random_pipeline(folder, size="tiny", *, prediction_type=None, seed=0) -> Path``
    ``size="tiny"``: sizes chosen *unlike* SD 1.5's, so that code assuming SD 1.5 numbers fails:
    6 latent channels, VAE factor 4 (3 VAE blocks), 16×16 latents (64×64 images), context width
    32, token length 16, v-prediction with "trailing" timesteps. A UNet call takes milliseconds.
    ``size="sd15"``: SD 1.5's exact configs (UNet 859,520,964 parameters, VAE, CLIP ViT-L/14 text
    encoder, ε-prediction) with random weights: about 4.3 GB on disk in float32.
``SIZES``
    The names accepted by ``size``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["save_random_pipeline", "SIZES", "VOCAB_WORDS"]

# words that become single tokens (the prompts used in the chapters and tests)
VOCAB_WORDS = (
    "a an the of on in at with and photograph photo red green blue yellow white black fox apple dog cat "
    "snow wooden table small large circle square triangle top bottom left right"
).split()

# diffusers UNet2DConditionModel configs
_UNET = {
    "tiny": dict(
        sample_size=16, in_channels=6, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2, cross_attention_dim=32, norm_num_groups=8,
    ),
}
# diffusers AutoencoderKL configs; scale factor = 2 ** (len(block_out_channels) - 1)
_VAE = {
    "tiny": dict(
        in_channels=3, out_channels=3, latent_channels=6, sample_size=64, layers_per_block=1,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=4, scaling_factor=0.5,
    ),
    "sd15": dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, scaling_factor=0.18215,
    ),
}
# transformers CLIPTextConfig fields (vocab size and special token ids are filled in from the vocabulary)
_TEXT = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=16, projection_dim=32, hidden_act="quick_gelu"),
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408),
}
# diffusers DDIMScheduler configs
_SCHEDULER_COMMON = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)
_SCHEDULER = {
    "tiny": dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    "sd15": dict(prediction_type="epsilon", timestep_spacing="leading"),
}
SIZES = tuple(_VAE)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-level alphabet: each of the 256 bytes -> a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocabulary(words=VOCAB_WORDS) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a byte-level BPE in CLIP's format: ``</w>`` marks a word's end."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    # 256 characters inside a word, 256 at a word's end: any text tokenizes
    for c in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(c, len(vocab))
    merges: list[str] = []
    for word in words:
        # r, e, d</w> -> re, d</w> -> red</w>: every intermediate token is in the vocabulary too
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        token = pieces[0]
        for piece in pieces[1:]:
            rule = f"{token} {piece}"
            if rule not in merges:
                merges.append(rule)
            token += piece
            vocab.setdefault(token, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def _save_tokenizer(folder: Path, max_length: int) -> dict[str, int]:
    """vocab.json + merges.txt + tokenizer_config.json (what SD's tokenizer/ folder holds)."""
    vocab, merges = _vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = dict(bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(dict(tokenizer_class="CLIPTokenizer", model_max_length=max_length, **special), indent=2)
    )
    return vocab


def save_random_pipeline(folder: str | os.PathLike, size: str = "tiny", *, prediction_type: str | None = None,
                         seed: int = 0) -> Path:
    """Write a randomly initialised SD pipeline in diffusers layout to ``folder``; returns the folder.

    ``size``: ``"tiny"`` (fast, sizes unlike SD 1.5's) or ``"sd15"`` (full size); see the module doc.
    ``prediction_type``: overrides the scheduler's (``"epsilon"``, ``"v_prediction"``, ``"sample"``).
    ``seed``: the weights are a function of it (``torch.manual_seed`` before each component).
    Raises ``ValueError`` for an unknown size or prediction type. Needs no network.
    """
    from unetlab.sd.pipeline import _quiet

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if prediction_type not in (None, "epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet():  # no "Writing model shards" progress bars
        _save_components(folder, size, prediction_type, seed)
    return folder


def _save_components(folder: Path, size: str, prediction_type: str | None, seed: int) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # ---- tokenizer and text encoder -----------------------------------------------------------
    text = dict(_TEXT[size])
    vocab = _save_tokenizer(folder / "tokenizer", text["max_position_embeddings"])
    text.setdefault("vocab_size", len(vocab))
    text_config = CLIPTextConfig(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS], **text)
    torch.manual_seed(seed)
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")

    # ---- UNet ----------------------------------------------------------------------------------
    if size == "sd15":
        from unetlab.configs import SD15

        unet_config = SD15.to_diffusers()
    else:
        unet_config = dict(_UNET[size])
    torch.manual_seed(seed + 1)
    UNet2DConditionModel(**unet_config).save_pretrained(folder / "unet")

    # ---- VAE -----------------------------------------------------------------------------------
    torch.manual_seed(seed + 2)
    AutoencoderKL(**_VAE[size]).save_pretrained(folder / "vae")

    # ---- scheduler -----------------------------------------------------------------------------
    scheduler = dict(_SCHEDULER_COMMON, **_SCHEDULER[size])
    if prediction_type is not None:
        scheduler["prediction_type"] = prediction_type
    DDIMScheduler(**scheduler).save_pretrained(folder / "scheduler")

    # ---- model_index.json: what diffusers' StableDiffusionPipeline.from_pretrained reads ---------
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
