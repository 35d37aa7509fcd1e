"""Parameter counts of the Stable Diffusion UNet and of the whole SD model, without any weights.

Every model here is built on the meta device: modules get parameters with shapes but no storage,
so counting the full SDXL UNet (2.6 billion parameters) takes a fraction of a second and no memory.

API
---
``count_params(model_or_config_or_name)``
    Breakdown of a UNet by part: ``conv_in``, ``time_embedding`` (and SDXL's ``add_embedding``),
    each down block, the mid block, each up block, ``conv_norm_out``, ``conv_out``; per part the
    parameters in ResNets, in attentions (transformers) and the rest (down/upsamplers, plain layers),
    the total and the share. Accepts a preset name (``"sd15"``, ``"sd21"``, ``"sdxl"``, ``"tiny"`` …),
    a :class:`unetlab.UNetConfig`, a diffusers ``unet/config.json`` dict, or any ``nn.Module`` with
    diffusers' UNet names (``SDUNet``, ``diffusers.UNet2DConditionModel``). Returns a
    :class:`ParamCount`: ``print()`` it for the table; ``.total``; ``.counts`` (part ->
    ``{"resnets": n, "attentions": n, "other": n}``); ``.by_kind()`` (the same three over the whole
    UNet); ``.part(name)``; ``.records()`` / ``.column(name)`` (rows: part, type, resnets,
    attentions, other, params, share; the last row is the total).
``transformer_params(model_or_config_or_name="sd15")``
    What the "attentions" column of ``count_params`` holds, split by sub-module over all transformers
    (``Transformer2DModel``): ``attn1`` (self-attention: to_q, to_k, to_v, to_out), ``attn2``
    (cross-attention), ``ff`` (the GEGLU feed-forward), ``proj`` (proj_in + proj_out) and ``norms``
    (the GroupNorm and the three LayerNorms). SD 1.5: ff 55.7% of the transformers (17.3% of the UNet),
    attn1 + attn2 together 10.9% of the UNet. Returns a :class:`TransformerCount` (a Table with ``.counts``: kind ->
    parameters, ``.total`` over the transformers, ``.unet``).
``component_params(name="sd15")``
    The parts of a whole SD model — text encoder(s) (transformers' ``CLIPTextModel``), VAE (diffusers'
    ``AutoencoderKL``) and UNet — counted on the meta device from their configs, with shares.
    SD 1.5 gives study note 001's figures: 123,060,480 / 83,653,863 / 859,520,964. Returns a
    :class:`ComponentCount` (a :class:`unetlab.sd.tables.Table` with ``.counts`` and ``.total``).
``text_encoder_configs(name)``, ``VAE_CONFIG``
    The configs used (transformers ``CLIPTextConfig`` objects; diffusers ``AutoencoderKL`` kwargs).
``meta_unet(config_or_name)``
    The UNet (``SDUNet``) built on the meta device.
``meta_controlnet(config_or_name)``
    A ``ControlNet`` for that UNet, on the meta device; ``count_params(meta_controlnet("sd15"))`` breaks its
    361,279,120 parameters down by part (conditioning embedding, copied blocks, zero convolutions).
``adapter_params(name="sd15")``
    What each way of steering the UNet costs (chapter 7): ControlNet (SD 1.5: 361,279,120), T2I-Adapter
    (77,369,280), IP-Adapter (22,319,616), each next to the UNet's own parameters. Returns an
    :class:`AdapterCount` (a Table with ``.counts``: method -> parameters, and ``.unet``).
``cli_add_arguments(parser)`` / ``cli_run(args)``
    ``python -m unetlab params sd15|sd21|sdxl|tiny [--components]``.
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from unetlab.configs import resolve_config
from unetlab.sd.tables import Table

__all__ = [
    "ParamCount",
    "ComponentCount",
    "count_params",
    "component_params",
    "text_encoder_configs",
    "VAE_CONFIG",
    "meta_unet",
    "meta_controlnet",
    "AdapterCount",
    "TransformerCount",
    "transformer_params",
    "TRANSFORMER_KINDS",
    "adapter_params",
    "cli_add_arguments",
    "cli_run",
]

# the kinds of parameters inside a block: the sub-module list right under the block
_KINDS = {"resnets": "resnets", "attentions": "attentions"}  # everything else -> "other"
# names of the UNet's parts that are not blocks, with what they are
_PART_TYPES = {
    "conv_in": "Conv2d",
    "time_embedding": "TimestepEmbedding (MLP)",
    "add_embedding": "TimestepEmbedding (SDXL text_time)",
    "conv_norm_out": "GroupNorm",
    "conv_out": "Conv2d",
    # ControlNet's own parts
    "controlnet_cond_embedding": "ControlNetConditioningEmbedding",
    "controlnet_down_blocks": "zero convolutions (1x1), one per skip",
    "controlnet_mid_block": "zero convolution (1x1)",
}
_BLOCK_LISTS = ("down_blocks", "up_blocks")


def meta_unet(config_or_name: Any) -> nn.Module:
    """``SDUNet(config)`` built on the meta device: shapes without storage (instant for SDXL)."""
    from unetlab.sd.unet import SDUNet

    config = resolve_config(config_or_name)
    with torch.device("meta"):
        return SDUNet(config)


def _part_of(name: str) -> tuple[str, str]:
    """'down_blocks.1.attentions.0.proj_in.weight' -> ('down_blocks.1', 'attentions')."""
    parts = name.split(".")
    if parts[0] in _BLOCK_LISTS and len(parts) > 2:
        part, rest = f"{parts[0]}.{parts[1]}", parts[2:]
    else:
        part, rest = parts[0], parts[1:]
    kind = _KINDS.get(rest[0], "other") if len(rest) > 1 else "other"
    return part, kind


def _block_types(model: nn.Module) -> dict[str, str]:
    """Part name -> block type, from the model's config when it has one, else its class names."""
    types: dict[str, str] = dict(_PART_TYPES)
    cfg = getattr(model, "config", None)
    get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)) if cfg is not None else None
    for lst, key in (("down_blocks", "down_block_types"), ("up_blocks", "up_block_types")):
        declared = get(key) if get else None
        for i, block in enumerate(getattr(model, lst, None) or []):
            types[f"{lst}.{i}"] = declared[i] if declared else type(block).__name__
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        types["mid_block"] = (get("mid_block_type") if get else None) or type(mid).__name__
    return types


