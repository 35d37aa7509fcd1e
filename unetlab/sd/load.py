"""Load real Stable Diffusion UNet weights into :class:`unetlab.SDUNet` — safely, offline first.

API
---
``load_sd_unet(source, *, config=None, device="cpu", dtype=torch.float32, subfolder=None, variant=None, download=True, cache_dir=None)``
    Returns an ``SDUNet`` in eval mode holding the weights of ``source``, which may be

    * a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a
      sharded ``….safetensors.index.json``, or a ``.bin``),
    * a pipeline folder (its ``unet/`` is used; ``subfolder=`` picks another),
    * an original single-file checkpoint (``.safetensors``, ``.ckpt``, ``.pt``, ``.pth``) with
      LDM/CompVis names (``model.diffusion_model.input_blocks…``; the VAE and text encoder in the
      same file are skipped) or diffusers names; ``config=`` names the architecture (``"sd15"``,
      a :class:`unetlab.UNetConfig` …) or it is inferred from the weights' shapes
      (:func:`infer_config`),
    * a Hugging Face hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``) or one of the
      short names ``"sd15"``, ``"sd21"``, ``"sdxl"``: taken from the local Hugging Face cache
      when it is there; otherwise downloaded (only ``unet/`` files) if ``download=True`` and the
      machine is online. Offline, the error says how to get the weights.

    Pickled files (``.ckpt``/``.pt``/``.bin``) are read only with
    ``torch.load(..., weights_only=True)``: a file that holds anything but tensors and plain
    containers is refused, and nothing in it is executed. Every problem — truncated file,
    missing or unexpected keys, wrong shapes — is one :class:`CheckpointError` (a ``ValueError``)
    that names the file and lists what is wrong.
``read_state_dict(path)``
    The tensors of one weights file (same safety rules), as a dict.
``infer_config(state_dict)``
    ``"sd15"`` / ``"sd21"`` / ``"sdxl"`` preset from a UNet state dict (LDM or diffusers names):
    the text-context width that ``attn2.to_k`` expects (768 / 1024 / 2048).
``find_local_weights(name, subfolder="unet", cache_dir=None)``
    The ``unet/`` folder of ``name`` (``"sd15"``, ``"sd21"``, ``"sdxl"`` or a hub id) in the local
    Hugging Face cache, or ``None``. Never touches the network; notebooks use it to switch to
    the real model when the learner has it.
``default_device()``
    ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``.
``HUB_IDS``
    Short name -> hub ids tried in that order.
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from unetlab.configs import resolve_config
from unetlab.sd.ldm_keys import LDM_UNET_PREFIX, KeyMap, ldm_to_diffusers

__all__ = [
    "CheckpointError",
    "load_sd_unet",
    "read_state_dict",
    "infer_config",
    "find_local_weights",
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
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# context width of attn2.to_k -> preset
_CONTEXT_DIM_TO_PRESET = {768: "sd15", 1024: "sd21", 2048: "sdxl"}
_LIST_MAX = 10  # how many names of each kind of problem an error lists


class CheckpointError(ValueError):
    """A weights file or folder that cannot be loaded into the UNet; the message says why."""


def default_device() -> str:
    """The best device here: ``"cuda"``, else ``"mps"`` (Apple GPU), else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _how_to_get(name: str | None = None) -> str:
    """The paragraph every 'no weights here' error ends with."""
    known = name is not None and (name.lower() in HUB_IDS or name.lower() in _NAME_ALIASES or "/" in name)
    repo = _hub_id(name)[0] if known else HUB_IDS["sd15"][0]
    return (
        "To get the UNet weights, on a machine with internet access run\n"
        f"    hf download {repo} unet/config.json unet/{WEIGHTS_NAME}.safetensors\n"
        "(older huggingface_hub: huggingface-cli download …; accept the model's licence on\n"
        "huggingface.co first if it asks). Then\n"
        f'    load_sd_unet("{repo}")      # found in the Hugging Face cache, no network needed\n'
        "or pass a local path: a diffusers folder (config.json + diffusion_pytorch_model.safetensors),\n"
        "a pipeline folder with unet/, or an original single file such as v1-5-pruned-emaonly.safetensors."
    )


