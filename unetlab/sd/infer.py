"""What a UNet checkpoint is, read from its tensors: which copy to load, its config, its prediction type.

A diffusers folder carries ``unet/config.json`` and ``scheduler/scheduler_config.json``; an
original single file (``v1-5-pruned-emaonly.safetensors``, ``512-inpainting-ema.ckpt`` …) carries
only tensors. This module reads what the tensors say and, for what they cannot say (number of
attention heads, GroupNorm groups, prediction type), applies the rules diffusers applies
(``diffusers/loaders/single_file_utils.py``: ``infer_diffusers_model_type``, the default pipeline
config of each model type, ``_legacy_load_scheduler``).

API
---
``select_unet_weights(state_dict, ema=None, *, origin="checkpoint", warn=True) -> UNetWeights``
    The UNet tensors of a checkpoint, one copy. An original training file holds two UNets: the
    training weights under ``model.diffusion_model.*`` and the EMA weights under ``model_ema.*``
    (names without dots). ``ema=None`` takes the training copy and warns that the EMA copy exists
    (diffusers' ``from_single_file`` default, ``extract_ema=False``); ``ema=True`` the EMA copy;
    a file holding only one copy gives that one (``ema=`` naming the missing copy is an error).
``infer_unet_config(state_dict) -> UNetConfig``
    The whole architecture from the tensors (LDM, EMA or diffusers names): in/out channels
    (``conv_in``/``conv_out``: 9 = inpainting, 8 = instruct-pix2pix, 5 = depth), block widths,
    layers per block, block types, transformer depth, context width (``attn2.to_k``), linear or
    conv ``proj_in``, SDXL add-embedding. Heads, GroupNorm groups, ``upcast_attention`` and
    ``sample_size`` are not in the tensors: taken from the SD family the context width names, as
    diffusers does (768: SD 1.x, 8 heads; 1024: SD 2.x, 64 channels per head; 2048/1280 with an
    add-embedding: SDXL base/refiner, 64 per head). Another width: guessed, with a warning.
``infer_prediction_type(state_dict_or_config) -> str``
    ``"epsilon"`` or ``"v_prediction"`` (or a scheduler config's own value); see its docstring
    for the rule and its limits.
``unet_facts(state_dict) -> dict``
    Only what the tensors determine (the fields a user-given config must agree with).
``config_disagreements(config, facts) -> list[str]``
    One line per field of a ``UNetConfig`` that the tensors contradict ("the checkpoint's
    conv_in takes 9 channels (4 latent + 1 mask + 4 masked image: an inpainting model); config
    says 4 (in_channels)"); empty when they agree. The pipeline loader can test a base
    pipeline's config against a single file this way without reading the file twice.
``describe_contents(keys) -> str``
    What a checkpoint without a UNet holds (VAE, text encoder, ControlNet, LoRA …), for errors.
``IN_CHANNEL_MEANINGS``
    ``conv_in`` width -> what the channels are (4, 5, 7, 8, 9).
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetlab.configs import PRESETS, UNetConfig, resolve_config
from unetlab.sd.ldm_keys import (
    EMA_BOOKKEEPING,
    LDM_EMA_PREFIX,
    LDM_UNET_PREFIX,
    ldm_to_diffusers,
    split_ema_key,
)
from unetlab.sd.weight_files import CheckpointError, read_checkpoint

__all__ = [
    "UNetWeights",
    "select_unet_weights",
    "infer_unet_config",
    "infer_prediction_type",
    "unet_facts",
    "config_disagreements",
    "describe_contents",
    "IN_CHANNEL_MEANINGS",
    "PREDICTION_TYPES",
]

# what the input channels of conv_in are, for the models learners meet
IN_CHANNEL_MEANINGS = {
    4: "4 latent channels: a text-to-image model",
    5: "4 latent + 1 depth: a depth-to-image model",
    7: "4 latent + 3 low-resolution image: the x4 upscaler",
    8: "4 latent + 4 image latent: an instruct-pix2pix model",
    9: "4 latent + 1 mask + 4 masked image: an inpainting model",
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# global_step of the SD 2.0-base (512 px, ε) checkpoint: diffusers' one exception to "SD 2.x is v"
SD20_BASE_GLOBAL_STEP = 875000
_EMA_HEAD = LDM_EMA_PREFIX + "diffusion_model"
_PASS_CONFIG = (
    "\nIf it is an SD UNet that SDUNet builds, pass config= (a preset name, a UNetConfig or its config.json "
    "dict); the loader then lists each tensor that does not fit."
)


# ---- which tensors are the UNet -------------------------------------------------------------
@dataclass
class UNetWeights:
    """The UNet part of a checkpoint, one copy.

    ``layout``: ``"diffusers"`` (``conv_in.weight`` …) or ``"ldm"`` (``input_blocks.0.0.weight`` …,
    without ``model.diffusion_model.``). ``copy``: ``"diffusers"``, ``"training"``, ``"bare"`` (LDM
    names without prefix) or ``"ema"``. For the EMA copy ``tensors`` holds the names read back
    with :func:`unetlab.sd.ldm_keys.split_ema_key` (for inference) and ``ema_tensors`` the file's
    own ``model_ema.*`` tensors (for the exact mapping once the config is known).
    """

    tensors: dict[str, torch.Tensor]
    layout: str
    copy: str
    ema_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def file_name(self, ldm_name: str) -> str:
        """The name a tensor with this LDM name (no prefix) has in the file."""
        if self.copy == "ema":
            from unetlab.sd.ldm_keys import ldm_to_ema_key

            return ldm_to_ema_key(ldm_name)
        return ldm_name if self.copy == "bare" else LDM_UNET_PREFIX + ldm_name


def _has_ema(state_dict: Mapping[str, Any]) -> bool:
    # diffusers counts > 100 "model_ema" keys; here any EMA UNet tensor counts (a tiny UNet has fewer)
    return any(k.startswith(_EMA_HEAD) for k in state_dict)


def select_unet_weights(
    state_dict: Mapping[str, Any],
    ema: bool | None = None,
    *,
    origin: str = "checkpoint",
    warn: bool = True,
    stacklevel: int = 2,
) -> UNetWeights:
    """The UNet tensors of ``state_dict`` (a whole checkpoint is fine), one copy; see the module doc.

    Only the chosen copy's values are looked up, so a lazy mapping (the loader's view of a
    ``.safetensors`` file) reads nothing else from disk.

    Raises :class:`CheckpointError` (a ``ValueError``) when there is no UNet, or when ``ema=``
    names a copy the file does not hold; ``TypeError`` for an ``ema`` that is not None/True/False.
    Warns (``UserWarning``, ``stacklevel`` frames up) when both copies exist and ``ema=None``
    (``warn=False`` silences it).
    """
    if ema is not None and not isinstance(ema, bool):
        raise TypeError(f"ema must be None, True or False, got {ema!r}")
    keys = list(state_dict)
    if any(k.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.", "control_model.")) for k in keys):
        # a ControlNet has conv_in and down blocks too, but no up path: not a UNet to sample with
        raise CheckpointError(f"{origin}: no UNet in it.\n{describe_contents(keys)}")
    if "conv_in.weight" in keys:
        if ema:
            raise CheckpointError(
                f"ema=True, but {origin} uses diffusers names (conv_in.weight …) and holds one UNet, "
                "no EMA copy (model_ema.* keys exist only in original training checkpoints). Pass ema=None."
            )
        tensors = {k: state_dict[k] for k in keys}
        return UNetWeights({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, "diffusers", "diffusers")
    # names only: values are read below, for the chosen copy
    training = [k for k in keys if k.startswith(LDM_UNET_PREFIX)]
    copy = "training"
    if not training and any(k.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for k in keys):
        training, copy = keys, "bare"
    has_ema = _has_ema(keys)
    if not training and not has_ema:
        raise CheckpointError(f"{origin}: no UNet in it.\n{describe_contents(keys)}")
    if ema is None:
        if training and has_ema and warn:
            warnings.warn(
                f"{origin} holds two UNets: the training weights (model.diffusion_model.*) and the EMA weights "
                "(model_ema.*). Loaded the training (non-EMA) weights, as diffusers' from_single_file does by "
                "default. The EMA weights are usually better for inference (they are what the '-emaonly' files "
                "hold): pass ema=True to load them (diffusers: extract_ema=True), or ema=False to silence this.",
                UserWarning,
                stacklevel=stacklevel,
            )
        use_ema = not training
    elif ema:
        if not has_ema:
            raise CheckpointError(
                f"ema=True, but {origin} holds no EMA copy (no model_ema.diffusion_model* keys): it has one UNet, "
                f"under {'model.diffusion_model.*' if copy == 'training' else 'LDM names'}. Files named '-emaonly' "
                "or '-ema-pruned' already store the EMA weights there. Pass ema=None (or ema=False) to load it."
            )
        use_ema = True
    else:
        if not training:
            raise CheckpointError(
                f"ema=False, but {origin} holds only the EMA copy of the UNet (model_ema.* keys, no "
                "model.diffusion_model.*). Pass ema=True or ema=None to load it."
            )
        use_ema = False
    if not use_ema:
        cut = len(LDM_UNET_PREFIX) if copy == "training" else 0
        return UNetWeights({k[cut:]: state_dict[k] for k in training}, "ldm", copy)
    ema_tensors = {k: state_dict[k] for k in keys if k.startswith(_EMA_HEAD) and k not in EMA_BOOKKEEPING}
    # dotted names, read back from the grammar (exact mapping happens once the config is known)
    read_back = {}
    for k, v in ema_tensors.items():
        read_back[split_ema_key(k) or k] = v
    return UNetWeights(read_back, "ldm", "ema", ema_tensors)


def describe_contents(keys) -> str:
    """What a checkpoint without a UNet holds, as far as its key names tell, and what to do."""
    keys = list(keys)
    kinds = [
        ("a VAE (first_stage_model.* / encoder.* / decoder.*)", ("first_stage_model.", "encoder.", "decoder.", "vae.")),
        ("a text encoder (cond_stage_model.* / conditioner.* / text_model.*)",
         ("cond_stage_model.", "conditioner.", "text_model.", "transformer.text_model.")),
        ("a ControlNet (control_model.* / controlnet_cond_embedding.*): it steers a UNet, load the UNet "
         "from the base model", ("control_model.", "controlnet_cond_embedding.", "controlnet_down_blocks.")),
    ]
    found = [name for name, prefixes in kinds if any(k.startswith(prefixes) for k in keys)]
    lora = any(("lora_" in k or ".lora." in k or "lora_down" in k or "lora_A" in k) for k in keys)
    embedding = any(k in ("string_to_param", "emb_params", "clip_l", "clip_g") for k in keys)
    lines = [f"It has {len(keys)} key(s), none of them UNet weights (conv_in.weight, "
             f"{LDM_UNET_PREFIX}input_blocks… or model_ema.diffusion_model…)."]
    if found:
        lines.append("It looks like " + " and ".join(found) + ".")
    if lora:
        lines.append("It looks like a LoRA (lora_* keys): a patch for a base model, not a model. Load the base "
                     "model's UNet, then apply the LoRA with diffusers.")
    if embedding:
        lines.append("It looks like a textual-inversion embedding: it changes the text encoder's tokens, not the UNet.")
    lines.append("First keys: " + ", ".join(sorted(keys)[:8]) + (" …" if len(keys) > 8 else ""))
    lines.append("Pass the full model file (e.g. v1-5-pruned-emaonly.safetensors) or a diffusers folder with unet/.")
    return "\n".join(lines)


# ---- reading the architecture off the tensors -------------------------------------------------
def _block_indices(keys, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys 'prefix{i}.…'."""
    out = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return sorted(out)


