"""Reading one weights file safely: safetensors, or pickles only with ``torch.load(weights_only=True)``.

API
---
``read_checkpoint(path) -> (tensors, extra)``
    The tensors of one file, and the non-tensor entries next to a Lightning ``state_dict``
    (``global_step`` as an int …).
``read_state_dict(path)``
    Only the tensors.
``LazySafetensors(path)``
    A ``.safetensors`` file as a read-only mapping that reads a tensor when it is looked up.
``short_list(names, what)``
    ``"3 missing key(s):"`` and the first ten names, one per line (the errors' listing format).
``CheckpointError``
    The one error type for weights that cannot be loaded (a ``ValueError``); its message names
    the file and says why.
"""
from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "read_checkpoint", "read_state_dict", "LazySafetensors", "SINGLE_FILE_SUFFIXES",
           "short_list"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_LIST_MAX = 10  # how many names of each kind of problem an error lists


class CheckpointError(ValueError):
    """A weights file or folder that cannot be loaded into the UNet; the message says why."""


def short_list(names, what: str) -> str:
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


def _read_pickle(path: Path) -> Any:
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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, extra)`` of one weights file (``.safetensors``; pickles only with ``weights_only=True``).

    A Lightning/LDM checkpoint ``{"state_dict": {...}, "global_step": 875000, …}`` gives its
    ``state_dict`` as ``tensors`` and the other top-level entries as ``extra`` (``global_step``
    as an int). Raises ``FileNotFoundError``, or :class:`CheckpointError` for a file that is
    not a dict of tensors (listing the entries that are not).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path), {}
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights format; expected one of {', '.join(SINGLE_FILE_SUFFIXES)}")
    obj = _read_pickle(path)
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        extra = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors (or {{'state_dict': …}}), got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: " + short_list(not_tensors, "entries are not tensors"))
    step = extra.get("global_step")
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        extra["global_step"] = int(step)
    return dict(obj), extra


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors in one weights file (``.safetensors``; pickles only with ``weights_only=True``).

    A Lightning/LDM checkpoint's ``{"state_dict": {...}, "global_step": …}`` is unwrapped.
    """
    return read_checkpoint(path)[0]


class LazySafetensors(Mapping):
    """A ``.safetensors`` file as a read-only mapping that reads a tensor when it is looked up.

    The loader looks up only the chosen UNet copy's keys; the VAE, the text encoder and the other
    copy of a two-UNet file are never made into tensors. (Memory: ``safetensors.torch.load_file``
    memory-maps too, so untouched tensors cost no RAM either way: loading the EMA copy of a
    3.35 GiB two-UNet fp16 file peaked at 0.25 GiB RSS this way and 0.27 GiB with ``load_file``.)
    """

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._file.keys())
            self._key_set = set(self._keys)
        except SafetensorError as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({exc}). The file is probably truncated "
                "(an interrupted download?) or not safetensors at all; download it again."
            ) from None

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._key_set
