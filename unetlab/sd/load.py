"""Load real Stable Diffusion UNet weights into :class:`unetlab.SDUNet` — safely, offline first.

API
---
``load_sd_unet(source, *, config=None, device="cpu", dtype=torch.float32, subfolder=None, variant=None, ema=None, download=True, cache_dir=None)``
    Returns an ``SDUNet`` in eval mode holding the weights of ``source``, which may be

    * a diffusers model folder: ``config.json`` + ``diffusion_pytorch_model[.<variant>].safetensors``,
      or sharded (``diffusion_pytorch_model.safetensors.index[.<variant>].json`` and its shards;
      the older ``….<variant>.safetensors.index.json`` too), or ``.bin`` (pickles read with
      ``weights_only=True``). ``variant="fp16"`` picks ``diffusion_pytorch_model.fp16.*``; as in
      diffusers, a folder holding only a variant needs ``variant=`` (the error lists the files
      and says which ``variant=`` to pass);
    * a pipeline folder (its ``unet/`` is used; ``subfolder=`` picks another);
    * an original single-file checkpoint (``.safetensors``, ``.ckpt``, ``.pt``, ``.pth``) with
      LDM/CompVis names (``model.diffusion_model.input_blocks…``; the VAE and text encoder in the
      same file are skipped), with only its EMA copy (``model_ema.diffusion_modelinput_blocks00weight``
      …), or with diffusers names. ``ema=``: a training checkpoint holds two UNets; ``None``
      loads the training copy and warns that the EMA copy exists (diffusers' default),
      ``True`` the EMA copy, ``False`` the training copy silently. The architecture is read from
      the tensors (:func:`infer_unet_config`: 9-channel inpainting, 8-channel instruct-pix2pix,
      SD 1.x / 2.x / XL …) unless ``config=`` names it (``"sd15"``, a :class:`unetlab.UNetConfig`,
      a config.json dict); a ``config=`` that the tensors contradict is refused with every
      disagreement named (e.g. ``in_channels``: "the checkpoint's conv_in takes 9 channels …").
      From a ``.safetensors`` file only the chosen UNet copy's tensors are taken (the file is
      memory-mapped, so the rest costs no memory); a pickle is read whole. A
      ``diffusion_pytorch_model*`` file given directly uses the
      ``config.json`` beside it;
    * a Hugging Face hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``) or one of the
      short names ``"sd15"``, ``"sd21"``, ``"sdxl"``: taken from the local Hugging Face cache
      (with ``variant=``, the cached variant files) when it is there; otherwise downloaded (only
      the ``unet/`` files of that variant) if ``download=True`` and the machine is online.
      Offline, the error says how to get the weights, and which variant the cache does hold.

    Pickled files (``.ckpt``/``.pt``/``.bin``) are read only with
    ``torch.load(..., weights_only=True)``: a file that holds anything but tensors and plain
    containers is refused, and nothing in it is executed. Every problem — truncated file,
    missing shard, missing or unexpected keys, wrong shapes, a contradicting config — is one
    :class:`CheckpointError` (a ``ValueError``) that names the file, lists every problem, and
    says what to pass.
``infer_unet_config(state_dict) -> UNetConfig``
    The architecture of UNet tensors (LDM, EMA or diffusers names); see :mod:`unetlab.sd.infer`.
``infer_prediction_type(state_dict_or_config) -> str``
    ``"epsilon"`` / ``"v_prediction"`` as diffusers infers it for single files (SD 2.x 768-v ->
    v); a scheduler config or pipeline folder gives its own value. See :mod:`unetlab.sd.infer`.
``read_state_dict(path)``
    The tensors of one weights file (same safety rules), as a dict.
``read_checkpoint(path) -> (tensors, extra)`` (from :mod:`unetlab.sd.weight_files`)
    The same, plus the non-tensor entries next to a Lightning ``state_dict`` (``global_step`` …).
``infer_config(state_dict)``
    The SD family preset name (``"sd15"`` / ``"sd21"`` / ``"sdxl"``) from the context width that
    ``attn2.to_k`` expects (768 / 1024 / 2048). Kept for old callers; prefer ``infer_unet_config``.
``find_local_weights(name, subfolder="unet", variant=None, cache_dir=None)``
    The ``unet/`` folder of ``name`` (``"sd15"``, ``"sd21"``, ``"sdxl"`` or a hub id) in the local
    Hugging Face cache whose weights of ``variant`` are all there, or ``None``. Never touches
    the network; notebooks use it to switch to the real model when the learner has it.
``weight_variants(folder) -> list``
    The variants whose weight files a diffusers model folder holds, plain first: ``[None]``,
    ``["fp16"]``, ``[None, "fp16", "non_ema"]`` … (what to pass as ``variant=``).
``default_device()``
    ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``.
``HUB_IDS``
    Short name -> hub ids tried in that order.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from unetlab.configs import resolve_config
from unetlab.sd.infer import (
    UNetWeights,
    _as_diffusers_names,
    _facts_from_diffusers_names,
    _infer_unet_config,
    config_disagreements,
    infer_prediction_type,
    infer_unet_config,
    select_unet_weights,
)
from unetlab.sd.ldm_keys import KeyMap, ema_to_ldm, ldm_to_diffusers
from unetlab.sd.weight_files import (
    SINGLE_FILE_SUFFIXES,
    CheckpointError,
    LazySafetensors,
    short_list,
    read_checkpoint,
    read_state_dict,
)

__all__ = [
    "CheckpointError",
    "load_sd_unet",
    "read_state_dict",
    "read_checkpoint",
    "infer_config",
    "infer_unet_config",
    "infer_prediction_type",
    "find_local_weights",
    "weight_variants",
    "default_device",
    "HUB_IDS",
]

HUB_IDS: dict[str, list[str]] = {
    "sd15": ["stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"],
    "sd21": ["stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1-base"],
    "sdxl": ["stabilityai/stable-diffusion-xl-base-1.0"],
}
_NAME_ALIASES = {"sd1.5": "sd15", "sd-1.5": "sd15", "sd2.1": "sd21", "sd-2.1": "sd21"}

WEIGHTS_NAME = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"
# (pipeline.py imports _SINGLE_FILE_SUFFIXES from here)
_SINGLE_FILE_SUFFIXES = SINGLE_FILE_SUFFIXES
# context width of attn2.to_k -> preset
_CONTEXT_DIM_TO_PRESET = {768: "sd15", 1024: "sd21", 2048: "sdxl"}


def default_device() -> str:
    """The best device here: ``"cuda"``, else ``"mps"`` (Apple GPU), else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _variant_arg(variant: str | None) -> str:
    """How to write the argument: ``variant=None`` / ``variant="fp16"``."""
    return "variant=None" if variant is None else f'variant="{variant}"'


