"""UNet configurations: ``UNetConfig`` and the presets ``SD15``, ``SD21``, ``SDXL`` and small ones.

``UNetConfig`` holds exactly what ``unetlab.sd.SDUNet`` needs to build the Stable Diffusion UNet.
The three full presets carry the values of the ``unet/config.json`` files of
``runwayml/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-2-1`` and
``stabilityai/stable-diffusion-xl-base-1.0``.

API
---
* ``UNetConfig(...)``: frozen dataclass; per-block fields are normalised to tuples, one entry
  per down block (``num_attention_heads``, ``transformer_layers_per_block``).
* ``cfg.to_diffusers()`` -> dict of keyword arguments for ``diffusers.UNet2DConditionModel(**kw)``.
* ``UNetConfig.from_diffusers(config_dict)`` -> ``UNetConfig`` (refuses features SDUNet lacks).
* ``cfg.replace(**changes)`` -> a copy with some fields changed (checked again).
* ``PRESETS`` (``"sd15"``, ``"sd21"``, ``"sdxl"``, ``"tiny"``, ``"tiny21"``, ``"tinyxl"``) and
  ``get_config(name)``, which raises a ``KeyError`` listing the names it knows.

A naming trap, kept out of this class: diffusers' ``attention_head_dim`` is, for historical
reasons, the *number of heads* (SD 1.5's ``8`` means 8 heads of 40..160 channels each; SD 2.1's
``[5, 10, 20, 20]`` means heads of 64 channels). Here the field is called what it is,
``num_attention_heads``; ``head_dims`` gives the channels per head. ``to_diffusers`` writes it
back under diffusers' name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "UNetConfig",
    "resolve_config",
    "SD15",
    "SD21",
    "SDXL",
    "TINY",
    "TINY_21",
    "TINY_XL",
    "PRESETS",
    "get_config",
]

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)

# diffusers keys that SDUNet does not implement: value SDUNet assumes (== diffusers' default,
# or the value every SD 1.x / 2.x / XL config uses).
_FIXED_DIFFUSERS_KEYS: dict[str, Any] = {
    "center_input_sample": False,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}
# keys that carry no architecture (bookkeeping written by diffusers' save_pretrained)
# (and every key starting with "_": _class_name, _diffusers_version, _use_default_values ...)
_IGNORED_DIFFUSERS_KEYS = {"addition_embed_type_num_heads"}


def _per_block(value, n: int, name: str) -> tuple[int, ...]:
    """An int (same for every block) or a sequence of n ints -> tuple of n ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of ints, got a bool")
    if isinstance(value, int):
        return (value,) * n
    try:
        values = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}") from None
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must have one int per down block ({n}), got {value!r}")
    return values