class ParamCount(Table):
    """Parameter breakdown of a UNet by part (a :class:`Table` with a few helpers)."""

    def __init__(self, title: str, counts: "OrderedDict[str, dict[str, int]]", types: dict[str, str]):
        self.counts = counts
        self.total = sum(sum(c.values()) for c in counts.values())
        rows = []
        for part, c in counts.items():
            total = sum(c.values())
            rows.append(
                (part, types.get(part, ""), c["resnets"], c["attentions"], c["other"], total, total / self.total)
            )
        kinds = self.by_kind()
        rows.append(("total", "", kinds["resnets"], kinds["attentions"], kinds["other"], self.total, 1.0))
        fmt = {"resnets": ",", "attentions": ",", "other": ",", "params": ",", "share": ".1%"}
        super().__init__(
            title=title,
            columns=["part", "type", "resnets", "attentions", "other", "params", "share"],
            rows=rows,
            formats=fmt,
        )

    def by_kind(self) -> dict[str, int]:
        """Totals over the whole UNet: ``{"resnets": …, "attentions": …, "other": …}``."""
        return {k: sum(c[k] for c in self.counts.values()) for k in ("resnets", "attentions", "other")}

    def part(self, name: str) -> int:
        """Parameters of one part, e.g. ``part("down_blocks.0")``."""
        if name not in self.counts:
            raise KeyError(f"no part {name!r}; parts are {list(self.counts)}")
        return sum(self.counts[name].values())


