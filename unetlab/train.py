"""Training the course's small models: a registry of recipes, one deterministic loop, the ``train`` CLI.

    python -m unetlab train simple-skips              # writes data/simple-skips.safetensors + manifest
    python -m unetlab train simple-noskips --steps 50 --out /tmp/quick.safetensors

A **recipe** (:mod:`unetlab.recipes`, re-exported here) says everything a run needs: how to build the
model from a config dict, how to make batch number ``step``, and the default steps / batch size /
learning rate / seed. The loop is the same for every recipe: AdamW, a short linear warm-up then cosine
decay, gradient clipping at 1.0, the recipe's loss (by default the noise-prediction loss of
:meth:`unetlab.schedule.NoiseSchedule.training_loss`), a tqdm bar, and the loss of every step kept as
the loss curve.

Deterministic for a seed: ``torch.manual_seed(seed)`` before the model is built; timesteps and noise
come from a CPU ``torch.Generator`` seeded with ``seed``; batch ``k`` is image ``k·B … k·B+B-1`` of
the shapes stream :data:`unetlab.data.TRAIN_SEED` (never the held-out seed). On the same machine and
torch build, the same command writes the same bytes; on other hardware the floating-point sums may
round differently, so the weights (and their sha256) can differ slightly while the quality does not.

Adding a recipe: see :mod:`unetlab.recipes` (``from unetlab.train import Recipe, register_recipe``
still works). Dependencies point one way: ``recipes`` <- ``checkpoints`` <- ``train`` (this module
registers the checkpoints it writes; nothing below imports it).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import checkpoints
from .recipes import Recipe, get_recipe, list_recipes, register_recipe, shapes_batch

__all__ = [
    "Recipe", "TrainResult", "register_recipe", "get_recipe", "list_recipes", "shapes_batch", "train",
    "save_checkpoint", "train_command", "cli_add_arguments", "cli_run",
]

#: format tag written into every checkpoint's metadata
CHECKPOINT_FORMAT = "unetlab-checkpoint-1"


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (eval mode), per-step losses, where it was saved."""

    model: nn.Module
    losses: list[float]
    metadata: dict
    seconds: float
    path: Path | None = None
    cpu_seconds: float | None = None


# --- the loop --------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer_options(device: torch.device) -> dict:
    """AdamW's implementation: the fused kernel where torch has one for the device (CPU and CUDA since torch 2.4;
    one kernel for all parameters instead of a dozen elementwise ops per tensor), else the default."""
    import inspect

    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


class BatchPrefetcher:
    """Makes ``make_batch(step, batch_size)`` for steps 0 … ``steps-1`` one step ahead in a worker thread.

    ``get(step)`` must be called with 0, 1, 2, …; it returns the batch of that step (the same objects a
    direct call would make: batches are pure functions of the step) and starts making the next one.
    A context manager: leaving it waits for the worker.
    """

    def __init__(self, make_batch, batch_size: int, steps: int):
        from concurrent.futures import ThreadPoolExecutor

        self.make_batch, self.batch_size, self.steps = make_batch, batch_size, steps
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.next_step = 0
        self.future = self.pool.submit(make_batch, 0, batch_size) if steps > 0 else None

    def get(self, step: int) -> dict:
        if step != self.next_step:
            raise ValueError(f"batches are prefetched in order: expected step {self.next_step}, got {step}")
        batch = self.future.result()
        self.next_step += 1
        self.future = (self.pool.submit(self.make_batch, self.next_step, self.batch_size)
                       if self.next_step < self.steps else None)
        return batch

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False