def _compact(values: tuple[int, ...]):
    """(8, 8, 8, 8) -> 8; (5, 10, 20) stays a list (diffusers writes it so in config.json)."""
    return values[0] if len(set(values)) == 1 else list(values)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a Stable Diffusion UNet (``UNet2DConditionModel``-compatible).

    Per-block tuples (``block_out_channels``, ``num_attention_heads``,
    ``transformer_layers_per_block``) have one entry per *down* block; the up path uses them
    reversed, the mid block uses the last entry, as diffusers does.
    """

    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    # number of attention heads per down block (diffusers' confusingly named `attention_head_dim`)
    num_attention_heads: tuple[int, ...] | int
    cross_attention_dim: int
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    layers_per_block: int = 2
    # BasicTransformerBlocks inside each Transformer2DModel, per down block (SDXL: (1, 2, 10))
    transformer_layers_per_block: tuple[int, ...] | int = 1
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    # Transformer2DModel.proj_in/proj_out: nn.Linear (True, SD 2.x / XL) or 1x1 nn.Conv2d (SD 1.x)
    use_linear_projection: bool = False
    # compute q·k and softmax in float32 even when the model runs in fp16 (SD 2.1: True)
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    # sinusoidal timestep embedding: SD uses [cos | sin] and frequencies exp(-ln(1e4) i / half)
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    # SDXL's extra conditioning: "text_time" (pooled text embedding + 6 size/crop numbers) or None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("block_out_channels", tuple(int(c) for c in self.block_out_channels))
        set_("down_block_types", tuple(self.down_block_types))
        set_("up_block_types", tuple(self.up_block_types))
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("block_out_channels must name at least one block")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"need one down and one up block type per entry of block_out_channels ({n}), got "
                f"{len(self.down_block_types)} down and {len(self.up_block_types)} up block types"
            )
        for kind in self.down_block_types:
            if kind not in DOWN_BLOCK_TYPES:
                raise ValueError(f"down block type {kind!r} is not one of {DOWN_BLOCK_TYPES}")
        for kind in self.up_block_types:
            if kind not in UP_BLOCK_TYPES:
                raise ValueError(f"up block type {kind!r} is not one of {UP_BLOCK_TYPES}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(f"mid block type {self.mid_block_type!r} is not one of {MID_BLOCK_TYPES}")
        set_("num_attention_heads", _per_block(self.num_attention_heads, n, "num_attention_heads"))
        set_(
            "transformer_layers_per_block",
            _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block"),
        )
        for c, h in zip(self.block_out_channels, self.num_attention_heads):
            if h < 1 or c % h:
                raise ValueError(f"{c} channels cannot be split into {h} attention heads")
            if c % self.norm_num_groups:
                raise ValueError(f"{c} channels cannot be split into {self.norm_num_groups} GroupNorm groups")
        if not isinstance(self.cross_attention_dim, int) or isinstance(self.cross_attention_dim, bool):
            raise TypeError(
                f"cross_attention_dim must be one int (the text encoder's width), got {self.cross_attention_dim!r}"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.addition_embed_type not in (None, "text_time"):
            raise ValueError(f"addition_embed_type must be None or 'text_time', got {self.addition_embed_type!r}")
        if self.addition_embed_type == "text_time":
            if not self.addition_time_embed_dim or not self.projection_class_embeddings_input_dim:
                raise ValueError(
                    "addition_embed_type='text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim"
                )
            if self.text_embeds_dim <= 0:
                raise ValueError(
                    "projection_class_embeddings_input_dim must exceed 6 * addition_time_embed_dim "
                    "(it is text_embeds width + 6 * addition_time_embed_dim)"
                )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def time_embed_dim(self) -> int:
        """Width of ``time_emb`` (the timestep embedding after the MLP): 4 × first block width."""
        return self.block_out_channels[0] * 4

    @property
    def head_dims(self) -> tuple[int, ...]:
        """Channels per attention head, per down block (SD 1.5: (40, 80, 160, 160); SD 2.1: 64s)."""
        return tuple(c // h for c, h in zip(self.block_out_channels, self.num_attention_heads))

    @property
    def text_embeds_dim(self) -> int | None:
        """SDXL: width of ``added_cond['text_embeds']`` (1280 for SDXL), else None."""
        if self.addition_embed_type != "text_time":
            return None
        return self.projection_class_embeddings_input_dim - 6 * self.addition_time_embed_dim

    @property
    def downsample_factor(self) -> int:
        """How much the down path shrinks the latent: 2 ** (number of blocks - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    # ---- conversions ---------------------------------------------------------------------
    def replace(self, **changes) -> "UNetConfig":
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"UNetConfig has no field(s) {sorted(unknown)}")
        changes.setdefault("name", f"{self.name}*")
        return dataclasses.replace(self, **changes)

    def to_diffusers(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.UNet2DConditionModel(**kwargs)``."""
        kwargs: dict[str, Any] = {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": list(self.down_block_types),
            "mid_block_type": self.mid_block_type,
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": _compact(self.transformer_layers_per_block),
            # diffusers' name for the number of heads (see the module docstring)
            "attention_head_dim": _compact(self.num_attention_heads),
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
        }
        if self.addition_embed_type is not None:
            kwargs["addition_embed_type"] = self.addition_embed_type
            kwargs["addition_time_embed_dim"] = self.addition_time_embed_dim
            kwargs["projection_class_embeddings_input_dim"] = self.projection_class_embeddings_input_dim
        return kwargs

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], name: str = "custom") -> "UNetConfig":
        """Build from a diffusers ``unet/config.json`` dict (or ``UNet2DConditionModel.config``).

        Raises ``ValueError`` for a feature SDUNet does not implement (e.g. class embeddings).
        """
        config = dict(config)
        for key, expected in _FIXED_DIFFUSERS_KEYS.items():
            if key in config and config[key] != expected:
                raise ValueError(
                    f"SDUNet does not implement {key}={config[key]!r} (only {expected!r}, as in SD 1.x/2.x/XL)"
                )
        known = {f.name for f in dataclasses.fields(cls)} | {"attention_head_dim"}
        unknown = {k for k in config if not k.startswith("_")} - known - set(_FIXED_DIFFUSERS_KEYS) - _IGNORED_DIFFUSERS_KEYS
        if unknown:
            raise ValueError(f"unknown UNet2DConditionModel config key(s): {sorted(unknown)}")
        heads = config.pop("num_attention_heads", None)
        head_dim_key = config.pop("attention_head_dim", 8)
        # diffusers: num_attention_heads = num_attention_heads or attention_head_dim
        heads = heads if heads is not None else head_dim_key
        kwargs = {k: v for k, v in config.items() if k in known and k not in ("attention_head_dim", "name")}
        kwargs.setdefault("cross_attention_dim", 1280)
        kwargs.setdefault("block_out_channels", (320, 640, 1280, 1280))
        kwargs.setdefault("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
        kwargs.setdefault("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        if kwargs.get("upcast_attention") is None:
            kwargs["upcast_attention"] = False
        if kwargs.get("sample_size") is None:
            kwargs["sample_size"] = 64
        kwargs["name"] = name
        return cls(num_attention_heads=heads, **kwargs)


# ---- the real models (values from their unet/config.json) --------------------------------
SD15 = UNetConfig(
    name="sd15",
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    num_attention_heads=8,
    cross_attention_dim=768,
)

SD21 = UNetConfig(
    name="sd21",
    sample_size=96,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    num_attention_heads=(5, 10, 20, 20),  # 64 channels per head
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)

SDXL = UNetConfig(
    name="sdxl",
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    num_attention_heads=(5, 10, 20),  # 64 channels per head
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    # 1280 (pooled text embedding) + 6 * 256 (original size, crop, target size)
    projection_class_embeddings_input_dim=2816,
)

# ---- small ones for tests and notebooks: same block types and depth, narrow --------------
# GroupNorm uses 8 groups here (32 on a 32-channel block would normalise each channel alone).
TINY = SD15.replace(
    name="tiny",
    sample_size=32,
    block_out_channels=(32, 64, 64, 64),
    num_attention_heads=4,
    cross_attention_dim=32,
    norm_num_groups=8,
)

TINY_21 = SD21.replace(
    name="tiny21",
    sample_size=32,
    block_out_channels=(32, 64, 64, 64),
    num_attention_heads=(2, 4, 4, 4),  # 16 channels per head, like SD 2.1's constant head width
    cross_attention_dim=48,
    norm_num_groups=8,
)

TINY_XL = SDXL.replace(
    name="tinyxl",
    sample_size=32,
    block_out_channels=(32, 64, 128),
    num_attention_heads=(2, 4, 8),  # 16 channels per head
    transformer_layers_per_block=(1, 2, 3),
    cross_attention_dim=64,
    norm_num_groups=8,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,  # text_embeds width 32
)

PRESETS: dict[str, UNetConfig] = {
    "sd15": SD15,
    "sd21": SD21,
    "sdxl": SDXL,
    "tiny": TINY,
    "tiny21": TINY_21,
    "tinyxl": TINY_XL,
}

_ALIASES = {"sd1.5": "sd15", "sd-1.5": "sd15", "sd2.1": "sd21", "sd-2.1": "sd21", "tiny_21": "tiny21", "tiny_xl": "tinyxl"}


def get_config(name: str) -> UNetConfig:
    """Look a preset up by name (case-insensitive; ``"sd1.5"`` works too)."""
    if isinstance(name, UNetConfig):
        return name
    if not isinstance(name, str):
        raise TypeError(f"config name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise KeyError(f"unknown UNet config {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]


def resolve_config(config: Any) -> UNetConfig:
    """One way in for every function that takes "a config": a preset name, a ``UNetConfig``, a diffusers
    config dict, or a model that carries its ``UNetConfig`` as ``.config`` (``SDUNet``).

    A name goes through :func:`get_config` (an unknown one raises ``ValueError`` naming the presets),
    a mapping through :meth:`UNetConfig.from_diffusers`; anything else raises ``TypeError``.
    """
    if isinstance(getattr(config, "config", None), UNetConfig):
        return config.config
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, str):
        try:
            return get_config(config)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    if isinstance(config, Mapping):
        return UNetConfig.from_diffusers(dict(config))
    raise TypeError(
        "config must be a preset name (e.g. 'sd15'), a UNetConfig, a diffusers config dict or an SDUNet, "
        f"got {type(config).__name__}"
    )