def count_params(model_or_config_or_name: Any = "sd15") -> ParamCount:
    """Count a UNet's parameters by part; a name or config is built on the meta device first."""
    if isinstance(model_or_config_or_name, nn.Module):
        model = model_or_config_or_name
        title = f"{type(model).__name__} parameters"
    else:
        config = resolve_config(model_or_config_or_name)
        model = meta_unet(config)
        title = f"{config.name} UNet parameters"
    counts: OrderedDict[str, dict[str, int]] = OrderedDict()
    for name, p in model.named_parameters():
        part, kind = _part_of(name)
        counts.setdefault(part, {"resnets": 0, "attentions": 0, "other": 0})[kind] += p.numel()
    if not counts:
        raise ValueError(f"{type(model).__name__} has no parameters to count")
    # data-flow order (diffusers registers up_blocks before mid_block)
    ordered = OrderedDict(sorted(counts.items(), key=lambda kv: _flow_order(kv[0])))
    return ParamCount(title, ordered, _block_types(model))


_FLOW = ["conv_in", "time_embedding", "add_embedding", "controlnet_cond_embedding", "down_blocks", "mid_block",
         "controlnet_down_blocks", "controlnet_mid_block", "up_blocks", "conv_norm_out", "conv_out"]


def _flow_order(part: str) -> tuple[int, int]:
    """Sort key: where a part sits on the way from sample to output (unknown parts last)."""
    head, _, index = part.partition(".")
    rank = _FLOW.index(head) if head in _FLOW else len(_FLOW)
    return rank, int(index) if index.isdigit() else 0


# ---- inside the transformers: attn1, attn2, ff, proj, norms ----------------------------------
#: the kinds of parameters inside a Transformer2DModel, in the order data flows through them
TRANSFORMER_KINDS = ("proj", "attn1", "attn2", "ff", "norms")
_KIND_NAMES = {  # kind -> what it is (the table's second column)
    "proj": "proj_in + proj_out (1x1 Conv2d or Linear)",
    "attn1": "self-attention: to_q, to_k, to_v, to_out",
    "attn2": "cross-attention: to_q, to_k, to_v (read the text), to_out",
    "ff": "feed-forward: GEGLU (C -> 2 x 4C), Linear (4C -> C)",
    "norms": "GroupNorm + norm1, norm2, norm3 (LayerNorm)",
}


def _transformer_kind(rest: list[str]) -> str:
    """The kind of a parameter from its name inside the transformer, e.g. ['transformer_blocks', '0', 'attn2', ...]."""
    if rest[0] in ("proj_in", "proj_out"):
        return "proj"
    if rest[0] == "norm":
        return "norms"
    if rest[0] == "transformer_blocks" and len(rest) > 3:
        sub = rest[2]
        if sub in ("attn1", "attn2", "ff"):
            return sub
        if sub.startswith("norm"):
            return "norms"
    raise ValueError(f"unknown parameter inside a transformer: {'.'.join(rest)!r}")


class TransformerCount(Table):
    """The transformers' parameters split by kind (attn1, attn2, ff, proj, norms), with shares."""

    def __init__(self, title: str, counts: "OrderedDict[str, int]", unet: int):
        self.counts = counts
        self.total = sum(counts.values())
        self.unet = unet
        rows = [(kind, _KIND_NAMES[kind], n, n / self.total, n / unet) for kind, n in counts.items()]
        rows.append(("total", "all transformers", self.total, 1.0, self.total / unet))
        super().__init__(
            title=title,
            columns=["kind", "what", "params", "of transformers", "of UNet"],
            rows=rows,
            formats={"params": ",", "of transformers": ".2%", "of UNet": ".2%"},
        )