# ---- reading one file ---------------------------------------------------------------------
def _short_list(names, what: str) -> str:
    """'3 missing key(s):' and the first _LIST_MAX names, one per line."""
    names = sorted(names)
    lines = [f"{len(names)} {what}:"] + [f"    {n}" for n in names[:_LIST_MAX]]
    if len(names) > _LIST_MAX:
        lines.append(f"    … and {len(names) - _LIST_MAX} more")
    return "\n".join(lines)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}). The file is probably truncated "
            "(an interrupted download?) or not safetensors at all; download it again."
        ) from None


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            # the weights-only unpickler warns about pickle protocols it was not written for
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise CheckpointError(
            f"{path}: this pickle holds objects other than tensors and plain containers "
            f"({detail[0].strip() if detail else 'refused by the weights-only unpickler'}). "
            "It was read with torch.load(weights_only=True), so NOTHING in it was executed. "
            "A pickle can run arbitrary code; load only weights you trust, and prefer .safetensors."
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "The file is probably truncated or damaged; download it again."
        ) from None
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors in one weights file (``.safetensors``; pickles only with ``weights_only=True``).

    A Lightning/LDM checkpoint's ``{"state_dict": {...}, "global_step": …}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in _PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights format; expected one of {', '.join(_SINGLE_FILE_SUFFIXES)}")
    obj = _read_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors (or {{'state_dict': …}}), got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: " + _short_list(not_tensors, "entries are not tensors"))
    return dict(obj)


# ---- what kind of state dict, which config --------------------------------------------------
def _layout(state_dict: Mapping[str, Any]) -> str:
    """'diffusers' or 'ldm' from the key names."""
    if "conv_in.weight" in state_dict:
        return "diffusers"
    if any(k.startswith(LDM_UNET_PREFIX + "input_blocks.") or k.startswith("input_blocks.") for k in state_dict):
        return "ldm"
    return "unknown"


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The preset (``"sd15"``, ``"sd21"``, ``"sdxl"``) whose UNet these weights belong to.

    Reads the width of the text context that the cross-attention keys expect
    (``attn2.to_k.weight`` is ``(inner, context_dim)``): CLIP ViT-L 768 -> SD 1.x,
    OpenCLIP-H 1024 -> SD 2.x, CLIP-L ⊕ OpenCLIP-bigG 2048 -> SDXL.
    """
    dims = {tuple(v.shape)[1] for k, v in state_dict.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2}
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
                   keymap=None) -> None:
    """One CheckpointError listing missing keys, unexpected keys and wrong shapes (if any).

    With ``keymap`` (an LDM file) every diffusers name is followed by its name in the file.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}

    def named(key: str) -> str:
        return key if keymap is None else f"{key} (in the file: {LDM_UNET_PREFIX}{keymap.to_ldm(key)})"

    missing = [named(k) for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected] + list(extra)
    wrong = [
        f"{named(k)}: {tuple(state_dict[k].shape)}, model: {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    ]
    problems = []
    if missing:
        problems.append(_short_list(missing, "missing key(s)"))
    if unexpected:
        problems.append(_short_list(unexpected, "unexpected key(s)"))
    if wrong:
        problems.append(_short_list(wrong, "shape mismatch(es)"))
    if problems:
        raise CheckpointError(
            f"{origin} does not fit this UNet config ({len(expected)} tensors expected, {len(state_dict) + len(extra)} given):\n"
            + "\n".join(problems)
            + "\nIs it the right model (config=…)? A truncated export or a different architecture shows up this way."
        )


def _build(config, state_dict: dict, origin: str, device, dtype, extra_unexpected: list[str], keymap=None):
    from unetlab.sd.unet import SDUNet

    # meta device: no time or memory spent on random initial weights that are replaced anyway
    with torch.device("meta"):
        model = SDUNet(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    _match_projection_shapes(state_dict, expected)
    _check_against(model, state_dict, origin, extra_unexpected, keymap)
    state_dict = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    # assign=True: the model takes the loaded tensors themselves (no second copy in memory)
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # SDUNet has no buffers; a future non-persistent one would have to be built for real
        raise RuntimeError(f"tensors left on the meta device after loading: {leftover[:5]}")
    return model.to(device=device, dtype=dtype).eval()


# ---- finding the weights --------------------------------------------------------------------
def _weights_in_folder(folder: Path, variant: str | None) -> list[Path]:
    """The weight file(s) of a diffusers model folder, safetensors first."""
    stem = WEIGHTS_NAME if variant is None else f"{WEIGHTS_NAME}.{variant}"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a shard index with a 'weight_map' ({exc!r})") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    for suffix in (".safetensors", ".bin"):
        if (folder / f"{stem}{suffix}").is_file():
            return [folder / f"{stem}{suffix}"]
    return []


def _load_diffusers_folder(folder: Path, config, device, dtype, variant):
    files = _weights_in_folder(folder, variant)
    if not files:
        name = WEIGHTS_NAME if variant is None else f"{WEIGHTS_NAME}.{variant}"
        raise CheckpointError(
            f"{folder}: has {CONFIG_NAME} but no weights ({name}.safetensors / .bin / sharded index).\n" + _how_to_get()
        )
    if config is None:
        try:
            raw = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{folder / CONFIG_NAME}: not valid JSON ({exc})") from None
        from unetlab.configs import UNetConfig

        config = UNetConfig.from_diffusers(raw, name=folder.parent.name if folder.name == "unet" else folder.name)
    else:
        config = resolve_config(config)
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        state_dict.update(read_state_dict(f))
    origin = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} shards)"
    return _build(config, state_dict, origin, device, dtype, [])


