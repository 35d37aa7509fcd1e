"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models", arXiv:2302.05543), written out so that every line can be read; diffusers'
``ControlNetModel`` (``diffusers/models/controlnets/controlnet.py``) is the reference.

The idea in three lines:

1. keep the UNet frozen; make a **trainable copy** of its encoder half — ``conv_in``, the time
   embedding, the down blocks and the mid block (``ControlNet.from_unet`` copies the weights);
2. feed the copy the same latent **plus** the control image (edges, a mask, a pose …), turned
   into a ``(B, 320, H, W)`` feature map by a small conv net (``controlnet_cond_embedding``);
3. pass each of the copy's skips (12 in SD 1.5) and its mid-block output through a 1×1
   **zero convolution** (weights and bias start at 0) and add the results to the UNet's skips and
   mid block (``SDUNet.forward(…, down_block_additional_residuals=…, mid_block_additional_residual=…)``).

Because the zero convolutions start at 0, a fresh ControlNet leaves the UNet's output exactly
unchanged: training starts from the pretrained model, and the control is learned gradually.

API
---
``ControlNet(config="sd15", conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256),
controlnet_conditioning_channel_order="rgb", global_pool_conditions=False)``
    ``config``: the UNet's :class:`unetlab.UNetConfig` (or a preset name). Parameter names equal
    ``ControlNetModel``'s, so a diffusers ControlNet state dict loads with ``strict=True``.
``ControlNet.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256),
load_weights_from_unet=True)``
    A ControlNet for an ``SDUNet``, its encoder weights copied (as diffusers' ``from_unet``).
``down_residuals, mid_residual = controlnet(sample, timestep, context, controlnet_cond, conditioning_scale=1.0,
guess_mode=False, added_cond=None)``
    ``sample`` ``(B, 4, H, W)``; ``controlnet_cond`` ``(B or 1, conditioning_channels, 8H, 8W)`` in
    pixel space (the factor is ``controlnet.cond_factor``: 2 ** (len(conditioning_embedding_out_channels) - 1));
    returns a tuple of one residual per skip (shapes of :func:`unetlab.sd.unet.skip_shapes`) and the
    mid residual. ``guess_mode`` scales the residuals by ``logspace(-1, 0, N + 1)`` (0.1 at the first,
    shallowest skip … 1.0 at the mid block), as diffusers does, then by ``conditioning_scale``.
``check_compatible(controlnet, unet)``
    ``ValueError`` listing every config field that makes the ControlNet's residuals unusable by this UNet.
``unet_with_controlnet(unet, controlnet, sample, timestep, context, controlnet_cond, conditioning_scale=1.0,
guess_mode=False, added_cond=None)``
    ``check_compatible``, the ControlNet, then the UNet with its residuals: the predicted noise.
``load_controlnet(source, *, config=None, device="cpu", dtype=torch.float32)``
    A diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a
    pipeline folder's ``controlnet/``) or an original single file (``control_model.*`` LDM names:
    ``input_hint_block``, ``zero_convs``, ``middle_block_out``; or diffusers names). For a single file
    ``config`` names the UNet architecture (preset / ``UNetConfig``); without it, it is inferred from
    the cross-attention width (768 → SD 1.x, 1024 → SD 2.x, 2048 → SDXL). Conditioning channels are
    read from the weights' shapes.