def transformer_params(model_or_config_or_name: Any = "sd15") -> TransformerCount:
    """Split the parameters of every transformer (a block's ``attentions.<i>``) by kind.

    Accepts what :func:`count_params` accepts (a preset name, a config, a UNet module with
    diffusers' names). The kinds are :data:`TRANSFORMER_KINDS`; their sum equals the
    ``attentions`` column of ``count_params``. Raises ``ValueError`` for a UNet without
    transformers or a parameter whose kind is unknown.
    """
    if isinstance(model_or_config_or_name, nn.Module):
        model = model_or_config_or_name
        title = f"{type(model).__name__}: parameters inside the transformers"
    else:
        config = resolve_config(model_or_config_or_name)
        model = meta_unet(config)
        title = f"{config.name} UNet: parameters inside the transformers"
    counts: OrderedDict[str, int] = OrderedDict((kind, 0) for kind in TRANSFORMER_KINDS)
    unet = 0
    for name, p in model.named_parameters():
        unet += p.numel()
        parts = name.split(".")
        # 'down_blocks.1.attentions.0.<rest>' or 'mid_block.attentions.0.<rest>'
        start = 2 if parts[0] in _BLOCK_LISTS else 1
        if len(parts) > start + 2 and parts[start] == "attentions":
            counts[_transformer_kind(parts[start + 2:])] += p.numel()
    if not sum(counts.values()):
        raise ValueError(f"{type(model).__name__} has no transformers (no '...attentions.<i>' parameters)")
    return TransformerCount(title, counts, unet)


# ---- ControlNet, T2I-Adapter, IP-Adapter: what steering the UNet costs -----------------------------
def meta_controlnet(config_or_name: Any) -> nn.Module:
    """``ControlNet(config)`` (RGB control image) built on the meta device."""
    from unetlab.sd.controlnet import ControlNet

    config = resolve_config(config_or_name)
    with torch.device("meta"):
        return ControlNet(config)


class AdapterCount(Table):
    """Parameters of ControlNet, T2I-Adapter and IP-Adapter for one UNet, with the UNet's own for scale."""

    def __init__(self, name: str, unet: int, counts: "OrderedDict[str, tuple[str, int]]"):
        self.unet = unet
        self.counts = OrderedDict((method, n) for method, (_, n) in counts.items())
        rows = [(method, enters, n, n / unet) for method, (enters, n) in counts.items()]
        super().__init__(
            title=f"{name}: parameters added to steer the UNet ({unet:,} parameters, frozen)",
            columns=["method", "enters the UNet at", "params", "vs UNet"],
            rows=rows,
            formats={"params": ",", "vs UNet": ".1%"},
        )


def adapter_params(name: Any = "sd15") -> AdapterCount:
    """ControlNet, T2I-Adapter (full, RGB) and IP-Adapter (4 image tokens, CLIP ViT-H width 1024) for ``name``.

    The T2I-Adapter row is the full adapter shaped like the UNet's down blocks (``T2IAdapter.for_unet``); the
    released SDXL adapters use diffusers' ``full_adapter_xl`` layout instead, and SDXL's IP-Adapter a wider
    image encoder, so for SDXL those two rows are the same recipe applied, not the released files' counts.
    """
    from unetlab.sd.ip_adapter import ip_adapter_params
    from unetlab.sd.t2i_adapter import T2IAdapter

    config = resolve_config(name)
    unet = meta_unet(config)
    n_unet = sum(p.numel() for p in unet.parameters())
    # conv_in's skip + one per ResNet + one per downsampler (12 for SD 1.5)
    n_skips = 1 + len(config.block_out_channels) * config.layers_per_block + len(config.block_out_channels) - 1
    counts: OrderedDict[str, tuple[str, int]] = OrderedDict()
    counts["ControlNet"] = (f"{n_skips} skips + mid block", sum(p.numel() for p in meta_controlnet(config).parameters()))
    with torch.device("meta"):
        t2i = T2IAdapter.for_unet(config)
    counts["T2I-Adapter"] = (f"inside {len(config.block_out_channels)} down blocks", sum(p.numel() for p in t2i.parameters()))
    n_cross = sum(1 for n, _ in unet.named_modules() if n.endswith("attn2"))
    counts["IP-Adapter"] = (f"{n_cross} cross-attentions", ip_adapter_params(unet))
    return AdapterCount(config.name, n_unet, counts)