def _variant_name(name: str, variant: str | None) -> str:
    """diffusers' ``_add_variant``: the variant goes before the last suffix.

    ``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors``;
    ``diffusion_pytorch_model.safetensors.index.json`` -> ``….safetensors.index.fp16.json``.
    """
    if variant is None:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def _how_to_get(name: str | None = None, variant: str | None = None) -> str:
    """The paragraph every 'no weights here' error ends with."""
    known = name is not None and (name.lower() in HUB_IDS or name.lower() in _NAME_ALIASES or "/" in name)
    repo = _hub_id(name)[0] if known else HUB_IDS["sd15"][0]
    weights = _variant_name(f"{WEIGHTS_NAME}.safetensors", variant)
    call = f'load_sd_unet("{repo}"' + (f', variant="{variant}")' if variant else ")")
    return (
        "To get the UNet weights, on a machine with internet access run\n"
        f"    hf download {repo} unet/config.json unet/{weights}\n"
        "(older huggingface_hub: huggingface-cli download …; accept the model's licence on\n"
        "huggingface.co first if it asks). Then\n"
        f"    {call}      # found in the Hugging Face cache, no network needed\n"
        "or pass a local path: a diffusers folder (config.json + diffusion_pytorch_model.safetensors),\n"
        "a pipeline folder with unet/, or an original single file such as v1-5-pruned-emaonly.safetensors."
    )