def _ldm_skeleton(ldm: Mapping[str, torch.Tensor]) -> dict:
    """Block types, layers per block, mid block, add-embedding of LDM-named UNet tensors.

    ``input_blocks`` is one flat list: ``0`` is conv_in, then per level L resnet (+ attention)
    entries, then a downsampler (``.0.op``) except after the last level.
    """
    keys = list(ldm)
    problems = []
    entries = [i for i in _block_indices(keys, "input_blocks.") if i > 0]
    levels: list[list[int]] = [[]]
    for i in entries:
        if f"input_blocks.{i}.0.op.weight" in ldm:
            levels.append([])
        else:
            levels[-1].append(i)
    per_level = [len(level) for level in levels]
    if not entries or 0 in per_level:
        raise CheckpointError(
            f"cannot read the down path: input_blocks {entries} split by downsamplers into {per_level}" + _PASS_CONFIG
        )
    layers = per_level[0]
    if len(set(per_level)) != 1:
        problems.append(f"levels have different numbers of ResNets ({per_level}); SDUNet has one layers_per_block")
    down_types = []
    for level in levels:
        attn = [any(k.startswith(f"input_blocks.{i}.1.") for k in keys) for i in level]
        if len(set(attn)) != 1:
            problems.append(f"input_blocks {level}: some have attention, some not")
        down_types.append("CrossAttnDownBlock2D" if attn[0] else "DownBlock2D")
    n = len(levels)
    up_types = []
    for u in range(n):
        first = u * (layers + 1)
        has = any(k.startswith(f"output_blocks.{first}.1.") and ".transformer_blocks." in k for k in keys)
        up_types.append("CrossAttnUpBlock2D" if has else "UpBlock2D")
    if not any(k.startswith("middle_block.1.") for k in keys):
        problems.append("middle_block has no attention (SDUNet's mid block is UNetMidBlock2DCrossAttn)")
    add_type = None
    if "label_emb.0.0.weight" in ldm:
        add_type = "text_time"
    elif any(k.startswith("label_emb.") for k in keys):
        problems.append("class-label embedding (label_emb.weight: e.g. the x4 upscaler's noise level) is not in SDUNet")
    if problems:
        raise CheckpointError("this UNet's layout is not one SDUNet builds:\n    " + "\n    ".join(problems) + _PASS_CONFIG)
    return {
        "down_block_types": down_types,
        "up_block_types": up_types,
        "layers_per_block": layers,
        "block_out_channels": [1] * n,  # widths are read later, from the diffusers-named tensors
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "addition_embed_type": add_type,
    }


