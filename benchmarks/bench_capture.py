"""Cost of recording attention: peak memory (default) or time of a forward under ``capture_attention``.

    python benchmarks/bench_capture.py --batch 2                         # SD 1.5, 64×64 latent, CPU fp32: memory
    python benchmarks/bench_capture.py --config tiny --latent 48 --batch 2 --variants plain self-small both-small
    python benchmarks/bench_capture.py --measure time --batch 1          # median seconds instead

Variants (``--variants``; default ``plain cross cross-mean both-small``)
    ``plain``       a plain forward, every attention layer on SDPA
    ``cross``       ``capture_attention(model, "cross")``: every cross-attention layer recorded
    ``cross-mean``  the same with ``average_heads=True``: records 1/heads the size
    ``self-small``  ``capture_attention(model, "self", max_resolution=R)``: self-attention recorded only
                    where the query grid has at most ``R`` positions (``--max-resolution``, default
                    the latent's grid / 4, i.e. one resolution level down)
    ``both-small``  ``capture_attention(model, "both", max_resolution=R)``: cross everywhere, self ≤ R

How peak memory is measured (``--measure memory``)
    One child process per variant, run one after the other (never two models at once). The child
    builds the model (random weights, ``torch.manual_seed(0)``), runs one plain warm-up forward
    (lazy allocations, oneDNN caches), collects garbage, and reads its resident set size: the
    *baseline* (weights, libraries, caches). It then resets the kernel's high-water mark of the
    resident set (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``, Linux ≥ 4.0) and runs the
    measured forward under ``torch.no_grad()``, keeping the store alive; ``VmHWM`` afterwards is
    the *peak*. Resetting the mark is what makes this robust: ``ru_maxrss`` alone would still hold
    the model build's transient peak, which can hide a forward's growth. The forward's own cost is
    ``peak - baseline``; it includes the records the capture keeps (their size is reported too).
    RSS counts pages touched, so glibc's habit of keeping freed heap memory would blur it (a
    baseline that holds the warm-up's freed activations hides part of the next forward): the
    children run with ``MALLOC_MMAP_THRESHOLD_=65536``, so every block of 64 KiB or more (every
    activation that matters) is its own mapping, returned to the system when freed, and RSS
    follows the live tensors. With it, two runs of the tiny config agreed to 1 MiB; without it,
    the baseline moved by 10-50 MiB from run to run.
    On CUDA (``--device cuda``) the child uses ``torch.cuda.reset_peak_memory_stats`` and
    ``max_memory_allocated`` instead (baseline: ``memory_allocated`` after the warm-up).
    The child also counts calls of ``Attention._explicit_attention`` in the measured forward: the
    calls that built probabilities; every other attention call ran SDPA.

Target (issue 10): peak memory with cross-attention capture ≤ 1.2× a plain forward, SD 1.5,
64×64 latent, batch 2. The ``--measure time`` mode keeps the earlier timing table (interleaved
medians after warm-up; the machine must be quiet for its figures to mean anything).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys

import torch

from common import header, interleaved_medians, save

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VARIANTS = ("plain", "cross", "cross-mean", "self-small", "both-small")


# ============================================================================================
# Building the model and the forward of one variant
# ============================================================================================
def _setup(args):
    from unetlab import SDUNet
    from unetlab.configs import PRESETS

    config = PRESETS[args.config]
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = SDUNet(config).eval().to(args.device, dtype)
    g = torch.Generator().manual_seed(1)
    # (B, 4, latent, latent), (B, 77, cross_attention_dim)
    sample = torch.randn(args.batch, config.in_channels, args.latent, args.latent, generator=g).to(args.device, dtype)
    context = torch.randn(args.batch, 77, config.cross_attention_dim, generator=g).to(args.device, dtype)
    return model, sample, context


def _max_resolution(args) -> int:
    # default: one level below the largest grid (64×64 latent -> 32×32 = 1024 query positions)
    return args.max_resolution or (args.latent // 2) ** 2


def _forward(variant: str, model, sample, context, args):
    """Run one forward of ``variant``; returns (output, store or None)."""
    from unetlab import capture_attention

    if variant == "plain":
        return model(sample, 500, context), None
    kind, limit, mean = {
        "cross": ("cross", None, False),
        "cross-mean": ("cross", None, True),
        "self-small": ("self", _max_resolution(args), False),
        "both-small": ("both", _max_resolution(args), False),
    }[variant]
    with capture_attention(model, kind, max_resolution=limit, average_heads=mean) as store:
        out = model(sample, 500, context)
    return out, store


# ============================================================================================
# Peak memory: one child process per variant
# ============================================================================================
def _status_mib(field: str) -> float:
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise SystemExit(f"cannot reset the peak RSS (/proc/self/clear_refs: {e}); the memory mode needs Linux ≥ 4.0") from e


def child(args) -> None:
    """Measure one variant in this process; print one JSON line."""
    from unetlab.attention import Attention

    torch.set_num_threads(args.threads)
    model, sample, context = _setup(args)
    cuda = args.device.startswith("cuda")
    with torch.no_grad():
        model(sample, 500, context)  # warm-up: plain
    gc.collect()

    explicit_calls = {"n": 0}
    original = Attention._explicit_attention

    def counted(self, *a, **kw):
        explicit_calls["n"] += 1
        return original(self, *a, **kw)

    Attention._explicit_attention = counted
    if cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = _status_mib("VmRSS")
        _reset_peak_rss()
    with torch.no_grad():
        out, store = _forward(args.child, model, sample, context, args)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    Attention._explicit_attention = original
    print(
        json.dumps(
            {
                "variant": args.child,
                "baseline_mib": baseline,
                "peak_mib": peak,
                "records": len(store) if store is not None else 0,
                "records_mib": store.nbytes() / 2**20 if store is not None else 0.0,
                "explicit_calls": explicit_calls["n"],
                "output_finite": bool(torch.isfinite(out).all()),
            }
        )
    )


def measure_memory(args) -> None:
    torch.set_num_threads(args.threads)  # as in the children (the header reports it)
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant] + sys.argv[1:]
        # large blocks mmapped and unmapped on free: RSS follows the live tensors (see the docstring)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{run.stderr[-3000:]}")
        results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{variant}: {results[variant]}", file=sys.stderr)

    plain = results.get("plain")
    unit = "MiB allocated" if args.device.startswith("cuda") else "MiB RSS"
    lines = [
        header(
            f"Attention-capture peak memory, {args.config.upper()} at {args.latent}×{args.latent}, {args.dtype}, "
            f"batch {args.batch}, {args.device}",
            args.device,
        ),
        f"Self-attention bound R = {_max_resolution(args)} query positions. Memory in {unit}; one child process "
        "per row (see the script's docstring). *Forward* = peak − baseline, what one forward adds, records included; "
        "*capture's cost* = peak − the plain forward's peak.",
        "",
        "| forward | explicit-path calls | records (MiB) | baseline | peak | forward | capture's cost | peak / plain peak | forward / plain forward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "plain": "plain",
        "cross": "capture cross-attention",
        "cross-mean": "capture cross-attention, average_heads",
        "self-small": "capture self-attention ≤ R",
        "both-small": "capture cross + self ≤ R",
    }
    for variant, r in results.items():
        grew = r["peak_mib"] - r["baseline_mib"]
        if plain is not None:
            plain_grew = plain["peak_mib"] - plain["baseline_mib"]
            ratio_peak = f"{r['peak_mib'] / plain['peak_mib']:.3f}"
            cost = f"{r['peak_mib'] - plain['peak_mib']:.0f}"
            ratio_grew = f"{grew / plain_grew:.2f}" if plain_grew > 0 else "n/a"
        else:
            ratio_peak = ratio_grew = cost = "n/a"
        lines.append(
            f"| {labels[variant]} | {r['explicit_calls']} ({r['records']} recorded) | {r['records_mib']:.1f} | "
            f"{r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {grew:.0f} | {cost} | {ratio_peak} | {ratio_grew} |"
        )
    save("\n".join(lines) + "\n", args.save)


# ============================================================================================
# Time: interleaved medians in one process
# ============================================================================================
def measure_time(args) -> None:
    torch.set_num_threads(args.threads)
    model, sample, context = _setup(args)

    def run(variant):
        @torch.inference_mode()
        def fn():
            return _forward(variant, model, sample, context, args)

        return fn

    medians = interleaved_medians(
        {v: run(v) for v in args.variants}, device=args.device, warmup=args.warmup, repeats=args.repeats
    )
    lines = [
        header(
            f"Attention capture overhead, {args.config.upper()} at {args.latent}×{args.latent}, {args.dtype}, batch {args.batch}",
            args.device,
        ),
        f"Self-attention bound R = {_max_resolution(args)} query positions.",
        "",
        "| forward | median s | / plain |",
        "| --- | --- | --- |",
    ]
    base = medians.get("plain")
    for v, m in medians.items():
        lines.append(f"| {v} | {m:.4f} | {m / base:.3f} |" if base else f"| {v} | {m:.4f} | n/a |")
    save("\n".join(lines) + "\n", args.save)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", default="memory", choices=["memory", "time"])
    p.add_argument("--config", default="sd15")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=["plain", "cross", "cross-mean", "both-small"], choices=VARIANTS)
    p.add_argument("--max-resolution", type=int, default=None, help="largest self-attention query grid recorded (positions)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (memory mode: 1 keeps the machine usable)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--save")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
    elif args.measure == "memory":
        measure_memory(args)
    else:
        measure_time(args)


if __name__ == "__main__":
    main()
