"""Training the course's small models: a registry of recipes, one deterministic loop, the ``train`` CLI.

    python -m unetlab train simple-skips              # writes data/simple-skips.safetensors + manifest
    python -m unetlab train simple-noskips --steps 50 --out /tmp/quick.safetensors

A **recipe** says everything a run needs: how to build the model from a config dict, how to make
batch number ``step``, and the default steps / batch size / learning rate / seed. The loop is the
same for every recipe: AdamW, a short linear warm-up then cosine decay, gradient clipping at 1.0,
the noise-prediction loss of :meth:`unetlab.schedule.NoiseSchedule.training_loss`, a tqdm bar, and
the loss of every step kept as the loss curve.

Deterministic for a seed: ``torch.manual_seed(seed)`` before the model is built; timesteps and noise
come from a CPU ``torch.Generator`` seeded with ``seed``; batch ``k`` is image ``k·B … k·B+B-1`` of
the shapes stream :data:`unetlab.data.TRAIN_SEED` (never the held-out seed). On the same machine and
torch build, the same command writes the same bytes; on other hardware the floating-point sums may
round differently, so the weights (and their sha256) can differ slightly while the quality does not.

Adding a recipe (chapter 5-6's text-to-image model lives in ``unetlab/text2img.py``)::

    from unetlab.train import Recipe, register_recipe

    def build(config):                     # config: a JSON-able dict -> nn.Module
        return MyTextToImage(**config)

    def make_batch(step, batch_size):      # -> dict with "x0" (B, C, H, W) and any conditioning
        b = make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size)
        return {"x0": b.images, "captions": b.captions}

    def loss_fn(model, batch, schedule, generator):   # optional; default: eps-MSE on batch["x0"]
        ...                                            #   with the other entries passed as keywords
        return loss

    register_recipe(Recipe(name="text2img", arch="TextToImage", build_model=build, config={...},
                           make_batch=make_batch, loss_fn=loss_fn, steps=3000, batch_size=64, lr=1e-3))

``get_recipe`` imports ``unetlab.text2img`` the first time a name is not found, so a recipe registered
at import time there is available to ``python -m unetlab train text2img`` and to
:func:`unetlab.checkpoints.load_checkpoint` without further wiring.
"""
from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from .data import TRAIN_SEED, make_shapes
from .schedule import NoiseSchedule

__all__ = [
    "Recipe", "TrainResult", "register_recipe", "get_recipe", "list_recipes", "train",
    "save_checkpoint", "train_command", "cli_add_arguments", "cli_run",
]

#: modules that may register more recipes; imported the first time a recipe name is not found
EXTRA_RECIPE_MODULES = ("unetlab.text2img",)

#: format tag written into every checkpoint's metadata
CHECKPOINT_FORMAT = "unetlab-checkpoint-1"


def _default_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator) -> torch.Tensor:
    """eps-prediction MSE on ``batch["x0"]``; every other entry goes to the model as a keyword."""
    cond = {k: v for k, v in batch.items() if k != "x0"}
    return schedule.training_loss(model, batch["x0"], generator=generator, **cond)


@dataclass
class Recipe:
    """How to train one of the course's models (see the module docstring)."""

    name: str
    arch: str
    build_model: Callable[[dict], nn.Module]
    config: dict
    make_batch: Callable[[int, int], dict]
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup_steps: int = 50
    weight_decay: float = 0.0
    description: str = ""
    loss_fn: Callable[[nn.Module, dict, NoiseSchedule, torch.Generator], torch.Tensor] = _default_loss
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    @property
    def filename(self) -> str:
        return f"{self.name}.safetensors"


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (eval mode), per-step losses, where it was saved."""

    model: nn.Module
    losses: list[float]
    metadata: dict
    seconds: float
    path: Path | None = None
    cpu_seconds: float | None = None


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe, replace: bool = False) -> Recipe:
    """Add a recipe to the registry (``replace=True`` to overwrite one of the same name)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe expects a Recipe, got {type(recipe).__name__}")
    if recipe.name in _RECIPES and not replace:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def _import_extra_recipes() -> None:
    for module_name in EXTRA_RECIPE_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise


def list_recipes() -> list[str]:
    _import_extra_recipes()
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a ``ValueError`` listing the known names if there is none."""
    if isinstance(name, Recipe):
        return name
    if name not in _RECIPES:
        _import_extra_recipes()
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(_RECIPES))}")
    return _RECIPES[name]


# --- chapter 3's recipes: SimpleUNet with and without skips ------------------------------------------------


def _build_simple_unet(config: dict) -> nn.Module:
    from .simple_unet import SimpleUNet

    return SimpleUNet(**config)


def shapes_batch(step: int, batch_size: int) -> dict:
    """Batch number ``step`` of the training stream: ``{"x0": (B, 3, 32, 32)}`` in [-1, 1]."""
    return {"x0": make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size).images}


# Same data, seed, steps and optimiser for both; only use_skips differs.
_SIMPLE = dict(arch="SimpleUNet", build_model=_build_simple_unet, make_batch=shapes_batch,
               steps=500, batch_size=32, lr=2e-3, seed=0, warmup_steps=40)
register_recipe(Recipe(
    name="simple-skips", config=dict(in_channels=3, out_channels=3, base_channels=32, use_skips=True),
    description="chapter 3: SimpleUNet (32 base channels) with skip connections, on 32x32 shapes", **_SIMPLE,
))
register_recipe(Recipe(
    name="simple-noskips", config=dict(in_channels=3, out_channels=3, base_channels=32, use_skips=False),
    description="chapter 3: the same SimpleUNet without skip connections, same data, seed and steps", **_SIMPLE,
))


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=r.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    warmup = min(r.warmup_steps, max(1, steps // 5))
    run_steps = steps if stop_after is None else min(steps, _positive_int("stop_after", stop_after))

    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(run_steps), disable=not progress, desc=f"train {r.name}")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, warmup, lr)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in r.make_batch(step, batch_size).items()}
        loss = r.loss_fn(model, batch, r.schedule, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss)} at step {step}; try a smaller --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == run_steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
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
    from . import checkpoints

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