# ---- reading one file ---------------------------------------------------------------------
# ---- which config ------------------------------------------------------------------------
def infer_config(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The SD family preset (``"sd15"``, ``"sd21"``, ``"sdxl"``) these UNet weights belong to.

    Reads the width of the text context that the cross-attention keys expect
    (``attn2.to_k.weight`` is ``(inner, context_dim)``): CLIP ViT-L 768 -> SD 1.x,
    OpenCLIP-H 1024 -> SD 2.x, CLIP-L ⊕ OpenCLIP-bigG 2048 -> SDXL. Only the family: an
    inpainting or a distilled model gets its family's name. Prefer :func:`infer_unet_config`,
    which reads the whole architecture.
    """
    tensors = state_dict.tensors if isinstance(state_dict, UNetWeights) else state_dict
    # any key: a ControlNet's state dict (unetlab.sd.controlnet) is read here too
    dims = {tuple(v.shape)[1] for k, v in tensors.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2}
    if not dims and any(k.startswith("model_ema.diffusion_model") for k in tensors):
        # only the EMA copy, whose names lost their dots
        ema = select_unet_weights(tensors, True).tensors
        dims = {tuple(v.shape)[1] for k, v in ema.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2}
    if len(dims) != 1:
        raise CheckpointError(
            "cannot infer the UNet architecture: expected cross-attention weights (…attn2.to_k.weight) "
            f"with one context width, found {sorted(dims) or 'none'}. Pass config= (e.g. 'sd15' or a UNetConfig)."
        )
    dim = dims.pop()
    if dim not in _CONTEXT_DIM_TO_PRESET:
        raise CheckpointError(
            f"cannot infer the UNet architecture: context width {dim} is not SD 1.x (768), 2.x (1024) "
            "or SDXL (2048). Pass config= (a UNetConfig)."
        )
    return _CONTEXT_DIM_TO_PRESET[dim]


# ---- putting weights into the model -----------------------------------------------------------
def _match_projection_shapes(state_dict: dict, expected: Mapping[str, torch.Size]) -> None:
    """proj_in/proj_out stored as a 1x1 conv where the model has nn.Linear (or back): reshape."""
    for name, tensor in state_dict.items():
        shape = expected.get(name)
        if shape is None or tensor.shape == shape or not name.rsplit(".", 2)[-2] in ("proj_in", "proj_out"):
            continue
        if tensor.ndim == 4 and tensor.shape[2:] == (1, 1) and tuple(tensor.shape[:2]) == tuple(shape):
            state_dict[name] = tensor[:, :, 0, 0]  # (O, I, 1, 1) -> (O, I)
        elif tensor.ndim == 2 and tuple(shape) == (*tensor.shape, 1, 1):
            state_dict[name] = tensor[:, :, None, None]  # (O, I) -> (O, I, 1, 1)


def _check_against(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str, extra: list[str],
                   file_name: Callable[[str], str] | None = None) -> None:
    """One CheckpointError listing missing keys, unexpected keys and wrong shapes (if any).

    ``file_name`` (an LDM or EMA file): diffusers name -> the tensor's name in the file, shown next to it.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}

    def named(key: str) -> str:
        return key if file_name is None else f"{key} (in the file: {file_name(key)})"

    missing = [named(k) for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected] + list(extra)
    wrong = [
        f"{named(k)}: {tuple(state_dict[k].shape)}, model: {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    ]
    problems = []
    if missing:
        problems.append(short_list(missing, "missing key(s)"))
    if unexpected:
        problems.append(short_list(unexpected, "unexpected key(s)"))
    if wrong:
        problems.append(short_list(wrong, "shape mismatch(es)"))
    if problems:
        raise CheckpointError(
            f"{origin} does not fit this UNet config ({len(expected)} tensors expected, {len(state_dict) + len(extra)} given):\n"
            + "\n".join(problems)
            + "\nIs it the right model (config=…)? A truncated export or a different architecture shows up this way."
        )


def _build(config, state_dict: dict, origin: str, device, dtype, extra_unexpected: list[str], file_name=None):
    from unetlab.sd.unet import SDUNet

    # meta device: no time or memory spent on random initial weights that are replaced anyway
    with torch.device("meta"):
        model = SDUNet(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    _match_projection_shapes(state_dict, expected)
    _check_against(model, state_dict, origin, extra_unexpected, file_name)
    state_dict = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    # assign=True: the model takes the loaded tensors themselves (no second copy in memory)
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # SDUNet has no buffers; a future non-persistent one would have to be built for real
        raise RuntimeError(f"tensors left on the meta device after loading: {leftover[:5]}")
    return model.to(device=device, dtype=dtype).eval()


# ---- diffusers folders: variants and shards -------------------------------------------------
# names diffusers writes (save_pretrained) and reads (ModelMixin.from_pretrained), per variant v:
#   diffusion_pytorch_model[.v].safetensors / .bin
#   diffusion_pytorch_model.safetensors.index[.v].json   shards diffusion_pytorch_model[.v]-00001-of-00002.safetensors
#   diffusion_pytorch_model.v.safetensors.index.json      (older, "legacy" sharded variant)
_WEIGHT_FILE_RE = re.compile(
    rf"^{WEIGHTS_NAME}"
    r"(?:\.(?P<v1>[^.-]+))?(?:-\d{5}-of-\d{5})?(?:\.(?P<v2>[^.-]+))?\.(?:safetensors|bin)$"
)
_INDEX_FILE_RE = re.compile(
    rf"^{WEIGHTS_NAME}(?:\.(?P<v1>[^.]+))?\.(?:safetensors|bin)\.index(?:\.(?P<v2>[^.]+))?\.json$"
)


def _variants_in_folder(folder: Path) -> dict[str | None, list[str]]:
    """variant (None = plain) -> the weight file names of that variant in ``folder``."""
    found: dict[str | None, list[str]] = {}
    if not folder.is_dir():
        return found
    for f in sorted(p.name for p in folder.iterdir()):
        m = _WEIGHT_FILE_RE.match(f) or _INDEX_FILE_RE.match(f)
        if m:
            found.setdefault(m.group("v1") or m.group("v2"), []).append(f)
    return found


def weight_variants(folder: str | os.PathLike) -> list[str | None]:
    """The variants of the weight files in a diffusers model folder (``None`` = plain), plain first.

    ``["fp16"]`` for a folder holding only ``diffusion_pytorch_model.fp16.safetensors``; sharded
    and ``.bin`` files count too. Nothing is read but the file names; ``[]`` for no weights.
    """
    found = _variants_in_folder(Path(folder))
    return sorted(found, key=lambda v: (v is not None, v or ""))


def _weights_in_folder(folder: Path, variant: str | None) -> list[Path]:
    """The weight file(s) of ``variant`` in a diffusers model folder, in diffusers' order:
    sharded safetensors, one safetensors, sharded .bin, one .bin. ``[]`` when there are none.

    Raises CheckpointError for an unreadable index or shards that are not there.
    """
    for suffix in ("safetensors", "bin"):
        single = f"{WEIGHTS_NAME}.{suffix}"
        indexes = [_variant_name(f"{single}.index.json", variant)]
        if variant is not None:  # the older name of a sharded variant (diffusers still reads it)
            indexes.append(f"{_variant_name(single, variant)}.index.json")
        for name in indexes:
            index = folder / name
            if index.is_file():
                return _shards(index)
        if (folder / _variant_name(single, variant)).is_file():
            return [folder / _variant_name(single, variant)]
    return []


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a shard index with a 'weight_map' ({exc!r})") from None
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{index}: {len(missing)} of its {len(files)} shard(s) are not in {index.parent} "
            f"(an interrupted download?):\n" + short_list(missing, "missing shard(s)")
            + "\nDownload the folder again (hf download … resumes)."
        )
    return [index.parent / f for f in files]


def _no_weights_error(folder: Path, variant: str | None, name: str | None = None) -> CheckpointError:
    """What is in a folder that has no weights of ``variant``, and what to pass instead."""
    found = _variants_in_folder(folder)
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    wanted = _variant_name(f"{WEIGHTS_NAME}.safetensors", variant)
    lines = [
        f"{folder}: has {CONFIG_NAME} but no weights for {_variant_arg(variant)} "
        f"(looked for {wanted}, a sharded ….index{'.' + variant if variant else ''}.json, and .bin).",
        "Files here: " + (", ".join(files[:20]) + (" …" if len(files) > 20 else "") if files else "none"),
    ]
    others = [v for v in found if v != variant]
    if others:
        options = " or ".join(_variant_arg(v) for v in others)
        lines.append(f"This folder holds the weights as {options}: pass {options} to load_sd_unet "
                     "(as in diffusers, a variant is loaded only when asked for).")
    else:
        lines.append(_how_to_get(name, variant))
    return CheckpointError("\n".join(lines))


def _read_config_json(config_json: Path, folder: Path):
    """The UNetConfig of a diffusers ``config.json`` (named after the model's folder)."""
    from unetlab.configs import UNetConfig

    try:
        raw = json.loads(config_json.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_json}: not valid JSON ({exc})") from None
    try:
        return UNetConfig.from_diffusers(raw, name=folder.parent.name if folder.name == "unet" else folder.name)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_json}: not a UNet config SDUNet builds ({exc})") from None


def _load_diffusers_folder(folder: Path, config, device, dtype, variant, ema):
    if ema:
        raise CheckpointError(
            f"ema=True, but {folder} is a diffusers folder: it holds one UNet (diffusers exports keep only "
            "the EMA weights, or name another copy as a variant such as variant='non_ema'). Pass ema=None."
        )
    files = _weights_in_folder(folder, variant)
    if not files:
        raise _no_weights_error(folder, variant)
    if config is None:
        config_json = folder / CONFIG_NAME
        config = _read_config_json(config_json, folder)
    else:
        config_json = None
        config = resolve_config(config)
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        state_dict.update(read_state_dict(f))
    origin = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} shards)"
    # a config= or a config.json (edited, or from another model) that the tensors contradict
    disagreements = _contradicting_config(UNetWeights(state_dict, "diffusers", "diffusers"), config, origin, config_json)
    try:
        return _build(config, state_dict, origin, device, dtype, [])
    except CheckpointError as exc:
        if not disagreements:
            raise
        raise CheckpointError(disagreements + "\n" + str(exc)) from None


