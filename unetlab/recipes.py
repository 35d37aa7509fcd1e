"""The training recipes of the course's small models, and their registry.

A **recipe** says everything a training run needs: how to build the model from a JSON-able config
dict, how to make batch number ``step``, the loss, and the default steps / batch size / learning rate /
seed. :mod:`unetlab.train` runs a recipe; :mod:`unetlab.checkpoints` rebuilds a checkpoint's model
with the recipe named in its metadata.

The course's recipes are declared here, next to the registry, so that every name is known without
importing anything else first:

* ``simple-skips``, ``simple-noskips`` (chapter 3): :class:`unetlab.simple_unet.SimpleUNet` with and
  without skip connections, on 32×32 shapes;
* ``text2img`` (chapters 5-6): :class:`unetlab.text2img.TextToImage` with its batch and loss
  (:func:`unetlab.text2img.text2img_batch`, :func:`unetlab.text2img.text2img_loss`), v-prediction on a
  zero-terminal-SNR schedule, EMA weights;
* ``text2img-nogrounding``: the same without the grounding loss (what cross-attention learns by itself).

Dependencies point one way: models (``simple_unet``, ``text2img``) <- ``recipes`` <- ``checkpoints``
<- ``train`` <- the CLI. A model module never imports this one.

Adding a recipe::

    from unetlab.recipes import Recipe, register_recipe

    def build(config):                     # config: a JSON-able dict -> nn.Module
        return MyModel(**config)

    def make_batch(step, batch_size):      # -> dict with "x0" (B, C, H, W) and any conditioning
        b = make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size)
        return {"x0": b.images, "captions": b.captions}

    register_recipe(Recipe(name="mine", arch="MyModel", build_model=build, config={...},
                           make_batch=make_batch, steps=3000, batch_size=64, lr=1e-3))

(``unetlab.train`` re-exports ``Recipe``, ``register_recipe``, ``get_recipe``, ``list_recipes`` and
``shapes_batch``, so ``from unetlab.train import Recipe, register_recipe`` works too.)
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .data import TRAIN_SEED, make_shapes
from .schedule import NoiseSchedule

__all__ = ["Recipe", "register_recipe", "get_recipe", "list_recipes", "shapes_batch", "grounding_weight"]


def _default_loss(model: nn.Module, batch: dict, schedule: NoiseSchedule, generator: torch.Generator) -> torch.Tensor:
    """eps-prediction MSE on ``batch["x0"]``; every other entry goes to the model as a keyword."""
    cond = {k: v for k, v in batch.items() if k != "x0"}
    return schedule.training_loss(model, batch["x0"], generator=generator, **cond)


@dataclass
class Recipe:
    """How to train one of the course's models (see the module docstring).

    ``build_model(config) -> nn.Module``; ``make_batch(step, batch_size) -> dict`` with ``"x0"``
    ``(B, C, H, W)`` in [-1, 1]; ``loss_fn(model, batch, schedule, generator) -> 0-d tensor``.
    ``ema_decay``: :func:`unetlab.train.train` keeps an exponential moving average of the weights (decay
    ``min(ema_decay, (1 + step) / (10 + step))``, diffusers' ``EMAModel``) and returns and saves it.
    """

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
    #: keep an exponential moving average of the weights with this decay and ship it (None: no EMA)
    ema_decay: float | None = None
    #: AdamW's fused kernel (faster; rounds differently from the default, so only recipes trained with it use it)
    fused_optimizer: bool = False
    loss_fn: Callable[[nn.Module, dict, NoiseSchedule, torch.Generator], torch.Tensor] = _default_loss
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    @property
    def filename(self) -> str:
        return f"{self.name}.safetensors"


_RECIPES: dict[str, Recipe] = {}
# name -> function making the recipe; called the first time the name is looked up, so that
# importing the registry stays cheap (the text-to-image recipe imports the SD UNet code)
_LAZY: dict[str, Callable[[], Recipe]] = {}


def _materialise(name: str | None = None) -> None:
    """Register the lazily declared recipe ``name`` (``None``: all of them)."""
    for lazy_name in [n for n in _LAZY if name is None or n == name]:
        make = _LAZY.pop(lazy_name)
        _RECIPES.setdefault(lazy_name, make())


def register_recipe(recipe: Recipe, replace: bool = False) -> Recipe:
    """Add a recipe to the registry (``replace=True`` to overwrite one of the same name).

    Raises ``TypeError`` for anything but a :class:`Recipe`, ``ValueError`` for a name already taken.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe expects a Recipe, got {type(recipe).__name__}")
    _materialise(recipe.name)
    if recipe.name in _RECIPES and not replace:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    """The names of every registered recipe, sorted."""
    _materialise()
    return sorted(_RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name`` (a :class:`Recipe` is returned as is); a ``ValueError`` listing the known names if none."""
    if isinstance(name, Recipe):
        return name
    if isinstance(name, str):
        _materialise(name)
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}")
    return _RECIPES[name]


def grounding_weight(name: str | Recipe) -> float:
    """The grounding-loss weight a text-to-image recipe trains with: the ``grounding_weight`` its loss pins
    (``text2img-eps``: :data:`EPS_GROUNDING_WEIGHT`; ``text2img-nogrounding``: 0), else the default
    :data:`unetlab.text2img.GROUNDING_WEIGHT` that :func:`unetlab.text2img.text2img_loss` falls back on.
    Unknown names raise as :func:`get_recipe` does."""
    from . import text2img

    pinned = getattr(get_recipe(name).loss_fn, "keywords", {}).get("grounding_weight")
    return float(text2img.GROUNDING_WEIGHT if pinned is None else pinned)


# --- chapter 3: SimpleUNet with and without skips ------------------------------------------------------------


def _build_simple_unet(config: dict) -> nn.Module:
    from .simple_unet import SimpleUNet

    return SimpleUNet(**config)


def shapes_batch(step: int, batch_size: int) -> dict:
    """Batch number ``step`` of the training stream: ``{"x0": (B, 3, 32, 32)}`` in [-1, 1]."""
    return {"x0": make_shapes(batch_size, seed=TRAIN_SEED, start=step * batch_size).images}


def _simple_recipes() -> list[Recipe]:
    """The two chapter-3 recipes (registered when this module is imported)."""
    # same data, seed, steps and optimiser for both; only use_skips differs
    common = dict(arch="SimpleUNet", build_model=_build_simple_unet, make_batch=shapes_batch,
                  steps=500, batch_size=32, lr=2e-3, seed=0, warmup_steps=40)
    return [
        Recipe(name="simple-skips", config=dict(in_channels=3, out_channels=3, base_channels=32, use_skips=True),
               description="chapter 3: SimpleUNet (32 base channels) with skip connections, on 32x32 shapes", **common),
        Recipe(name="simple-noskips", config=dict(in_channels=3, out_channels=3, base_channels=32, use_skips=False),
               description="chapter 3: the same SimpleUNet without skip connections, same data, seed and steps", **common),
    ]


# --- chapters 5-6: the small text-to-image model ---------------------------------------------------------------


def _text2img_recipe(name: str = "text2img", grounding: bool = True) -> Recipe:
    # imported here, not at the top: `python -m unetlab train simple-skips` need not load the SD UNet code
    import functools

    from . import text2img

    loss = text2img.text2img_loss if grounding else functools.partial(text2img.text2img_loss, grounding_weight=0.0)
    what = ("grounding loss on the colour and shape words' cross-attention" if grounding else
            "NO grounding loss (what cross-attention learns by itself)")
    return Recipe(
        name=name,
        arch="TextToImage",
        build_model=text2img.build_text2img,
        config={"unet": dataclasses.asdict(text2img.TEXT2IMG_UNET), "text": dict(text2img.TEXT_ENCODER_CONFIG),
                "schedule": dict(text2img.TEXT2IMG_SCHEDULE)},
        make_batch=text2img.text2img_batch,
        loss_fn=loss,
        schedule=NoiseSchedule(**text2img.TEXT2IMG_SCHEDULE),
        steps=TEXT2IMG_STEPS,
        batch_size=32,
        lr=2e-3,
        seed=0,
        warmup_steps=50,
        ema_decay=TEXT2IMG_EMA_DECAY,
        fused_optimizer=True,
        description="chapters 5-6: word-level text encoder + small SDUNet on 32x32 captioned shapes; v-prediction on "
                    "a zero-terminal-SNR schedule, Min-SNR-5 loss weighting, EMA weights, caption dropout 10 %, object "
                    f"pixels weighted x{1 + text2img.OBJECT_WEIGHT:g} in the loss, {what}",
    )


def _text2img_eps_recipe() -> Recipe:
    """Chapter 6's first model: the same network and data, trained the way SD 1.x was (eps-prediction on SD's
    scaled-linear schedule, whose x_999 keeps sqrt(alpha_bar_999) = 0.068 of the image), no EMA, AdamW's default
    kernel. Chapter 6 measures its signal leak; ``text2img`` is the fix (zero terminal SNR, v-prediction)."""
    from . import text2img

    base = _text2img_recipe()
    config = {"unet": base.config["unet"], "text": base.config["text"]}
    return dataclasses.replace(
        base, name="text2img-eps", config=config, schedule=NoiseSchedule(), ema_decay=None, fused_optimizer=False,
        # grounding weight 0.1 pinned: the shipped file was trained with it, before the default became 0.3
        steps=1700, loss_fn=functools.partial(text2img.text2img_loss, object_by_signal=False, min_snr_gamma=None,
                                              grounding_weight=EPS_GROUNDING_WEIGHT),
        description="chapter 6's first model: word-level text encoder + small SDUNet on 32x32 captioned shapes, "
                    "eps-prediction on SD's noise schedule (signal leak), no EMA, caption dropout 10 %, object pixels "
                    f"weighted x{1 + text2img.OBJECT_WEIGHT:g}, grounding loss weight {EPS_GROUNDING_WEIGHT:g}",
    )


#: optimiser steps and EMA decay of the text-to-image recipes
TEXT2IMG_STEPS = 1700
TEXT2IMG_EMA_DECAY = 0.995
#: grounding-loss weight of ``text2img-eps`` (the shipped text2img uses :data:`unetlab.text2img.GROUNDING_WEIGHT`)
EPS_GROUNDING_WEIGHT = 0.1


for _recipe in _simple_recipes():
    register_recipe(_recipe)
_LAZY["text2img"] = _text2img_recipe
_LAZY["text2img-nogrounding"] = lambda: _text2img_recipe("text2img-nogrounding", grounding=False)
_LAZY["text2img-eps"] = _text2img_eps_recipe

# chapter 7: the ControlNet recipe lives in its own module, imported the first time the name is looked up
_LAZY["controlnet"] = lambda: __import__("unetlab.controlnet_train", fromlist=["controlnet_recipe"]).controlnet_recipe()
