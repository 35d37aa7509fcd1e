"""Shared helpers for the benchmark scripts: machine facts, timing, FLOP counting, result files.

Benchmarks measure; tests never assert on time. Each script prints a Markdown table and can
append it, with the command, machine, versions and date, to a results file (``--save``).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


def machine_description(device: str) -> str:
    """One line: CPU model and cores, or the GPU name and memory."""
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions() -> str:
    import diffusers

    return f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}"


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, device: str, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds per call for each function, runs interleaved (A B A B ...) after warm-up.

    Interleaving means a slow spell of the machine hits every contender alike.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def unet_flops(config, batch: int, latent: int, tokens: int = 77) -> int:
    """FLOPs of one SDUNet forward, counted by torch's FlopCounterMode on the meta device.

    A multiply-add counts 2. Counting on meta tensors is instant and counts every matmul;
    on a real CPU tensor, SDPA runs a fused kernel the counter does not see, which would
    leave out the attention matmuls (~126 of SD 1.5's 803 GFLOP at 64×64).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from unetlab import SDUNet

    with torch.device("meta"):
        model = SDUNet(config)
        sample = torch.empty(batch, config.in_channels, latent, latent)
        context = torch.empty(batch, tokens, config.cross_attention_dim)
        with FlopCounterMode(display=False) as counter:
            model(sample, 500, context)
    return counter.get_total_flops()


def header(title: str, device: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    return (
        f"### {title}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine_description(device)}\n"
        f"- versions: {versions()}; unetlab at git {git_revision()}\n"
        f"- date: {now}\n"
    )


def save(text: str, path: str | None) -> None:
    print(text)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
