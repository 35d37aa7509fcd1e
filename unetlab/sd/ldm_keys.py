"""Parameter names of the SD UNet in the two layouts: original LDM/CompVis ↔ diffusers.

The original Stable Diffusion checkpoints (``v1-5-pruned-emaonly.safetensors``,
``v2-1_768-ema-pruned.ckpt``, ``sd_xl_base_1.0.safetensors``) store the UNet under
``model.diffusion_model.`` with CompVis names; diffusers (and :class:`unetlab.SDUNet`)
use block names. The mapping is derived here from the config — nothing is typed in
for one model size — so it works for SD 1.5, SD 2.1, SDXL and the course's tiny configs.

API
---
``KeyMap(config)``
    The mapping for one config. ``.to_ldm(name)`` / ``.to_diffusers(name)`` translate one
    parameter name (``None`` when it is not a UNet parameter of this config);
    ``.modules()`` lists ``(diffusers module, LDM module, kind)`` rows, e.g.
    ``("down_blocks.0.resnets.0", "input_blocks.1.0", "resnet")`` — the table chapter 2 prints.
``diffusers_to_ldm(state_dict, config, prefix="model.diffusion_model.")``
    Rename a diffusers state dict to LDM names (used to write an LDM single file).
``ldm_to_diffusers(state_dict, config, strict=True)``
    Rename an LDM state dict (with or without the ``model.diffusion_model.`` prefix; other
    parts of a full checkpoint — VAE, text encoder, EMA copies — are skipped) to diffusers
    names. With ``strict=True`` an LDM UNet key that has no diffusers name is a ``ValueError``;
    with ``strict=False`` the function returns ``(converted, unknown_keys)``.
``name_table(config, kinds=None)``
    The module mapping as a printable :class:`unetlab.sd.tables.Table` (columns ``diffusers``,
    ``LDM``, ``kind``); ``kinds=("resnet", "attention")`` keeps only those rows.
``ldm_to_ema_key(name)`` / ``split_ema_key(flat)``
    The name of one UNet tensor in the EMA copy of an original training checkpoint, and back.
    LDM's ``LitEma`` stores ``model.diffusion_model.input_blocks.0.0.weight`` as
    ``model_ema.diffusion_modelinput_blocks00weight`` (the dots cannot appear in a buffer name,
    so it drops them). ``ldm_to_ema_key`` is diffusers' rule (``convert_ldm_unet_checkpoint``
    with ``extract_ema=True``); ``split_ema_key`` puts the dots back by reading the LDM name
    grammar (``None`` when the name does not parse), for when the config is not known yet.
``ema_to_ldm(state_dict, config)``
    The EMA copy (``model_ema.*`` keys) renamed to LDM names (without prefix), exactly by
    diffusers' rule: ``(converted, unknown_keys)``; ``model_ema.decay`` / ``num_updates`` are skipped.
``LDM_UNET_PREFIX``, ``LDM_EMA_PREFIX``
    ``"model.diffusion_model."``, ``"model_ema."``.

How the two layouts line up (SD 1.5; L = layers_per_block = 2)::

    conv_in                         input_blocks.0.0
    time_embedding.linear_1 / _2    time_embed.0 / time_embed.2
    add_embedding.linear_1 / _2     label_emb.0.0 / label_emb.0.2          (SDXL only)
    down_blocks.b.resnets.j         input_blocks.(1 + b·(L+1) + j).0
    down_blocks.b.attentions.j      input_blocks.(1 + b·(L+1) + j).1
    down_blocks.b.downsamplers.0    input_blocks.(1 + b·(L+1) + L).0.op    → '.conv'
    mid_block.resnets.0 / attentions.0 / resnets.1    middle_block.0 / .1 / .2
    up_blocks.u.resnets.j           output_blocks.(u·(L+1) + j).0         (j = 0 … L)
    up_blocks.u.attentions.j        output_blocks.(u·(L+1) + j).1
    up_blocks.u.upsamplers.0.conv   output_blocks.(u·(L+1) + L).1.conv    (.2.conv after an attention)
    conv_norm_out / conv_out        out.0 / out.2

Inside a ResNet the names differ too (LDM keeps ``nn.Sequential`` indices)::

    norm1 ↔ in_layers.0   conv1 ↔ in_layers.2   time_emb_proj ↔ emb_layers.1
    norm2 ↔ out_layers.0  conv2 ↔ out_layers.3  conv_shortcut ↔ skip_connection

Inside a transformer (``SpatialTransformer`` in LDM, ``Transformer2DModel`` in diffusers) the
names are the same (``norm``, ``proj_in``, ``transformer_blocks.k.attn1.to_q`` …, ``proj_out``),
and so are the shapes: SD 1.x has 1×1-conv ``proj_in``/``proj_out`` in both layouts, SD 2.x and
SDXL linear ones in both. (A few third-party SD 2.x files store the linear projections as
1×1 convs; :func:`unetlab.sd.load.load_sd_unet` reshapes those.)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "LDM_UNET_PREFIX",
    "LDM_EMA_PREFIX",
    "KeyMap",
    "diffusers_to_ldm",
    "ldm_to_diffusers",
    "diffusers_config",
    "name_table",
    "ldm_to_ema_key",
    "split_ema_key",
    "ema_to_ldm",
]

LDM_UNET_PREFIX = "model.diffusion_model."
# the EMA copy of a training checkpoint (LDM's LitEma): "model_ema." + the UNet name without dots
LDM_EMA_PREFIX = "model_ema."
# LitEma's own bookkeeping buffers, not UNet weights
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

# ResNet sub-module names: diffusers -> LDM (LDM's ResBlock keeps nn.Sequential indices)
RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_RENAMES_BACK = {v: k for k, v in RESNET_RENAMES.items()}

_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # type -> has attentions
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def diffusers_config(config: Any) -> dict:
    """The diffusers ``UNet2DConditionModel`` config (a dict) of ``config``.

    ``config`` may be a preset name (``"sd15"``), a :class:`unetlab.UNetConfig`, a dict of
    diffusers kwargs, or a model that has a ``.config`` (diffusers' UNet or :class:`SDUNet`).
    """
    if isinstance(config, str):
        from unetlab.configs import get_config

        try:
            config = get_config(config)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    if hasattr(config, "to_diffusers"):
        return dict(config.to_diffusers())
    if isinstance(config, Mapping):
        return _with_diffusers_defaults(config)
    inner = getattr(config, "config", None)
    if inner is not None and inner is not config:
        return diffusers_config(inner)
    raise TypeError(
        "expected a preset name, a UNetConfig, a dict of diffusers UNet2DConditionModel kwargs "
        f"or a model with .config; got {type(config).__name__}"
    )


_REQUIRED = ("down_block_types", "up_block_types", "block_out_channels", "layers_per_block", "mid_block_type")


def _with_diffusers_defaults(config: Mapping) -> dict:
    """A partial dict of diffusers kwargs, completed with UNet2DConditionModel's defaults."""
    cfg = dict(config)
    if all(k in cfg for k in _REQUIRED):
        return cfg
    import inspect

    from diffusers import UNet2DConditionModel

    for name, param in inspect.signature(UNet2DConditionModel.__init__).parameters.items():
        if name != "self" and param.default is not inspect.Parameter.empty:
            cfg.setdefault(name, param.default)
    return cfg


def _per_level(value: Any, n: int, what: str) -> list[int]:
    """An int or a per-level sequence -> list of n ints."""
    if isinstance(value, int):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} levels")
    return [int(v) for v in values]