``controlnet_ldm_to_diffusers(state_dict, config)`` -> ``(converted, unknown_keys)`` /
``controlnet_diffusers_to_ldm(state_dict, controlnet, prefix="control_model.")``
    The renaming, both ways (mirrors diffusers' ``convert_controlnet_checkpoint``; the tests check that
    diffusers' converter reads what ``controlnet_diffusers_to_ldm`` writes).
``controlnet.to_diffusers()`` / ``ControlNet.from_diffusers_config(config_dict)``
    Keyword arguments for ``diffusers.ControlNetModel`` / a ControlNet from its ``config.json``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.configs import UNetConfig, resolve_config
from unetlab.embeddings import timestep_batch
from unetlab.sd.blocks import build_down_blocks, build_mid_block
from unetlab.sd.embeddings import TimestepEmbedding, Timesteps, text_time_input
from unetlab.sd.unet import SDUNet, skip_shapes

__all__ = [
    "ControlNetConditioningEmbedding",
    "ControlNet",
    "check_compatible",
    "unet_with_controlnet",
    "load_controlnet",
    "controlnet_ldm_to_diffusers",
    "controlnet_diffusers_to_ldm",
    "LDM_CONTROLNET_PREFIX",
]

LDM_CONTROLNET_PREFIX = "control_model."
DEFAULT_EMBEDDING_CHANNELS = (16, 32, 96, 256)
# ControlNetModel's own config keys (everything else is the UNet's)
_CONTROLNET_KEYS = ("conditioning_channels", "conditioning_embedding_out_channels",
                    "controlnet_conditioning_channel_order", "global_pool_conditions")


def _zero(module: nn.Module) -> nn.Module:
    """Weights and bias to 0 (diffusers' ``zero_module``): the layer outputs 0 until it is trained."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """The control image ``(B, 3, 8H, 8W)`` -> a feature map ``(B, 320, H, W)`` added to the copy's ``conv_in``.

    conv_in (3x3) → SiLU → [conv 3x3 → SiLU → conv 3x3 stride 2 → SiLU] × (len(channels) - 1) → conv_out (zero).
    With diffusers' default ``block_out_channels=(16, 32, 96, 256)`` three stride-2 convs shrink the image
    8× — pixel space to latent space, as the VAE does. (The paper says 16, 32, 64, 128 channels and 4×4
    kernels; the released models use these.) ``conv_out`` starts at zero, like the zero convolutions.
    """

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: Sequence[int] = DEFAULT_EMBEDDING_CHANNELS):
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        if len(block_out_channels) < 1:
            raise ValueError("block_out_channels needs at least one width")
        self.conditioning_channels = conditioning_channels
        self.block_out_channels = block_out_channels
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            # same width, then stride 2: H, W halve at every step
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3,
                                        padding=1))

    @property
    def factor(self) -> int:
        """How much smaller the output is than the control image: 2 ** (number of stride-2 convs)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        # (B, 3, 512, 512) -> (B, 16, 512, 512)
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            # (B, 16, 512, 512) -> (B, 32, 256, 256) -> (B, 96, 128, 128) -> (B, 256, 64, 64)
            embedding = F.silu(block(embedding))
        # (B, 320, 64, 64)
        return self.conv_out(embedding)


class ControlNet(nn.Module):
    """A trainable copy of the UNet's encoder, steered by a control image (diffusers' ``ControlNetModel``).

    Modules (names as diffusers'): ``conv_in``, ``time_proj``/``time_embedding`` (+ SDXL's ``add_embedding``),
    ``controlnet_cond_embedding``, ``down_blocks`` and ``mid_block`` (built by the same code as
    ``SDUNet``'s), ``controlnet_down_blocks`` (one zero 1×1 conv per skip) and ``controlnet_mid_block``.

    ``forward(sample, timestep, context, controlnet_cond, conditioning_scale=1.0, guess_mode=False,
    added_cond=None) -> (down_residuals, mid_residual)``:

    * ``sample`` ``(B, in_channels, H, W)``, ``context`` ``(B, tokens, cross_attention_dim)``, ``timestep``
      and ``added_cond`` exactly as for :class:`unetlab.SDUNet` (the same checks and messages);
    * ``controlnet_cond`` ``(B or 1, conditioning_channels, f·H, f·W)``, ``f = cond_factor`` (8), values as
      the ControlNet was trained on (diffusers' pipelines feed [0, 1] images);
    * all in the weights' dtype and on their device (fp32, fp16 or bf16);
    * returns ``len(skip_shapes)`` residuals ``(B, C_i, H_i, W_i)`` (``(B, C_i, 1, 1)`` when
      ``global_pool_conditions``) and the mid residual ``(B, C_last, H_low, W_low)``.

    Raises ``ValueError`` for a control image of the wrong size or channel count (the message gives the
    size it must have), ``TypeError`` for a wrong dtype/device, and whatever ``SDUNet`` raises for
    ``sample``/``context``/``added_cond``. The constructor raises ``ValueError`` for an unknown channel order.
    """

    # the same input checks as the UNet (sample, context, SDXL's added_cond), with the same messages
    _check_inputs = SDUNet._check_inputs
    _check_added_cond = SDUNet._check_added_cond

    def __init__(
        self,
        config: UNetConfig | str = "sd15",
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = DEFAULT_EMBEDDING_CHANNELS,
        controlnet_conditioning_channel_order: str = "rgb",
        global_pool_conditions: bool = False,
    ):
        super().__init__()
        c = resolve_config(config)
        if controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"controlnet_conditioning_channel_order must be 'rgb' or 'bgr', got {controlnet_conditioning_channel_order!r}"
            )
        if not isinstance(conditioning_channels, int) or conditioning_channels < 1:
            raise ValueError(f"conditioning_channels must be a positive int, got {conditioning_channels!r}")
        self.config = c
        self.conditioning_channels = conditioning_channels
        self.conditioning_embedding_out_channels = tuple(int(x) for x in conditioning_embedding_out_channels)
        self.controlnet_conditioning_channel_order = controlnet_conditioning_channel_order
        self.global_pool_conditions = bool(global_pool_conditions)
        channels = c.block_out_channels

        # ---- the copy of the UNet's input side: conv_in and the time embedding --------------
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        # (B,) -> (B, 320) -> (B, 1280), as in the UNet
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], c.time_embed_dim)
        if c.addition_embed_type == "text_time":
            # SDXL ControlNets copy the size/crop embedding too
            self.add_time_proj = Timesteps(c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift)
            self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, c.time_embed_dim)
        else:
            self.add_time_proj = None
            self.add_embedding = None

        # ---- the control image's way in --------------------------------------------------------
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], conditioning_channels, self.conditioning_embedding_out_channels
        )

        # ---- the trainable copy of the encoder: same modules, same names as SDUNet's ---------
        self.down_blocks = build_down_blocks(c)
        self.mid_block = build_mid_block(c)

        # ---- zero convolutions: one 1x1 conv per skip, one for the mid block, all starting at 0
        widths = [shape[1] for _, shape in skip_shapes(c, (1, c.in_channels, 64, 64))]
        self.controlnet_down_blocks = nn.ModuleList([_zero(nn.Conv2d(w, w, kernel_size=1)) for w in widths])
        self.controlnet_mid_block = _zero(nn.Conv2d(channels[-1], channels[-1], kernel_size=1))

    # ---- bookkeeping ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return (f"config={self.config.name!r}, conditioning_channels={self.conditioning_channels}, "
                f"cond_factor={self.cond_factor}")

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def cond_factor(self) -> int:
        """Control image side / latent side: 8 with the default conditioning embedding."""
        return self.controlnet_cond_embedding.factor

    def to_diffusers(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.ControlNetModel(**kwargs)`` (the same architecture)."""
        kwargs = self.config.to_diffusers()
        for key in ("sample_size", "out_channels", "up_block_types"):
            kwargs.pop(key)
        kwargs.update(
            conditioning_channels=self.conditioning_channels,
            conditioning_embedding_out_channels=list(self.conditioning_embedding_out_channels),
            controlnet_conditioning_channel_order=self.controlnet_conditioning_channel_order,
            global_pool_conditions=self.global_pool_conditions,
        )
        return kwargs

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any], name: str = "controlnet") -> "ControlNet":
        """Build (random weights) from a diffusers ControlNet ``config.json`` dict."""
        config = dict(config)
        extra = {k: config.pop(k) for k in _CONTROLNET_KEYS if k in config}
        if extra.get("conditioning_embedding_out_channels") is None:
            extra["conditioning_embedding_out_channels"] = DEFAULT_EMBEDDING_CHANNELS
        down = config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
        # a ControlNet has no up path; the UNet it belongs to mirrors the down path
        config["up_block_types"] = [t.replace("Down", "Up") for t in reversed(list(down))]
        config["out_channels"] = config.get("in_channels", 4)
        return cls(UNetConfig.from_diffusers(config, name=name), **extra)

    @classmethod
    def from_unet(
        cls,
        unet: SDUNet,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = DEFAULT_EMBEDDING_CHANNELS,
        controlnet_conditioning_channel_order: str = "rgb",
        load_weights_from_unet: bool = True,
    ) -> "ControlNet":
        """A ControlNet for ``unet`` whose encoder starts as a copy of the UNet's (diffusers' ``from_unet``).

        Copied: ``conv_in``, ``time_embedding`` (and SDXL's ``add_embedding``), ``down_blocks``,
        ``mid_block``. New: the conditioning embedding (random, ``conv_out`` zero) and the zero
        convolutions. Built on the UNet's device with its dtype (a meta UNet gives a meta ControlNet).
        """
        if not isinstance(unet, SDUNet):
            raise TypeError(f"from_unet needs an SDUNet, got {type(unet).__name__}")
        with torch.device(unet.device):
            controlnet = cls(unet.config, conditioning_channels, conditioning_embedding_out_channels,
                             controlnet_conditioning_channel_order)
        controlnet.to(unet.dtype)
        if load_weights_from_unet:
            controlnet.conv_in.load_state_dict(unet.conv_in.state_dict())
            controlnet.time_embedding.load_state_dict(unet.time_embedding.state_dict())
            if controlnet.add_embedding is not None:
                controlnet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
            controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict())
            controlnet.mid_block.load_state_dict(unet.mid_block.state_dict())
        return controlnet

    # ---- forward --------------------------------------------------------------------------------
    def _check_cond(self, sample: torch.Tensor, controlnet_cond) -> None:
        B, _, H, W = sample.shape
        f, k = self.cond_factor, self.conditioning_channels
        if not isinstance(controlnet_cond, torch.Tensor):
            raise TypeError(f"controlnet_cond must be a tensor (B, {k}, {f}·H, {f}·W), got {type(controlnet_cond).__name__}")
        if controlnet_cond.ndim != 4 or controlnet_cond.shape[1] != k:
            raise ValueError(
                f"controlnet_cond must have shape (B, {k}, H_img, W_img) (a {k}-channel control image), "
                f"got {tuple(controlnet_cond.shape)}"
            )
        if controlnet_cond.shape[0] not in (1, B):
            raise ValueError(f"controlnet_cond has batch {controlnet_cond.shape[0]} but sample has batch {B} (1 is broadcast)")
        if tuple(controlnet_cond.shape[-2:]) != (f * H, f * W):
            raise ValueError(
                f"controlnet_cond is {controlnet_cond.shape[-2]}×{controlnet_cond.shape[-1]} but the latent is {H}×{W}: "
                f"the control image lives in pixel space and must be {f * H}×{f * W} ({f} × the latent, the factor "
                f"of this ControlNet's conditioning embedding)"
            )
        if controlnet_cond.device != self.device or controlnet_cond.dtype != self.dtype:
            raise TypeError(
                f"controlnet_cond is {controlnet_cond.dtype} on {controlnet_cond.device} but the ControlNet's weights "
                f"are {self.dtype} on {self.device}"
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        context: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        guess_mode: bool = False,
        added_cond: dict[str, torch.Tensor] | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``(down_residuals, mid_residual)`` for ``SDUNet.forward``; shapes in the module docstring."""
        B = self._check_inputs(sample, context, added_cond)
        self._check_cond(sample, controlnet_cond)
        if self.controlnet_conditioning_channel_order == "bgr":
            # (B, 3, 8H, 8W): BGR -> RGB
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])

        # ---- time_emb, exactly as in the UNet ---------------------------------------------------
        # (B,)
        timesteps = timestep_batch(timestep, B, device=sample.device)
        # (B, 320) -> (B, 1280)
        time_emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if self.add_embedding is not None:
            add_input = text_time_input(self.add_time_proj, added_cond["text_embeds"], added_cond["time_ids"])
            time_emb = time_emb + self.add_embedding(add_input.to(time_emb.dtype))

        # ---- the latent and the control image meet ------------------------------------------------
        # (B, 4, 64, 64) -> (B, 320, 64, 64)
        h = self.conv_in(sample)
        # (B, 3, 512, 512) -> (B, 320, 64, 64), added to the latent's features
        h = h + self.controlnet_cond_embedding(controlnet_cond)
        skips = [h]

        # ---- the copied encoder: the same skips as the UNet's (12 in SD 1.5) -------------------
        for block in self.down_blocks:
            # block 0: (B, 320, 32, 32); 1: (B, 640, 16, 16); 2: (B, 1280, 8, 8); 3: (B, 1280, 8, 8)
            h, block_skips = block(h, time_emb, context)
            skips.extend(block_skips)
        # (B, 1280, 8, 8)
        h = self.mid_block(h, time_emb, context)

        # ---- zero convolutions: 1x1, same shape out as in ------------------------------------------
        # 12 × (B, C_i, H_i, W_i)
        down_residuals = [zero_conv(skip) for skip, zero_conv in zip(skips, self.controlnet_down_blocks)]
        # (B, 1280, 8, 8)
        mid_residual = self.controlnet_mid_block(h)

        # ---- scaling ------------------------------------------------------------------------------
        if guess_mode and not self.global_pool_conditions:
            # 13 scales from 0.1 (conv_in's skip) to 1.0 (the mid block), geometric: deep features count most
            scales = torch.logspace(-1, 0, len(down_residuals) + 1, device=sample.device) * conditioning_scale
            down_residuals = [r * s for r, s in zip(down_residuals, scales)]
            mid_residual = mid_residual * scales[-1]
        else:
            down_residuals = [r * conditioning_scale for r in down_residuals]
            mid_residual = mid_residual * conditioning_scale
        if self.global_pool_conditions:
            # (B, C, 1, 1): "shuffle" ControlNets keep only the mean over the image
            down_residuals = [r.mean(dim=(2, 3), keepdim=True) for r in down_residuals]
            mid_residual = mid_residual.mean(dim=(2, 3), keepdim=True)
        return tuple(down_residuals), mid_residual


