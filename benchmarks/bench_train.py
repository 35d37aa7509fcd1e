"""Training speed of the text-to-image recipe: seconds per optimiser step, before and after each speed-up.

    python benchmarks/bench_train.py --threads 1 2 --steps 12 --save benchmarks/RESULTS.md

One step = make the batch, forward, loss (diffusion + grounding), backward, gradient clipping, AdamW, EMA:
exactly what ``python -m unetlab train text2img`` does per step (the recipe's own ``make_batch`` and
``loss_fn``). Variants, each added on top of the previous one:

* ``before``: the loop as it was (batch made inline, AdamW's default multi-tensor implementation);
* ``+fused``: AdamW's fused CPU kernel (``fused=True``);
* ``+prefetch``: the next batch made in a worker thread while this step computes (:class:`unetlab.train.BatchPrefetcher`);
* ``+channels_last``: model and inputs in NHWC memory layout;
* ``+compile``: ``torch.compile`` of the UNet (inductor, CPU); the compile time is reported separately.

Median wall seconds per step over ``--steps`` steps after ``--warmup`` steps, and CPU seconds per step
(``time.process_time``, all threads): on a shared machine wall time depends on the neighbours, CPU time
far less. GFLOP per step is counted once with ``torch.utils.flop_counter`` (forward + backward).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_revision, machine_description, versions  # noqa: E402

VARIANTS = ("before", "+fused", "+prefetch", "+channels_last", "+compile")


def _flops_per_step(recipe) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = recipe.build_model(dict(recipe.config)).train()
    batch = recipe.make_batch(0, recipe.batch_size)
    with FlopCounterMode(display=False) as counter:
        loss = recipe.loss_fn(model, batch, recipe.schedule, torch.Generator().manual_seed(0))
        loss.backward()
    return counter.get_total_flops() / 1e9


def run_variant(recipe, variant: str, steps: int, warmup: int) -> dict:
    """Time ``warmup + steps`` training steps of ``recipe`` with the speed-ups up to ``variant``."""
    from unetlab.train import BatchPrefetcher

    level = VARIANTS.index(variant)
    torch.manual_seed(0)
    model = recipe.build_model(dict(recipe.config)).train()
    if level >= 3:
        model = model.to(memory_format=torch.channels_last)
    compile_seconds = None
    if level >= 4:
        model.unet = torch.compile(model.unet)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if level >= 1 else {}))
    ema = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0)
    total = warmup + steps
    prefetch = BatchPrefetcher(recipe.make_batch, recipe.batch_size, total) if level >= 2 else None
    walls, cpus = [], []
    try:
        for step in range(total):
            start, cpu = time.perf_counter(), time.process_time()
            batch = prefetch.get(step) if prefetch is not None else recipe.make_batch(step, recipe.batch_size)
            if level >= 3:
                batch["x0"] = batch["x0"].contiguous(memory_format=torch.channels_last)
            loss = recipe.loss_fn(model, batch, recipe.schedule, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 0.005)
            wall = time.perf_counter() - start
            if step == 0 and level >= 4:
                compile_seconds = wall
            if step >= warmup:
                walls.append(wall)
                cpus.append(time.process_time() - cpu)
    finally:
        if prefetch is not None:
            prefetch.__exit__(None, None, None)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "compile": compile_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="text2img")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--save", default=None, help="append the table (with command, machine, versions, date) here")
    args = parser.parse_args(argv)

    from unetlab.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    gflop = _flops_per_step(recipe)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        base = None
        for variant in args.variants:
            try:
                r = run_variant(recipe, variant, args.steps, args.warmup)
            except Exception as exc:  # a variant that cannot run here is reported, not fatal
                rows.append(f"| {threads} | {variant} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | | | |")
                print(rows[-1], flush=True)
                continue
            base = base or r["wall"]
            compile_s = f"{r['compile']:.0f}" if r["compile"] is not None else ""
            rows.append(f"| {threads} | {variant} | {r['wall']:.3f} | {1 / r['wall']:.2f} | {r['cpu']:.3f} | "
                        f"{gflop / r['wall']:.0f} | {base / r['wall']:.2f} | {compile_s} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        "| threads | variant | wall s/step | steps/s | CPU s/step | GFLOP/s | speed-up vs before | compile s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows])
    command = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"### Training step of `{args.recipe}` (batch {recipe.batch_size}, {gflop:.1f} GFLOP/step counted)\n\n"
              f"- command: `{command}`\n- machine: {machine_description('cpu').split(', torch threads')[0]} (torch threads: per row)\n"
              f"- versions: {versions()}; unetlab at git {git_revision()}\n"
              f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
              f"- median of {args.steps} steps after {args.warmup} warm-up steps; each variant adds to the one above\n")
    print(header)
    print(table)
    if args.save:
        with open(ROOT / args.save if not Path(args.save).is_absolute() else args.save, "a") as f:
            f.write("\n" + header + "\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