# ---- original single files ------------------------------------------------------------------
def _load_single_file(path: Path, config, device, dtype, ema):
    # .safetensors: only the chosen UNet's tensors are looked up; a pickle has to be read whole
    raw = LazySafetensors(path) if path.suffix == ".safetensors" else read_state_dict(path)
    # stacklevel 4: the EMA warning points at the caller of load_sd_unet
    weights = select_unet_weights(raw, ema, origin=str(path), stacklevel=4)
    del raw
    if config is None:
        config = _infer_unet_config(weights, stacklevel=4)  # a guess warning points at the caller
        disagreements = ""
    else:
        config = resolve_config(config)
        disagreements = _contradicting_config(weights, config, path)  # "" when they agree
    try:
        return _build_single_file(weights, config, path, device, dtype)
    except CheckpointError as exc:
        if not disagreements:
            raise
        # one error: why the config is wrong, then the key/shape listing that it causes
        raise CheckpointError(disagreements + "\n" + str(exc)) from None


def _build_single_file(weights: UNetWeights, config, path: Path, device, dtype):
    if weights.layout == "diffusers":
        return _build(config, dict(weights.tensors), str(path), device, dtype, [])
    keymap = KeyMap(config)

    def file_name(diffusers_name: str) -> str:
        return weights.file_name(keymap.to_ldm(diffusers_name))

    if weights.copy == "ema":
        # diffusers' exact rule (model_ema. + LDM name without dots), for this config's names
        ldm, unknown = ema_to_ldm(weights.ema_tensors, config)
    else:
        ldm, unknown = dict(weights.tensors), []
    state_dict, unknown_ldm = ldm_to_diffusers(ldm, config, strict=False)
    unknown = unknown + [weights.file_name(k) for k in unknown_ldm]
    return _build(config, state_dict, str(path), device, dtype, unknown, file_name)