# ---- where a ControlNet meets a UNet --------------------------------------------------------------
# config fields that decide whether the residuals fit the UNet (shapes, context, SDXL's added_cond)
_COMPATIBLE_FIELDS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
                      "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")


def check_compatible(controlnet: ControlNet, unet: SDUNet) -> None:
    """Raise ``ValueError`` if ``controlnet``'s residuals cannot be added to ``unet``'s skips.

    Compared: ``in_channels``, ``block_out_channels``, ``layers_per_block`` (the skips' number and
    shapes), ``cross_attention_dim`` (both read the same text context) and SDXL's add-embedding
    sizes. The message lists every field that differs, with both values.
    """
    if not isinstance(controlnet, ControlNet):
        raise TypeError(f"controlnet must be a unetlab ControlNet, got {type(controlnet).__name__}")
    if not isinstance(unet, SDUNet):
        raise TypeError(f"unet must be an SDUNet, got {type(unet).__name__}")
    a, b = controlnet.config, unet.config
    diffs = [f"{f}: ControlNet {getattr(a, f)!r}, UNet {getattr(b, f)!r}"
             for f in _COMPATIBLE_FIELDS if getattr(a, f) != getattr(b, f)]
    if diffs:
        raise ValueError(
            f"this ControlNet (built for {a.name!r}) does not fit this UNet ({b.name!r}): " + "; ".join(diffs)
            + ". A ControlNet must be made for the UNet it steers (e.g. ControlNet.from_unet(unet))."
        )