def train_command(recipe: str, steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
                  lr: float | None = None, out: str | Path | None = None, threads: int | None = None) -> str:
    """The exact ``python -m unetlab train ...`` command line for these settings (defaults left out)."""
    parts = ["python -m unetlab train", recipe]
    for flag, value in (("--steps", steps), ("--batch-size", batch_size), ("--seed", seed), ("--lr", lr), ("--out", out),
                        ("--threads", threads)):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def train(
    recipe: str | Recipe,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    lr: float | None = None,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    command: str | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``recipe`` (a name or a :class:`Recipe`); overrides for steps, batch size, seed, lr.

    ``out``: where to write the safetensors checkpoint (``None``: keep the model in memory only).
    ``device``: ``"cpu"`` (default) or ``"cuda"``; noise is drawn on the CPU either way.
    ``stop_after``: run only the first N steps of the ``steps``-step schedule (tests use it to replay
    the start of a shipped run exactly, learning-rate schedule included).
    """
    r = get_recipe(recipe)
    steps = _positive_int("steps", r.steps if steps is None else steps)
    batch_size = _positive_int("batch size", r.batch_size if batch_size is None else batch_size)
    seed = r.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    lr = float(r.lr if lr is None else lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
    device = torch.device(device if device is not None else "cpu")

    torch.manual_seed(seed)
    model = r.build_model(dict(r.config)).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused AdamW only where the recipe asks for it: it rounds differently, and the other shipped
    # checkpoints must stay reproducible with their commands
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=r.weight_decay,
                                  **(_optimizer_options(device) if r.fused_optimizer else {}))
    generator = torch.Generator().manual_seed(seed)
    warmup = min(r.warmup_steps, max(1, steps // 5))
    run_steps = steps if stop_after is None else min(steps, _positive_int("stop_after", stop_after))
    # the EMA copy of the weights (what is shipped when the recipe asks for it)
    ema = [p.detach().clone() for p in params] if r.ema_decay else None

    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(run_steps), disable=not progress, desc=f"train {r.name}")
    # batches are made one step ahead in a worker thread (pure functions of the step: same data, off the critical path)
    with BatchPrefetcher(r.make_batch, batch_size, run_steps) as batches:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, warmup, lr)
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batches.get(step).items()}
            loss = r.loss_fn(model, batch, r.schedule, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at step {step}; try a smaller --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema is not None:
                # ema <- ema + (1 - d) (w - ema), d = min(decay, (1 + step) / (10 + step)) (diffusers' EMAModel)
                decay = min(r.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
            losses.append(float(loss.detach()))
            if step % 10 == 0 or step == run_steps - 1:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if ema is not None:
        # ship the averaged weights
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.eval()

    metadata = {
        "format": CHECKPOINT_FORMAT,
        "recipe": r.name,
        "arch": r.arch,
        "config": dict(r.config),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "schedule": r.schedule.config,
        "prediction_type": r.schedule.prediction_type,
        "ema_decay": r.ema_decay,
        "loss_curve": losses,
        "command": command or train_command(r.name, steps if steps != r.steps else None,
                                            batch_size if batch_size != r.batch_size else None,
                                            seed if seed != r.seed else None, lr if lr != r.lr else None, out),
    }
    path = None
    if out is not None:
        path = save_checkpoint(model, metadata, out)
    return TrainResult(model=model, losses=losses, metadata=metadata, seconds=seconds, path=path, cpu_seconds=cpu_seconds)


def save_checkpoint(model: nn.Module, metadata: dict, path: str | Path) -> Path:
    """Write the weights and ``metadata`` (as one sorted-JSON string, so the bytes are reproducible)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors keeps a hash map, whose order would change the bytes from run to run
    save_file(state, str(path), metadata={"unetlab": json.dumps(metadata, sort_keys=True)})
    return path


# --- command line ----------------------------------------------------------------------------------------


def cli_add_arguments(parser) -> None:
    parser.add_argument("recipe", help="what to train: simple-skips, simple-noskips (and recipes other modules add)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=None, help="seed for init, timesteps and noise (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--out", default=None,
                        help="checkpoint path (default: data/<recipe>.safetensors, which also updates data/CHECKPOINTS.md)")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); the shipped checkpoints use 1, "
                             "which is fastest when other programs share the cores and fixes the rounding")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_run(args) -> int:
    recipe = get_recipe(args.recipe)
    if args.threads is not None:
        torch.set_num_threads(_positive_int("threads", args.threads))
    command = train_command(recipe.name, args.steps, args.batch_size, args.seed, args.lr, args.out, args.threads)
    to_data = args.out is None
    out = checkpoints.DATA_DIR / recipe.filename if to_data else Path(args.out)
    result = train(recipe, steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr, out=out,
                   device=args.device, progress=not args.no_progress, command=command)
    final = sum(result.losses[-20:]) / len(result.losses[-20:])
    print(f"trained {recipe.name}: {len(result.losses)} steps in {result.seconds:.0f} s, "
          f"final loss {final:.4f} (mean of the last {min(20, len(result.losses))} steps)")
    if to_data:
        entry = checkpoints.register_checkpoint(
            recipe.name, out, command=command, metadata=result.metadata,
            extra={"train_seconds": round(result.seconds, 1), "cpu_seconds": round(result.cpu_seconds, 1), "device": args.device or "cpu",
                   "threads": torch.get_num_threads(), "torch": torch.__version__},
        )
        print(f"wrote {out} ({entry['bytes']:,} bytes, sha256 {entry['sha256']}) and updated data/CHECKPOINTS.md")
    else:
        print(f"wrote {out}")
    return 0