# ---- the whole SD model: text encoder(s), VAE, UNet ------------------------------------------
# diffusers AutoencoderKL kwargs of the SD VAE (vae/config.json of SD 1.5; SD 2.1 and SDXL use
# the same architecture, only scaling_factor / dtype details differ)
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# text encoder towers (CLIPTextConfig kwargs). vocab 49408 and 77 positions in all of them.
_CLIP_VIT_L = dict(  # OpenAI CLIP ViT-L/14 text tower: SD 1.x, SDXL's first encoder
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
_OPENCLIP_H = dict(  # OpenCLIP ViT-H/14 text tower, last layer dropped (SD 2.x uses the penultimate)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
_OPENCLIP_BIGG = dict(  # OpenCLIP ViT-bigG/14 text tower: SDXL's second encoder (with projection)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
# model -> [(component name, tower, with text_projection)]
_TEXT_ENCODERS = {
    "sd15": [("text_encoder", _CLIP_VIT_L, False)],
    "sd21": [("text_encoder", _OPENCLIP_H, False)],
    "sdxl": [("text_encoder", _CLIP_VIT_L, False), ("text_encoder_2", _OPENCLIP_BIGG, True)],
}


def _model_key(name: str) -> str:
    key = resolve_config(name).name
    if key not in _TEXT_ENCODERS:
        raise ValueError(f"component counts exist for {sorted(_TEXT_ENCODERS)}, not {name!r}")
    return key


def text_encoder_configs(name: str = "sd15") -> dict[str, Any]:
    """``{component: transformers.CLIPTextConfig}`` of the text encoder(s) of ``name``."""
    from transformers import CLIPTextConfig

    return {comp: CLIPTextConfig(**tower) for comp, tower, _ in _TEXT_ENCODERS[_model_key(name)]}


def _meta_numel(build) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


class ComponentCount(Table):
    """Parameters of each component of an SD model (text encoder(s), VAE, UNet) with shares."""

    def __init__(self, name: str, counts: "OrderedDict[str, tuple[str, int]]"):
        self.counts = OrderedDict((comp, n) for comp, (_, n) in counts.items())
        self.total = sum(self.counts.values())
        rows = [(comp, cls, n, n / self.total) for comp, (cls, n) in counts.items()]
        rows.append(("total", "", self.total, 1.0))
        super().__init__(
            title=f"{name}: parameters per component",
            columns=["component", "class", "params", "share"],
            rows=rows,
            formats={"params": ",", "share": ".1%"},
        )


def component_params(name: str = "sd15") -> ComponentCount:
    """Text encoder(s), VAE and UNet of SD 1.5 / 2.1 / XL, counted on the meta device."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    key = _model_key(name)
    counts: OrderedDict[str, tuple[str, int]] = OrderedDict()
    configs = text_encoder_configs(key)
    for comp, _, with_projection in _TEXT_ENCODERS[key]:
        # SDXL's second encoder also has the text_projection (its pooled output feeds add_embedding)
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        counts[comp] = (cls.__name__, _meta_numel(lambda: cls(configs[comp])))
    counts["vae"] = ("AutoencoderKL", _meta_numel(lambda: AutoencoderKL(**VAE_CONFIG)))
    counts["unet"] = ("SDUNet", count_params(key).total)
    return ComponentCount(key, counts)


# ---- CLI ------------------------------------------------------------------------------------
def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="preset: sd15, sd21, sdxl, tiny, tiny21, tinyxl")
    parser.add_argument(
        "--components", action="store_true", help="also count the text encoder(s) and the VAE (sd15, sd21, sdxl)"
    )
    parser.add_argument(
        "--adapters", action="store_true", help="also count ControlNet, T2I-Adapter and IP-Adapter for this UNet"
    )


def cli_run(args: argparse.Namespace) -> int:
    print(count_params(args.model))
    if args.components:
        print()
        print(component_params(args.model))
    if getattr(args, "adapters", False):
        print()
        print(adapter_params(args.model))
    return 0