def unet_with_controlnet(
    unet: SDUNet,
    controlnet: ControlNet,
    sample: torch.Tensor,
    timestep,
    context: torch.Tensor,
    controlnet_cond: torch.Tensor,
    conditioning_scale: float = 1.0,
    guess_mode: bool = False,
    added_cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The UNet's noise prediction ``(B, out_channels, H, W)`` steered by ``controlnet``.

    ``check_compatible``, then ``controlnet(...)`` -> residuals -> ``unet(..., down_block_additional_residuals=,
    mid_block_additional_residual=)`` — the two calls a diffusers ControlNet pipeline makes at every step.
    """
    check_compatible(controlnet, unet)
    down, mid = controlnet(sample, timestep, context, controlnet_cond, conditioning_scale=conditioning_scale,
                           guess_mode=guess_mode, added_cond=added_cond)
    return unet(sample, timestep, context, added_cond, down_block_additional_residuals=down,
                mid_block_additional_residual=mid)


# ---- original (LDM) names <-> diffusers names ------------------------------------------------------
def _hint_names(n_blocks: int) -> dict[str, str]:
    """diffusers conditioning-embedding module -> LDM ``input_hint_block.N`` (convs sit at even indices)."""
    names = {"controlnet_cond_embedding.conv_in": "input_hint_block.0"}
    for k in range(n_blocks):
        names[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * (k + 1)}"
    names["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (n_blocks + 1)}"
    return names


def controlnet_diffusers_to_ldm(state_dict: Mapping[str, torch.Tensor], controlnet: ControlNet,
                                prefix: str = LDM_CONTROLNET_PREFIX) -> dict[str, torch.Tensor]:
    """Rename a diffusers/unetlab ControlNet state dict to the original layout (``control_model.*``).

    ``controlnet`` supplies the architecture (a ``ControlNet``; its weights are not used). The
    copied encoder gets the UNet's LDM names (``input_blocks``, ``middle_block``, ``time_embed``,
    ``label_emb``); the zero convolutions are ``zero_convs.i.0`` and ``middle_block_out.0``; the
    conditioning embedding is ``input_hint_block.{0, 2, 4, …}``.
    """
    from unetlab.sd.ldm_keys import KeyMap

    keymap = KeyMap(controlnet.config)
    hint = _hint_names(len(controlnet.controlnet_cond_embedding.blocks))
    out, unknown = {}, []
    for name, value in state_dict.items():
        module, _, param = name.rpartition(".")
        if module in hint:
            new = f"{hint[module]}.{param}"
        elif module.startswith("controlnet_down_blocks."):
            new = f"zero_convs.{module.split('.')[1]}.0.{param}"
        elif module == "controlnet_mid_block":
            new = f"middle_block_out.0.{param}"
        else:
            new = keymap.to_ldm(name)
        if new is None:
            unknown.append(name)
        else:
            out[prefix + new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not ControlNet parameters of this config: {unknown[:10]}")
    return out


def controlnet_ldm_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Any,
                                n_hint_blocks: int | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original ControlNet state dict (``control_model.*`` or bare LDM names) to diffusers names.

    ``config``: the UNet architecture (preset name or ``UNetConfig``). Returns ``(converted, unknown_keys)``.
    Keys outside ``control_model.`` are skipped when that prefix is present (a file that also holds a UNet).
    """
    from unetlab.sd.ldm_keys import KeyMap

    keymap = KeyMap(resolve_config(config))
    if n_hint_blocks is None:
        n_hint_blocks = _count_hint_blocks(state_dict)
    hint_back = {v: k for k, v in _hint_names(n_hint_blocks).items()}
    has_prefix = any(k.startswith(LDM_CONTROLNET_PREFIX) for k in state_dict)
    out, unknown = {}, []
    for name, value in state_dict.items():
        if has_prefix:
            if not name.startswith(LDM_CONTROLNET_PREFIX):
                continue
            name = name[len(LDM_CONTROLNET_PREFIX):]
        module, _, param = name.rpartition(".")
        parts = module.split(".")
        if module in hint_back:
            new = f"{hint_back[module]}.{param}"
        elif parts[0] == "zero_convs" and len(parts) == 3 and parts[2] == "0":
            new = f"controlnet_down_blocks.{parts[1]}.{param}"
        elif module == "middle_block_out.0":
            new = f"controlnet_mid_block.{param}"
        else:
            new = keymap.to_diffusers(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    return out, unknown


def _count_hint_blocks(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of convs between conv_in and conv_out of ``input_hint_block`` (6 for the default)."""
    idx = {int(k.split("input_hint_block.")[1].split(".")[0]) for k in state_dict if "input_hint_block." in k}
    return max(len(idx) - 2, 0)


def _embedding_channels_from(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
    """(conditioning_channels, conditioning_embedding_out_channels) read from diffusers-named weights."""
    w = state_dict["controlnet_cond_embedding.conv_in.weight"]
    channels = [w.shape[0]]
    k = 1
    while f"controlnet_cond_embedding.blocks.{k}.weight" in state_dict:
        # the stride-2 convs (odd indices) set the next width
        channels.append(state_dict[f"controlnet_cond_embedding.blocks.{k}.weight"].shape[0])
        k += 2
    return int(w.shape[1]), tuple(int(c) for c in channels)


# ---- loading -------------------------------------------------------------------------------------
def _build_loaded(controlnet_meta: ControlNet, state_dict: dict, origin: str, device, dtype,
                  extra_unexpected: Sequence[str] = ()) -> ControlNet:
    from unetlab.sd.load import CheckpointError

    expected = {k: v.shape for k, v in controlnet_meta.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected] + list(extra_unexpected)
    wrong = [f"{k}: {tuple(state_dict[k].shape)}, model: {tuple(s)}"
             for k, s in expected.items() if k in state_dict and state_dict[k].shape != s]
    problems = [f"{len(v)} {what}: " + ", ".join(v[:10]) + (" …" if len(v) > 10 else "")
                for v, what in ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"),
                                (wrong, "shape mismatch(es)")) if v]
    if problems:
        raise CheckpointError(
            f"{origin} does not fit a ControlNet for {controlnet_meta.config.name!r} "
            f"({len(expected)} tensors expected, {len(state_dict) + len(extra_unexpected)} given):\n"
            + "\n".join(problems) + "\nIs it a ControlNet for this UNet (config=…)?"
        )
    state_dict = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    # assign=True: the model takes the loaded tensors themselves (no random init, no second copy)
    controlnet_meta.load_state_dict(state_dict, strict=True, assign=True)
    return controlnet_meta.to(device=device, dtype=dtype).eval()


def _weights_file(folder: Path) -> list[Path]:
    from unetlab.sd.load import WEIGHTS_NAME

    index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
    if index.is_file():
        return [folder / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    for suffix in (".safetensors", ".bin"):
        if (folder / f"{WEIGHTS_NAME}{suffix}").is_file():
            return [folder / f"{WEIGHTS_NAME}{suffix}"]
    return []


def load_controlnet(source: str | os.PathLike, *, config: Any = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNet:
    """A :class:`ControlNet` in eval mode holding the weights of ``source`` (see the module docstring).

    Raises ``FileNotFoundError`` (nothing there), :class:`unetlab.sd.load.CheckpointError` (a ``ValueError``:
    wrong format, missing/unexpected keys, wrong shapes — all listed at once).
    """
    from unetlab.sd.load import CONFIG_NAME, CheckpointError, infer_config, read_state_dict

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        folder = next((f for f in (path, path / "controlnet") if (f / CONFIG_NAME).is_file()), None)
        if folder is None:
            raise FileNotFoundError(f"{path}: expected a diffusers ControlNet folder ({CONFIG_NAME} + "
                                    "diffusion_pytorch_model.safetensors) or a pipeline folder with controlnet/")
        try:
            raw_config = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{folder / CONFIG_NAME}: not valid JSON ({exc})") from None
        if raw_config.get("_class_name", "ControlNetModel") != "ControlNetModel":
            raise CheckpointError(f"{folder}: config.json is a {raw_config['_class_name']}, not a ControlNetModel")
        files = _weights_file(folder)
        if not files:
            raise CheckpointError(f"{folder}: has {CONFIG_NAME} but no diffusion_pytorch_model.safetensors / .bin")
        with torch.device("meta"):
            model = ControlNet.from_diffusers_config(raw_config, name=folder.name)
        if config is not None:
            # the folder's config.json decides; a config= that contradicts it is a mistake worth naming
            wanted = resolve_config(config)
            diffs = [f"{f}: config.json {getattr(model.config, f)!r}, config= {getattr(wanted, f)!r}"
                     for f in _COMPATIBLE_FIELDS if getattr(model.config, f) != getattr(wanted, f)]
            if diffs:
                raise CheckpointError(f"{folder}: the ControlNet's config.json does not match config=: " + "; ".join(diffs))
        state_dict: dict[str, torch.Tensor] = {}
        for f in files:
            state_dict.update(read_state_dict(f))
        return _build_loaded(model, state_dict, str(files[0]), device, dtype)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file or folder")
    raw = read_state_dict(path)
    unknown: list[str] = []
    if "controlnet_cond_embedding.conv_in.weight" in raw:
        state_dict = dict(raw)
    elif any("input_hint_block." in k for k in raw):
        unet_config = resolve_config(config) if config is not None else resolve_config(infer_config(raw))
        state_dict, unknown = controlnet_ldm_to_diffusers(raw, unet_config)
    else:
        raise CheckpointError(
            f"{path}: does not look like a ControlNet: neither diffusers names (controlnet_cond_embedding…) nor "
            f"original ones ({LDM_CONTROLNET_PREFIX}input_hint_block…). First keys: {list(raw)[:5]}"
        )
    if "controlnet_cond_embedding.conv_in.weight" not in state_dict:
        raise CheckpointError(f"{path}: no conditioning embedding (input_hint_block.0) found")
    unet_config = resolve_config(config) if config is not None else resolve_config(infer_config(state_dict))
    cond_channels, emb_channels = _embedding_channels_from(state_dict)
    with torch.device("meta"):
        model = ControlNet(unet_config, cond_channels, emb_channels)
    return _build_loaded(model, state_dict, str(path), device, dtype, unknown)