def _load_single_file(path: Path, config, device, dtype):
    raw = read_state_dict(path)
    layout = _layout(raw)
    if layout == "unknown":
        raise CheckpointError(
            f"{path}: does not look like an SD UNet checkpoint: neither diffusers names (conv_in.weight, "
            f"down_blocks…) nor LDM names ({LDM_UNET_PREFIX}input_blocks…).\n"
            + _short_list(list(raw)[:_LIST_MAX], "first key(s)")
        )
    config = resolve_config(config if config is not None else infer_config(raw))
    if layout == "diffusers":
        return _build(config, raw, str(path), device, dtype, [])
    state_dict, unknown = ldm_to_diffusers(raw, config, strict=False)
    return _build(config, state_dict, str(path), device, dtype, unknown, KeyMap(config))


def _hub_id(name: str) -> list[str]:
    key = _NAME_ALIASES.get(name.lower(), name.lower())
    return HUB_IDS.get(key, [name])


def find_local_weights(name: str, subfolder: str = "unet", cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached ``unet/`` folder of ``name`` (short name or hub id), or ``None``. Offline only.

    ``cache_dir``: the Hugging Face hub cache to look in (default: huggingface_hub's, i.e.
    ``$HF_HUB_CACHE`` or ``~/.cache/huggingface/hub``).
    """
    from huggingface_hub import try_to_load_from_cache

    for repo in _hub_id(name):
        if repo.count("/") != 1:
            continue
        try:
            config = try_to_load_from_cache(repo, f"{subfolder}/{CONFIG_NAME}", cache_dir=cache_dir)
        except Exception:  # a malformed repo id: nothing cached under it
            continue
        if isinstance(config, str) and _weights_in_folder(Path(config).parent, None):
            return Path(config).parent
    return None


def _from_hub(name: str, subfolder: str, download: bool, cache_dir) -> Path:
    """The local unet folder of a hub model: from the cache, else downloaded (only when allowed)."""
    local = find_local_weights(name, subfolder, cache_dir)
    if local is not None:
        return local
    from huggingface_hub import constants

    repo = _hub_id(name)[0]
    if not download or constants.HF_HUB_OFFLINE:
        why = "download=False" if not download else "HF_HUB_OFFLINE is set"
        raise FileNotFoundError(
            f"{name!r} is not a local file or folder, the Hugging Face cache has no weights for it, and "
            f"downloading is off ({why}).\n" + _how_to_get(name)
        )
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(
            repo,
            allow_patterns=[f"{subfolder}/{CONFIG_NAME}", f"{subfolder}/{WEIGHTS_NAME}.safetensors"],
            cache_dir=cache_dir,
        )
    except Exception as exc:  # no network, gated repo, unknown id …
        raise FileNotFoundError(
            f"{name!r}: could not download {repo} ({type(exc).__name__}: {exc}).\n" + _how_to_get(name)
        ) from None
    return Path(root) / subfolder


def load_sd_unet(
    source: str | os.PathLike,
    *,
    config: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    subfolder: str | None = None,
    variant: str | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
):
    """An ``SDUNet`` with the weights from ``source`` (folder, single file, hub id); see the module doc."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a hub id (str), got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        looks_like_hub = (
            text.lower() in HUB_IDS or text.lower() in _NAME_ALIASES
            or (text.count("/") == 1 and not text.startswith((".", "/", "~")) and path.suffix not in _SINGLE_FILE_SUFFIXES)
        )
        if not looks_like_hub:
            raise FileNotFoundError(f"{source}: no such file or folder.\n" + _how_to_get())
        path = _from_hub(text, subfolder or "unet", download, cache_dir)
        subfolder = None
    if path.is_file():
        if path.suffix not in _SINGLE_FILE_SUFFIXES:
            raise CheckpointError(f"{path}: unknown weights format; expected one of {', '.join(_SINGLE_FILE_SUFFIXES)}")
        return _load_single_file(path, config, device, dtype)
    # a folder: the model folder itself, its subfolder, or a pipeline's unet/
    candidates = [path / subfolder] if subfolder else [path, path / "unet"]
    for folder in candidates:
        if (folder / CONFIG_NAME).is_file():
            return _load_diffusers_folder(folder, config, device, dtype, variant)
    raise FileNotFoundError(
        f"{path}: expected a diffusers UNet folder ({CONFIG_NAME} + {WEIGHTS_NAME}.safetensors) "
        f"or a pipeline folder with {subfolder or 'unet'}/{CONFIG_NAME}; found neither.\n" + _how_to_get()
    )
