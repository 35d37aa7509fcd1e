"""The checkpoints this project trains and ships in ``data/``: manifest, verification, loading, CLI.

``data/checkpoints.json`` (machine-readable) and ``data/CHECKPOINTS.md`` (for people) list every
shipped checkpoint with its size, sha256 and the exact command that regenerates it; ``python -m
unetlab train <recipe>`` updates both. ``python -m unetlab checkpoints`` lists them and checks each
file against its sha256.

    >>> ckpt = load_checkpoint("simple-skips")          # verified, architecture checked
    >>> ckpt.model                                       # SimpleUNet(... use_skips=True), eval mode
    >>> ckpt.metadata["loss_curve"][:3]

A missing or corrupted file raises an error that names the command regenerating it; asking for one
architecture and getting a checkpoint of another raises a ``ValueError`` saying both.

The file side (manifest, sha256, metadata, weights) lives in :mod:`unetlab.checkpoint_io` and is
re-exported here; this module adds what needs the recipes (:func:`load_checkpoint` rebuilds the model
with the recipe named in the file) and the ``checkpoints`` command. Dependencies point one way:
``checkpoint_io`` <- models <- ``recipes`` <- ``checkpoints`` <- ``train``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint_io import (
    DATA_DIR, MANIFEST, Checkpoint, load_model, load_weights, read_manifest, read_metadata, register_checkpoint,
    sha256_file, verify, write_markdown,
)
from .recipes import get_recipe

__all__ = [
    "DATA_DIR", "MANIFEST", "Checkpoint", "load_checkpoint", "load_weights", "read_metadata", "verify",
    "read_manifest", "register_checkpoint", "sha256_file", "write_markdown", "cli_add_arguments", "cli_run",
]


def _build_from_recipe(metadata: dict) -> torch.nn.Module:
    """The model of the recipe named in a checkpoint's metadata, built from the stored config."""
    return get_recipe(metadata["recipe"]).build_model(dict(metadata["config"]))


def load_checkpoint(name: str | Path, *, arch: str | None = None, config: dict | None = None,
                    device: str | torch.device = "cpu", check_sha: bool = True,
                    data_dir: str | Path | None = None) -> Checkpoint:
    """Load a shipped checkpoint by name (or a ``.safetensors`` path) and rebuild its model.

    ``arch`` / ``config``: what you expect (e.g. ``arch="SimpleUNet", config={"use_skips": True}``);
    a checkpoint of another architecture raises a ``ValueError``. The sha256 is checked against the
    manifest first (``check_sha=False`` skips that, e.g. for a checkpoint you just retrained).
    """
    return load_model(name, _build_from_recipe, arch=arch, config=config, device=device, check_sha=check_sha,
                      data_dir=data_dir)


# --- command line ----------------------------------------------------------------------------------------


def cli_add_arguments(parser) -> None:
    parser.add_argument("--no-verify", action="store_true", help="list only, do not hash the files")
    parser.add_argument("--data-dir", default=None, help="where the checkpoints are (default: the repository's data/)")


def cli_run(args) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else DATA_DIR
    entries = read_manifest(data_dir)
    if not entries:
        print(f"no checkpoints listed in {data_dir / MANIFEST}")
        return 0
    bad = 0
    for name, e in sorted(entries.items()):
        status = ""
        if not args.no_verify:
            ok, message = verify(name, data_dir)
            status = "OK" if ok else message.split(": ", 1)[1]
            bad += not ok
        print(f"{e['file']:<28} {e['bytes'] / 1e6:6.2f} MB  sha256 {e['sha256'][:16]}…  {status}")
        print(f"    {e['command']}")
    return 1 if bad else 0