class KeyMap:
    """Module-level mapping between diffusers and LDM names for one UNet config."""

    def __init__(self, config: Any):
        cfg = diffusers_config(config)
        down_types = list(cfg.get("down_block_types", ()))
        up_types = list(cfg.get("up_block_types", ()))
        n = len(down_types)
        if n == 0 or len(up_types) != n:
            raise ValueError(f"expected as many up blocks as down blocks (>0); got {down_types} / {up_types}")
        for t in down_types:
            if t not in _DOWN_TYPES:
                raise ValueError(f"down block type {t!r} has no LDM mapping here; expected one of {list(_DOWN_TYPES)}")
        for t in up_types:
            if t not in _UP_TYPES:
                raise ValueError(f"up block type {t!r} has no LDM mapping here; expected one of {list(_UP_TYPES)}")
        mid_type = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid_type not in ("UNetMidBlock2DCrossAttn", None):
            raise ValueError(f"mid block type {mid_type!r} has no LDM mapping here; expected UNetMidBlock2DCrossAttn")
        for feature in ("class_embed_type", "num_class_embeds", "encoder_hid_dim_type", "time_cond_proj_dim"):
            if cfg.get(feature) is not None:
                raise ValueError(f"config option {feature}={cfg[feature]!r} has no LDM mapping here")
        add_type = cfg.get("addition_embed_type")
        if add_type not in (None, "text_time"):
            raise ValueError(f"addition_embed_type={add_type!r} has no LDM mapping here; expected None or 'text_time'")

        layers = _per_level(cfg.get("layers_per_block", 2), n, "layers_per_block")
        # (diffusers module, LDM module, kind)
        rows: list[tuple[str, str, str]] = [
            ("conv_in", "input_blocks.0.0", "conv"),
            ("time_embedding.linear_1", "time_embed.0", "linear"),
            ("time_embedding.linear_2", "time_embed.2", "linear"),
        ]
        if add_type == "text_time":
            rows += [
                ("add_embedding.linear_1", "label_emb.0.0", "linear"),
                ("add_embedding.linear_2", "label_emb.0.2", "linear"),
            ]

        # down path: every resnet (+ attention) is one input_blocks entry, the downsampler another
        index = 1
        for b, block_type in enumerate(down_types):
            for j in range(layers[b]):
                rows.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", "resnet"))
                if _DOWN_TYPES[block_type]:
                    rows.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1", "attention"))
                index += 1
            if b < n - 1:
                rows.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op", "downsample"))
                index += 1

        if mid_type is not None:
            rows += [
                ("mid_block.resnets.0", "middle_block.0", "resnet"),
                ("mid_block.attentions.0", "middle_block.1", "attention"),
                ("mid_block.resnets.1", "middle_block.2", "resnet"),
            ]

        # up path: up block u has one more resnet than its down twin; the upsampler rides
        # in the same output_blocks entry as the last resnet (after its attention, if any)
        up_layers = list(reversed(layers))
        index = 0
        for u, block_type in enumerate(up_types):
            has_attn = _UP_TYPES[block_type]
            for j in range(up_layers[u] + 1):
                rows.append((f"up_blocks.{u}.resnets.{j}", f"output_blocks.{index}.0", "resnet"))
                if has_attn:
                    rows.append((f"up_blocks.{u}.attentions.{j}", f"output_blocks.{index}.1", "attention"))
                if j == up_layers[u] and u < n - 1:
                    slot = 2 if has_attn else 1
                    rows.append((f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv", "upsample"))
                index += 1

        rows += [("conv_norm_out", "out.0", "norm"), ("conv_out", "out.2", "conv")]
        self.config = cfg
        self._rows = rows
        self._to_ldm = {d: (l, k) for d, l, k in rows}
        self._to_diffusers = {l: (d, k) for d, l, k in rows}

    def modules(self) -> list[tuple[str, str, str]]:
        """``(diffusers module, LDM module, kind)`` for every module that holds parameters."""
        return list(self._rows)

    @staticmethod
    def _split(name: str, table: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
        """Longest module prefix of ``name`` found in ``table`` -> (prefix, rest)."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                return prefix, ".".join(parts[cut:])
        return None

    def to_ldm(self, name: str) -> str | None:
        """LDM name (without ``model.diffusion_model.``) of a diffusers parameter name."""
        hit = self._split(name, self._to_ldm)
        if hit is None:
            return None
        prefix, rest = hit
        ldm_prefix, kind = self._to_ldm[prefix]
        if kind == "resnet":
            head, _, param = rest.partition(".")
            if head not in RESNET_RENAMES:
                return None
            rest = f"{RESNET_RENAMES[head]}.{param}"
        return f"{ldm_prefix}.{rest}"

    def to_diffusers(self, name: str) -> str | None:
        """diffusers name of an LDM parameter name (with or without ``model.diffusion_model.``)."""
        if name.startswith(LDM_UNET_PREFIX):
            name = name[len(LDM_UNET_PREFIX):]
        hit = self._split(name, self._to_diffusers)
        if hit is None:
            return None
        prefix, rest = hit
        diffusers_prefix, kind = self._to_diffusers[prefix]
        if kind == "resnet":
            # 'in_layers.0.weight' -> ('in_layers.0', 'weight')
            head, _, param = rest.rpartition(".")
            if head not in _RESNET_RENAMES_BACK:
                return None
            rest = f"{_RESNET_RENAMES_BACK[head]}.{param}"
        return f"{diffusers_prefix}.{rest}"


def name_table(config: Any, kinds: Any = None):
    """diffusers module name ↔ LDM module name for ``config``, as a printable Table."""
    from unetlab.sd.tables import Table

    keymap = KeyMap(config)
    rows = keymap.modules()
    if kinds is not None:
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        known = {kind for _, _, kind in rows}
        if not wanted <= known:
            raise ValueError(f"unknown kind(s) {sorted(wanted - known)}; kinds are {sorted(known)}")
        rows = [r for r in rows if r[2] in wanted]
    name = getattr(config, "name", config if isinstance(config, str) else "custom")
    return Table(
        title=f"{name} UNet: diffusers names ↔ original LDM names (LDM keys start with {LDM_UNET_PREFIX!r})",
        columns=["diffusers", "LDM", "kind"],
        rows=rows,
    )


def diffusers_to_ldm(state_dict: Mapping[str, Any], config: Any, prefix: str = LDM_UNET_PREFIX) -> dict[str, Any]:
    """Rename a diffusers UNet state dict to LDM names (each prefixed with ``prefix``).

    Raises ``ValueError`` listing the keys that are not parameters of ``config``.
    """
    keymap = KeyMap(config)
    out: dict[str, Any] = {}
    unknown = []
    for name, value in state_dict.items():
        ldm = keymap.to_ldm(name)
        if ldm is None:
            unknown.append(name)
        else:
            out[prefix + ldm] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not UNet parameters of this config and have no LDM name: "
            + ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
        )
    return out


def ldm_to_diffusers(state_dict: Mapping[str, Any], config: Any, strict: bool = True):
    """Rename an LDM state dict to diffusers names.

    Keys under ``model.diffusion_model.`` are the UNet; when that prefix is present, every other
    key (``first_stage_model.*`` VAE, ``cond_stage_model.*`` / ``conditioner.*`` text encoders,
    ``model_ema.*``) is skipped. Without the prefix, every key is taken as a UNet key.

    Returns the converted dict (``strict=True``; unknown UNet keys raise ``ValueError``) or
    ``(converted, unknown_keys)`` (``strict=False``).
    """
    keymap = KeyMap(config)
    has_prefix = any(k.startswith(LDM_UNET_PREFIX) for k in state_dict)
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in state_dict.items():
        if has_prefix and not name.startswith(LDM_UNET_PREFIX):
            continue  # VAE, text encoder, EMA copy … not the UNet
        new = keymap.to_diffusers(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    if strict:
        if unknown:
            raise ValueError(
                f"{len(unknown)} LDM key(s) have no diffusers name for this config: "
                + ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
            )
        return out
    return out, unknown


# ---- the EMA copy: LitEma drops the dots ------------------------------------------------------
# every word that occurs between the dots of an LDM UNet parameter name (longest tried first)
_EMA_WORDS = sorted(
    [
        "time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out",
        "in_layers", "emb_layers", "out_layers", "skip_connection", "op", "conv",
        "norm", "norm1", "norm2", "norm3", "proj_in", "proj_out", "transformer_blocks",
        "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj", "weight", "bias",
    ],
    key=len,
    reverse=True,
)
# after these words comes "<block index><one-digit slot>" run together: input_blocks.11.0 -> "110"
_INDEX_THEN_SLOT = ("input_blocks", "output_blocks", "label_emb")


def ldm_to_ema_key(name: str) -> str:
    """EMA name of an LDM UNet parameter (with or without ``model.diffusion_model.``).

    ``"input_blocks.1.1.proj_in.weight"`` -> ``"model_ema.diffusion_modelinput_blocks11proj_inweight"``
    (diffusers: ``"model_ema." + "".join(key.split(".")[1:])`` of the full key).
    """
    if not name.startswith(LDM_UNET_PREFIX):
        name = LDM_UNET_PREFIX + name
    # "model.diffusion_model.a.b" -> ["diffusion_model", "a", "b"] -> "diffusion_modelab"
    return LDM_EMA_PREFIX + "".join(name.split(".")[1:])


def split_ema_key(flat: str) -> str | None:
    """LDM name (without prefix) of an EMA key, dots put back; ``None`` if it does not parse.

    ``"model_ema.diffusion_modelinput_blocks110in_layers0weight"`` ->
    ``"input_blocks.11.0.in_layers.0.weight"``. Reads the LDM name grammar: known words, and
    numbers; after ``input_blocks`` / ``output_blocks`` / ``label_emb`` the run of digits is a
    block index followed by a one-digit slot (LDM's slots are 0, 1, 2). The result is a
    reading, not a proof: :func:`ema_to_ldm` maps names exactly once the config is known.
    """
    head = LDM_EMA_PREFIX + "diffusion_model"
    if not flat.startswith(head):
        return None
    text = flat[len(head):]
    parts: list[str] = []
    i = 0
    while i < len(text):
        if text[i].isdigit():
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            digits = text[i:j]
            if parts and parts[-1] in _INDEX_THEN_SLOT and len(digits) >= 2:
                parts += [digits[:-1], digits[-1]]
            elif parts and parts[-1] in _INDEX_THEN_SLOT:
                return None  # an index without its slot
            else:
                parts.append(digits)
            i = j
            continue
        word = next((w for w in _EMA_WORDS if text.startswith(w, i)), None)
        if word is None:
            return None
        parts.append(word)
        i += len(word)
    return ".".join(parts) if parts else None


def ema_to_ldm(state_dict: Mapping[str, Any], config: Any) -> tuple[dict[str, Any], list[str]]:
    """The EMA copy (``model_ema.*``) under LDM names without prefix, and the keys that did not map.

    The mapping is diffusers' rule applied to every parameter of ``config``
    (:func:`ldm_to_ema_key`), so it is exact; it refuses a config for which two parameters
    would share one EMA name (a ``ValueError``; no SD layout has such a pair).
    """
    from unetlab.configs import resolve_config

    keymap = KeyMap(config)
    names = _ldm_names(keymap, resolve_config(config))
    table: dict[str, str] = {}
    for ldm in names:
        flat = ldm_to_ema_key(ldm)
        if flat in table:
            raise ValueError(f"EMA names collide for this config: {table[flat]} and {ldm} are both {flat}")
        table[flat] = ldm
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in state_dict.items():
        if not name.startswith(LDM_EMA_PREFIX) or name in EMA_BOOKKEEPING:
            continue
        if name in table:
            out[table[name]] = value
        else:
            unknown.append(name)
    return out, unknown


def _ldm_names(keymap: KeyMap, config: Any) -> list[str]:
    """Every UNet parameter's LDM name (without prefix): the diffusers names of a meta-device SDUNet, mapped."""
    import torch

    from unetlab.sd.unet import SDUNet

    with torch.device("meta"):
        model = SDUNet(config)
    names = []
    for name in model.state_dict():
        ldm = keymap.to_ldm(name)
        if ldm is None:  # cannot happen for a config KeyMap accepts; say so loudly if it does
            raise ValueError(f"{name} has no LDM name")
        names.append(ldm)
    return names