def _contradicting_config(weights: UNetWeights, config, origin, config_json: Path | None = None) -> str:
    """What a config gets wrong about the tensors ("" when nothing, or when the tensors are unreadable).

    ``config_json``: the config came from this file, not from the caller's ``config=``.
    """
    try:
        facts = _facts_from_diffusers_names(_as_diffusers_names(weights))
    except CheckpointError:
        return ""  # the tensors are too odd to read; the key/shape check lists what is wrong
    lines = config_disagreements(config, facts)
    if not lines:
        return ""
    if config_json is not None:
        return (
            f"{origin}: {config_json} does not describe these weights (edited, or from another model?):\n    "
            + "\n    ".join(lines)
            + f"\nFix {config_json.name}, or pass config= with the right architecture."
        )
    hint = ", ".join(f"{k}={facts[k]!r}" for k in ("in_channels", "out_channels", "cross_attention_dim")
                     if getattr(config, k) != facts[k])
    return (
        f"{origin}: config={config.name!r} does not match the weights:\n    " + "\n    ".join(lines)
        + "\nLeave config=None to build the architecture from the weights"
        + (f", or pass config={config.name!r} changed with .replace({hint})" if hint else "") + "."
    )


# ---- the Hugging Face cache and hub -----------------------------------------------------------
def _hub_id(name: str) -> list[str]:
    key = _NAME_ALIASES.get(name.lower(), name.lower())
    return HUB_IDS.get(key, [name])


