"""Execute notebooks in place, top to bottom in one fresh kernel, and report the time each took.

    python tools/run_notebook.py notebooks/01_simple_unet.ipynb [more.ipynb ...]

Run this after changing a notebook or any package code it uses, then commit the
notebook with its outputs; nbval (``python -m pytest``) checks the stored outputs.
The kernel runs offline (HF_HUB_OFFLINE=1), as in the tests.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path, timeout: int = 600) -> float:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for name in argv:
        elapsed = run(Path(name))
        print(f"{name}: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