def _as_diffusers_names(weights: UNetWeights) -> dict[str, torch.Tensor]:
    """The selected UNet tensors under diffusers names (for reading shapes)."""
    if weights.layout == "diffusers":
        return weights.tensors
    skeleton = _ldm_skeleton(weights.tensors)
    converted, _ = ldm_to_diffusers(weights.tensors, skeleton, strict=False)
    return converted


def _count(keys, prefix: str) -> int:
    return len(_block_indices(keys, prefix))


def _facts_from_diffusers_names(sd: Mapping[str, torch.Tensor]) -> dict:
    """The config fields the tensors determine (diffusers names)."""
    keys = list(sd)
    problems = []

    def shape(name):
        t = sd.get(name)
        if t is None:
            problems.append(f"no {name}")
            return None
        return tuple(t.shape)

    conv_in, conv_out = shape("conv_in.weight"), shape("conv_out.weight")
    n = _count(keys, "down_blocks.")
    if n == 0 or _count(keys, "up_blocks.") != n:
        raise CheckpointError(
            f"cannot read the blocks: {n} down blocks, {_count(keys, 'up_blocks.')} up blocks" + _PASS_CONFIG
        )
    layers = _count(keys, "down_blocks.0.resnets.")
    channels, down_types, depth = [], [], []
    for b in range(n):
        s = shape(f"down_blocks.{b}.resnets.0.conv1.weight")
        channels.append(s[0] if s else 0)
        if _count(keys, f"down_blocks.{b}.resnets.") != layers:
            problems.append(f"down block {b} has {_count(keys, f'down_blocks.{b}.resnets.')} ResNets, block 0 has {layers}")
        has_attn = any(k.startswith(f"down_blocks.{b}.attentions.") for k in keys)
        down_types.append("CrossAttnDownBlock2D" if has_attn else "DownBlock2D")
        depth.append(_count(keys, f"down_blocks.{b}.attentions.0.transformer_blocks.") if has_attn else 1)
    up_types = []
    for u in range(n):
        has_attn = any(k.startswith(f"up_blocks.{u}.attentions.") for k in keys)
        up_types.append("CrossAttnUpBlock2D" if has_attn else "UpBlock2D")
        if has_attn:
            # diffusers' up block u uses reversed(transformer_layers_per_block)[u]
            d = _count(keys, f"up_blocks.{u}.attentions.0.transformer_blocks.")
            want = depth[n - 1 - u] if down_types[n - 1 - u] == "CrossAttnDownBlock2D" else None
            if want is not None and d != want:
                problems.append(f"up block {u} has {d} transformer layers, its down twin {want}")
    mid_depth = _count(keys, "mid_block.attentions.0.transformer_blocks.")
    if mid_depth == 0:
        problems.append("no mid-block attention (SDUNet's mid block is UNetMidBlock2DCrossAttn)")
    elif mid_depth != depth[-1]:
        if down_types[-1] == "DownBlock2D":
            depth[-1] = mid_depth  # the last level has no attention: its depth is the mid block's
        else:
            problems.append(f"mid block has {mid_depth} transformer layers, the last down block {depth[-1]}")
    # (inner, context_dim) for every cross-attention
    widths = sorted({tuple(v.shape)[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2})
    if len(widths) != 1:
        problems.append(f"cross-attention context widths (attn2.to_k.weight) {widths or 'none'}: expected exactly one")
    proj_dims = {v.ndim for k, v in sd.items() if k.endswith((".proj_in.weight", ".proj_out.weight"))}
    add_type, add_in = None, None
    if "add_embedding.linear_1.weight" in sd:
        add_type, add_in = "text_time", tuple(sd["add_embedding.linear_1.weight"].shape)[1]
    elif any(k.startswith("class_embedding.") for k in keys):
        problems.append("class embedding (class_embedding.*) is not in SDUNet")
    if conv_in is not None and tuple(conv_in[2:]) != (3, 3):
        problems.append(f"conv_in kernel {conv_in[2:]}: SDUNet's is 3x3")
    time = sd.get("time_embedding.linear_1.weight")
    if time is not None and channels and time.shape[0] != 4 * channels[0]:
        problems.append(f"time embedding width {time.shape[0]} is not 4 x {channels[0]} (SDUNet: 4 x first block width)")
    if problems:
        raise CheckpointError(
            "cannot read the UNet architecture from the tensors:\n    " + "\n    ".join(problems) + _PASS_CONFIG
        )
    return {
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "block_out_channels": tuple(channels),
        "layers_per_block": layers,
        "down_block_types": tuple(down_types),
        "up_block_types": tuple(up_types),
        "transformer_layers_per_block": tuple(depth),
        "cross_attention_dim": widths[0],
        # nn.Linear weight (O, I) in SD 2.x / XL, 1x1 conv (O, I, 1, 1) in SD 1.x
        "use_linear_projection": proj_dims == {2},
        "addition_embed_type": add_type,
        "projection_class_embeddings_input_dim": add_in,
    }


def _weights_of(state_dict) -> UNetWeights:
    if isinstance(state_dict, UNetWeights):
        return state_dict
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    if isinstance(state_dict.get("state_dict"), Mapping):  # a raw torch.load of a Lightning checkpoint
        state_dict = state_dict["state_dict"]
    # the EMA copy when it is the only one; the warning about two copies is the loader's business
    return select_unet_weights(state_dict, None, warn=False)


def unet_facts(state_dict) -> dict:
    """What the tensors determine about the architecture (a dict of UNetConfig fields).

    ``state_dict``: LDM, EMA-only or diffusers names, a whole checkpoint is fine. Raises
    :class:`CheckpointError` listing every part it cannot read.
    """
    return _facts_from_diffusers_names(_as_diffusers_names(_weights_of(state_dict)))


def _family(facts: dict) -> str | None:
    """The SD family diffusers would assign (infer_diffusers_model_type), from the context width."""
    width, add = facts["cross_attention_dim"], facts["addition_embed_type"]
    if add == "text_time":
        return {2048: "sdxl", 1280: "sdxl-refiner"}.get(width)
    return {768: "sd1", 1024: "sd2"}.get(width)


def _largest_divisor(values, at_most: int) -> int:
    """Largest g <= at_most dividing every value."""
    g = 0
    for v in values:
        g = math.gcd(g, v)
    return max(d for d in range(1, at_most + 1) if g % d == 0)


def infer_unet_config(state_dict) -> UNetConfig:
    """The ``UNetConfig`` of a UNet state dict, read from its tensors (LDM, EMA or diffusers names).

    Args:
        state_dict: name -> tensor (a whole original checkpoint is fine: VAE and text-encoder
            keys are ignored; with both copies the training copy is read, with only
            ``model_ema.*`` the EMA copy). Meta tensors work: only shapes are read.
    Returns:
        a validated ``UNetConfig``; its ``name`` is a preset's (``"sd15"``, ``"sd21"``,
        ``"sdxl"`` …) when it equals one, else ``"inferred"``.
    Raises:
        CheckpointError (``ValueError``): no UNet, or a layout SDUNet does not build (class
        embeddings, uneven levels …), every problem listed.
    Warns:
        ``UserWarning`` when the context width names no SD family: heads, GroupNorm groups
        (and SDXL's ``addition_time_embed_dim``) are then guesses; pass ``config=`` to the loader.

    What diffusers does instead: it picks one of its known model types from a few keys
    (``infer_diffusers_model_type``) and loads that type's ``config.json`` from the hub; only
    ``in_channels`` comes from the file. Here every shape comes from the file, and the rules
    below replace the hub configs: SD 1.x (context 768): 8 heads per block (LDM ``num_heads: 8``);
    SD 2.x (1024): 64 channels per head (``num_head_channels: 64`` -> ``attention_head_dim``
    ``[5, 10, 20, 20]``), ``upcast_attention=True`` and ``sample_size=96`` as in
    stabilityai/stable-diffusion-2-1 (not for 9-channel inpainting, whose repo has neither);
    SDXL (2048 / refiner 1280, with add-embedding): 64 per head, ``addition_time_embed_dim=256``,
    ``sample_size=128``. GroupNorm: 32 groups (every SD model).
    """
    return _infer_unet_config(state_dict, stacklevel=3)


def _infer_unet_config(state_dict, stacklevel: int) -> UNetConfig:
    """infer_unet_config; its warning points ``stacklevel`` frames up (the loader's caller)."""
    facts = unet_facts(state_dict)
    family = _family(facts)
    channels = facts["block_out_channels"]
    guessed = []
    if family == "sd1":
        heads = tuple(8 for _ in channels)
    elif family is not None:
        heads = tuple(c // 64 if c % 64 == 0 else _largest_divisor([c], 8) for c in channels)
    elif facts["use_linear_projection"]:
        # SD 2.x's idea, one head width for every block: 64 channels, or the widest power of two that fits
        width = next(w for w in (64, 32, 16, 8, 4, 2, 1) if all(c % w == 0 for c in channels))
        heads = tuple(c // width for c in channels)
        guessed.append(f"num_attention_heads={heads} (SD 2.x's rule: one head width, here {width} channels)")
    else:
        heads = tuple(_largest_divisor([c], 8) for c in channels)
        guessed.append(f"num_attention_heads={heads} (SD 1.x's rule: 8 heads)")
    groups = 32 if all(c % 32 == 0 for c in channels) else _largest_divisor(channels, 32)
    if family is None:
        guessed.append(f"norm_num_groups={groups}")
    add = {}
    if facts["addition_embed_type"] == "text_time":
        proj = facts["projection_class_embeddings_input_dim"]
        time_dim = 256
        if family is None or proj <= 6 * time_dim:
            # a size-embedding width that leaves room for the pooled text embedding
            time_dim = max(2, (proj // 12) // 2 * 2)
            guessed.append(f"addition_time_embed_dim={time_dim}")
        add = {"addition_time_embed_dim": time_dim}
    inpaint = facts["in_channels"] == 9
    upcast = family == "sd2" and not inpaint
    sample_size = {"sd2": 64 if inpaint else 96, "sdxl": 128, "sdxl-refiner": 128}.get(family, 64)
    config = UNetConfig(
        name="inferred",
        sample_size=sample_size,
        num_attention_heads=heads,
        norm_num_groups=groups,
        upcast_attention=upcast,
        mid_block_type="UNetMidBlock2DCrossAttn",
        **{k: v for k, v in facts.items() if k != "projection_class_embeddings_input_dim" or v is not None},
        **add,
    )
    for name, preset in PRESETS.items():
        if preset == config:
            config = preset
            break
    if guessed:
        warnings.warn(
            f"the checkpoint's context width {facts['cross_attention_dim']} is not SD 1.x's (768), 2.x's (1024) or "
            "SDXL's (2048): these settings are not stored in the weights and were guessed: "
            + "; ".join(guessed) + ". If you know the model's config, pass config= (a UNetConfig or its config.json dict).",
            UserWarning,
            stacklevel=stacklevel,
        )
    return config


def config_disagreements(config: UNetConfig, facts: dict) -> list[str]:
    """Every field of ``config`` that the tensors contradict, each as one line saying both values."""
    lines = []
    if config.in_channels != facts["in_channels"]:
        c = facts["in_channels"]
        meaning = IN_CHANNEL_MEANINGS.get(c, "not a layout this course knows")
        lines.append(f"the checkpoint's conv_in takes {c} channels ({meaning}); config says {config.in_channels} (in_channels)")
    if config.out_channels != facts["out_channels"]:
        lines.append(
            f"the checkpoint's conv_out gives {facts['out_channels']} channels; config says {config.out_channels} (out_channels)"
        )
    if config.cross_attention_dim != facts["cross_attention_dim"]:
        lines.append(
            f"the checkpoint's cross-attention takes a context {facts['cross_attention_dim']} wide (attn2.to_k); "
            f"config says {config.cross_attention_dim} (cross_attention_dim: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL)"
        )
    for name in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                 "addition_embed_type"):
        if getattr(config, name) != facts[name]:
            lines.append(f"the checkpoint has {name}={facts[name]!r}; config says {getattr(config, name)!r}")
    # transformer depth exists only where there is attention: the cross-attention levels, and the
    # mid block (which uses the last entry); the entry of a level without attention means nothing
    depth, want = config.transformer_layers_per_block, facts["transformer_layers_per_block"]
    if len(depth) == len(want):
        used = [i for i, t in enumerate(facts["down_block_types"]) if t == "CrossAttnDownBlock2D"] + [len(want) - 1]
        if any(depth[i] != want[i] for i in set(used)):
            lines.append(f"the checkpoint has transformer_layers_per_block={want!r} (counting only levels with "
                         f"attention and the mid block); config says {depth!r}")
    if facts["addition_embed_type"] and config.addition_embed_type == facts["addition_embed_type"]:
        if config.projection_class_embeddings_input_dim != facts["projection_class_embeddings_input_dim"]:
            lines.append(
                f"the checkpoint's add-embedding takes {facts['projection_class_embeddings_input_dim']} inputs; config says "
                f"{config.projection_class_embeddings_input_dim} (projection_class_embeddings_input_dim)"
            )
    return lines


# ---- prediction type ---------------------------------------------------------------------
def _read_for_prediction(path: Path):
    """(shape-only state dict, global_step or None) of a file; safetensors read lazily (header only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            # meta tensors: the shapes without reading gigabytes
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        return shapes, None
    tensors, extra = read_checkpoint(path)
    return tensors, extra.get("global_step")


def infer_prediction_type(state_dict_or_config) -> str:
    """What the UNet predicts: ``"epsilon"`` (the noise) or ``"v_prediction"``, as diffusers infers it.

    Accepts:
        * a scheduler config dict (has ``prediction_type``): its value, checked;
        * a pipeline folder (``scheduler/scheduler_config.json``; else ``unet/config.json``) or a
          model folder (``config.json``);
        * a weights file path (``.safetensors`` is read lazily, header only) or a state dict
          (a raw ``torch.load`` of a Lightning checkpoint keeps its ``global_step``);
        * a ``UNetConfig``, an ``SDUNet``, a preset name or a diffusers UNet config dict.

    The rule (diffusers' ``infer_diffusers_model_type`` + the scheduler config of each model
    type's default repo; the legacy ``_legacy_load_scheduler`` spells it out): a UNet whose
    cross-attention takes a 1024-wide context (OpenCLIP-H: SD 2.x) and whose ``conv_in`` does
    not take 9 channels (inpainting) is the 768-px v-model -> ``"v_prediction"``, except the
    SD 2.0-base checkpoint, recognised by ``global_step == 875000`` -> ``"epsilon"``. Everything
    else -> ``"epsilon"``.

    Limits (the tensors cannot tell, and neither can diffusers): SD 2.x-base (512 px, ε) and
    SD 2.x 768-v have the same architecture, so a 2.1-base single file is called v (the
    ``global_step`` exception covers only 2.0-base, and ``.safetensors`` files carry no step);
    a v-prediction or zero-terminal-SNR fine-tune of SD 1.x or SDXL is called ε (some such
    files carry a ``v_pred`` marker key that ComfyUI reads; diffusers does not, nor does this).
    When you know better, give the sampler ``prediction_type=`` yourself.
    """
    obj = state_dict_or_config
    if isinstance(obj, (str, os.PathLike)) and (Path(obj).expanduser().exists() or str(obj).endswith((".safetensors", ".ckpt"))):
        path = Path(obj).expanduser()
        if path.is_dir():
            return _prediction_type_of_folder(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file or folder")
        tensors, step = _read_for_prediction(path)
        return _prediction_type_from_facts(unet_facts(tensors), step)
    if isinstance(obj, Mapping):
        if "prediction_type" in obj:
            return _checked_prediction_type(obj["prediction_type"], "the scheduler config")
        step = obj.get("global_step")
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            if isinstance(step, torch.Tensor):
                step = int(step)
            return _prediction_type_from_facts(unet_facts(obj), step)
    config = resolve_config(obj)
    return _prediction_type_from_facts({"cross_attention_dim": config.cross_attention_dim,
                                        "in_channels": config.in_channels}, None)


def _checked_prediction_type(value, where: str) -> str:
    if value not in PREDICTION_TYPES:
        raise ValueError(f"{where} has prediction_type={value!r}; expected one of {PREDICTION_TYPES}")
    return value


def _prediction_type_from_facts(facts: dict, global_step) -> str:
    # diffusers' model type "v2": attn2.to_k takes 1024 channels and conv_in is not 9 channels wide
    if facts["cross_attention_dim"] == 1024 and facts["in_channels"] != 9:
        return "epsilon" if global_step == SD20_BASE_GLOBAL_STEP else "v_prediction"
    return "epsilon"


def _prediction_type_of_folder(folder: Path) -> str:
    import json

    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            # diffusers' schedulers default to "epsilon" when the key is absent
            return _checked_prediction_type(config.get("prediction_type", "epsilon"), str(candidate))
    for candidate in (folder / "unet" / "config.json", folder / "config.json"):
        if candidate.is_file():
            return infer_prediction_type(UNetConfig.from_diffusers(json.loads(candidate.read_text())))
    raise FileNotFoundError(
        f"{folder}: no scheduler/scheduler_config.json, unet/config.json or config.json to read the prediction type from"
    )