def _cached_folder(repo: str, subfolder: str, cache_dir) -> Path | None:
    """The snapshot folder ``subfolder`` of ``repo`` (at refs/main) if its config.json is cached."""
    from huggingface_hub import try_to_load_from_cache

    if repo.count("/") != 1:
        return None
    try:
        config = try_to_load_from_cache(repo, f"{subfolder}/{CONFIG_NAME}", cache_dir=cache_dir)
    except Exception:  # a malformed repo id: nothing cached under it
        return None
    return Path(config).parent if isinstance(config, str) else None


def find_local_weights(
    name: str,
    subfolder: str = "unet",
    variant: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path | None:
    """The cached ``unet/`` folder of ``name`` (short name or hub id), or ``None``. Offline only.

    Found means: ``{subfolder}/config.json`` and all weights of ``variant`` (one file, or a
    shard index and every shard it names) are in the snapshot ``refs/main`` points to.
    ``variant=None`` finds only the plain files (as :func:`load_sd_unet` loads only them);
    ``variant="fp16"`` finds ``diffusion_pytorch_model.fp16.safetensors`` & co.
    ``cache_dir``: the Hugging Face hub cache (default: huggingface_hub's, i.e.
    ``$HF_HUB_CACHE`` or ``~/.cache/huggingface/hub``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a short name or a hub id (str), got {type(name).__name__}")
    for repo in _hub_id(name):
        folder = _cached_folder(repo, subfolder, cache_dir)
        if folder is None:
            continue
        try:
            if _weights_in_folder(folder, variant):
                return folder
        except CheckpointError:  # an index whose shards are not all cached: not usable offline
            continue
    return None


def _download_patterns(subfolder: str, variant: str | None) -> list[str]:
    """allow_patterns for snapshot_download: config.json and the weights of one variant only."""
    single = f"{subfolder}/{WEIGHTS_NAME}.safetensors"
    patterns = [f"{subfolder}/{CONFIG_NAME}", _variant_name(single, variant), _variant_name(f"{single}.index.json", variant)]
    if variant is None:
        patterns.append(f"{subfolder}/{WEIGHTS_NAME}-*-of-*.safetensors")
    else:
        patterns += [
            f"{subfolder}/{WEIGHTS_NAME}.{variant}-*-of-*.safetensors",
            # the older sharded-variant names
            f"{subfolder}/{WEIGHTS_NAME}.{variant}.safetensors.index.json",
            f"{subfolder}/{WEIGHTS_NAME}-*-of-*.{variant}.safetensors",
        ]
    return patterns


def _from_hub(name: str, subfolder: str, variant: str | None, download: bool, cache_dir) -> Path:
    """The local unet folder of a hub model: from the cache, else downloaded (only when allowed)."""
    local = find_local_weights(name, subfolder, variant, cache_dir)
    if local is not None:
        return local
    from huggingface_hub import constants

    # what the cache does hold, to say which variant= would work
    held = {}
    for repo in _hub_id(name):
        folder = _cached_folder(repo, subfolder, cache_dir)
        if folder is not None:
            for v, files in _variants_in_folder(folder).items():
                if v != variant:
                    held.setdefault(v, (repo, files))
    cached_note = ""
    if held:
        options = " or ".join(_variant_arg(v) for v in held)
        cached_note = (
            f"The cache holds {subfolder}/ weights as {options} "
            f"({', '.join(f for _, files in held.values() for f in files[:2])}): pass {options}.\n"
        )
    repo = _hub_id(name)[0]
    if not download or constants.HF_HUB_OFFLINE:
        why = "download=False" if not download else "HF_HUB_OFFLINE is set"
        raise FileNotFoundError(
            f"{name!r} is not a local file or folder, the Hugging Face cache has no {subfolder}/ weights for it "
            f"with {_variant_arg(variant)}, and downloading is off ({why}).\n" + cached_note + _how_to_get(name, variant)
        )
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(repo, allow_patterns=_download_patterns(subfolder, variant), cache_dir=cache_dir)
    except Exception as exc:  # no network, gated repo, unknown id …
        raise FileNotFoundError(
            f"{name!r}: could not download {repo} ({type(exc).__name__}: {exc}).\n" + cached_note + _how_to_get(name, variant)
        ) from None
    folder = Path(root) / subfolder
    if not _weights_in_folder(folder, variant):
        raise _no_weights_error(folder, variant, name)
    return folder


def load_sd_unet(
    source: str | os.PathLike,
    *,
    config: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    subfolder: str | None = None,
    variant: str | None = None,
    ema: bool | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """An ``SDUNet`` (eval mode, on ``device``, in ``dtype``) with the weights from ``source``.

    Args:
        source: a diffusers model or pipeline folder, an original single file, a hub id or a
            short name (``"sd15"``, ``"sd21"``, ``"sdxl"``); see the module docstring.
        config: the architecture (preset name, ``UNetConfig``, config.json dict). Default: the
            folder's ``config.json``, or for a single file :func:`infer_unet_config`.
        device, dtype: where and in what the weights end up (fp16 files load as fp32 by default).
        subfolder: the model folder inside a pipeline folder or hub repo (default ``"unet"``).
        variant: weights file variant, e.g. ``"fp16"`` (``diffusion_pytorch_model.fp16.safetensors``).
        ema: which UNet of an original training checkpoint (``None``: training copy + a warning
            when an EMA copy exists, as diffusers; ``True``: EMA; ``False``: training, silently).
        download: allow downloading a hub id that is not cached (never in tests: HF_HUB_OFFLINE).
        cache_dir: the Hugging Face hub cache to use.
    Raises:
        TypeError: ``source`` is not a str/path, ``ema`` not None/bool, ``variant`` not a str.
        FileNotFoundError: nothing at ``source`` (the message says how to get the weights).
        CheckpointError (``ValueError``): weights that do not load; every problem listed.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a hub id (str), got {type(source).__name__}")
    if ema is not None and not isinstance(ema, bool):
        raise TypeError(f"ema must be None, True or False, got {ema!r}")
    if variant is not None and (not isinstance(variant, str) or not variant or "." in variant or "/" in variant):
        raise TypeError(f"variant must be a file-name tag such as 'fp16' (no dots or slashes), got {variant!r}")
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        looks_like_hub = (
            text.lower() in HUB_IDS or text.lower() in _NAME_ALIASES
            or (text.count("/") == 1 and not text.startswith((".", "/", "~")) and path.suffix not in _SINGLE_FILE_SUFFIXES)
        )
        if not looks_like_hub:
            raise FileNotFoundError(f"{source}: no such file or folder.\n" + _how_to_get())
        path = _from_hub(text, subfolder or "unet", variant, download, cache_dir)
        subfolder = None
    if path.is_file():
        if path.suffix not in _SINGLE_FILE_SUFFIXES:
            raise CheckpointError(f"{path}: unknown weights format; expected one of {', '.join(_SINGLE_FILE_SUFFIXES)}")
        if variant is not None:
            raise ValueError(
                f"variant={variant!r} picks a file inside a diffusers folder, but {path} is one file already: "
                f"pass variant=None, or pass the folder ({path.parent}) with variant={variant!r}"
            )
        if config is None and path.name.startswith(WEIGHTS_NAME) and (path.parent / CONFIG_NAME).is_file():
            # diffusion_pytorch_model.safetensors given directly: its config.json sits next to it
            config = _read_config_json(path.parent / CONFIG_NAME, path.parent)
        return _load_single_file(path, config, device, dtype, ema)
    # a folder: the model folder itself, its subfolder, or a pipeline's unet/
    candidates = [path / subfolder] if subfolder else [path, path / "unet"]
    for folder in candidates:
        if (folder / CONFIG_NAME).is_file():
            return _load_diffusers_folder(folder, config, device, dtype, variant, ema)
    raise FileNotFoundError(_not_a_model_folder(path, candidates, subfolder))


def _not_a_model_folder(path: Path, candidates: list[Path], subfolder: str | None) -> str:
    """What is in a folder that is neither a model folder nor a pipeline folder, and what to pass."""
    lines = [
        f"{path}: expected a diffusers UNet folder ({CONFIG_NAME} + {WEIGHTS_NAME}.safetensors) "
        f"or a pipeline folder with {subfolder or 'unet'}/{CONFIG_NAME}; found neither."
    ]
    for folder in candidates:
        if not folder.is_dir():
            continue
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        lines.append(f"In {folder}: " + (", ".join(names[:20]) + (" …" if len(names) > 20 else "") if names else "nothing"))
        weights = [folder / f for files in _variants_in_folder(folder).values() for f in files if "index" not in f]
        if weights and len(weights) == 1:
            lines.append(f"{weights[0].name} is there without its {CONFIG_NAME}: pass the file itself, "
                         f"load_sd_unet({str(weights[0])!r}), to read the architecture from its tensors.")
        singles = [f for f in names if f.endswith(SINGLE_FILE_SUFFIXES) and not f.startswith(WEIGHTS_NAME)]
        if singles:
            lines.append(f"Single-file checkpoints here ({', '.join(singles[:3])}) load by their path: "
                         f"load_sd_unet({str(folder / singles[0])!r}).")
    return "\n".join(lines) + "\n" + _how_to_get()
