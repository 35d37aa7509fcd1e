"""``SDUNet``: the Stable Diffusion UNet (SD 1.x, 2.x, XL) written out in one readable file.

It equals diffusers' ``UNet2DConditionModel`` for the configurations in ``unetlab.configs``:
same parameter names (a diffusers state dict loads with ``strict=True``), same outputs
(``tests/test_sd_parity.py`` checks fp32 outputs against diffusers 0.42).

API
---
``model = SDUNet(config)``  (``config``: a ``UNetConfig`` or a preset name such as ``"sd15"``)

``noise_pred = model(sample, timestep, context, added_cond=None)``

* ``sample``: latent ``(B, in_channels, H, W)``; any H, W (odd sizes too, as in diffusers).
* ``timestep``: int/float, 0-d tensor, or ``(B,)`` tensor; cast to the sample's device.
* ``context``: text-encoder output ``(B, tokens, cross_attention_dim)`` (SD 1.5: ``(B, 77, 768)``).
* ``added_cond``: SDXL only, ``{"text_embeds": (B, 1280), "time_ids": (B, 6)}`` (diffusers'
  ``added_cond_kwargs``).
* returns the predicted noise, ``(B, out_channels, H, W)``.

``skip_shapes(config, sample_shape)``, ``mid_shape(…)``, ``intrablock_shapes(…)``: where each extension
point enters and the shapes it needs, computed from the config alone.

Extension points (keyword-only, diffusers' names and places; chapter 7):

* ``down_block_additional_residuals``: ControlNet's, one tensor per skip (12 for SD 1.5), each
  added to its skip before the up path reads it; shapes from :func:`skip_shapes`.
* ``mid_block_additional_residual``: ControlNet's, added to the mid block's output; shape from
  :func:`mid_shape`. The two come together (a ControlNet returns both).
* ``down_intrablock_additional_residuals``: T2I-Adapter's, one per down block (+ optionally one
  for the mid block), added inside the down path where diffusers adds them; see
  :func:`intrablock_shapes`.
* ``ip_tokens``: IP-Adapter's image tokens ``(B, n_image_tokens, cross_attention_dim)`` (from
  :class:`unetlab.sd.ip_adapter.ImageProjection`); every cross-attention then receives the pair
  ``(context, ip_tokens)`` (diffusers passes the same pair as ``encoder_hidden_states``). Needs
  :func:`unetlab.sd.ip_adapter.enable_ip_adapter` first.

A wrong count, a wrong shape (the message names the skip, e.g. ``down_block_additional_residuals[5]
(skip of down_blocks.1.downsamplers.0)``, the expected and the received shape), dtype or device
is a ``ValueError``/``TypeError`` before any work is done.

``sample`` and ``context`` must have the weights' dtype and device; bad inputs raise a
``ValueError``/``TypeError`` that says what was expected.

Meta device: ``with torch.device("meta"): model = SDUNet("sdxl")`` allocates nothing, and a
forward on meta tensors computes only shapes — instant even for SDXL.

The shape comments in ``forward`` follow SD 1.5 at a 64×64 latent (512×512 pixels), batch B.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from unetlab.configs import UNetConfig, get_config, resolve_config
from unetlab.embeddings import timestep_batch
from unetlab.sd.blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    UpBlock2D,
    build_down_blocks,
    build_mid_block,
)
from unetlab.sd.embeddings import TimestepEmbedding, Timesteps, text_time_input

__all__ = ["SDUNet", "skip_shapes", "mid_shape", "intrablock_shapes"]


def _level_sizes(config: UNetConfig, height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) at each down block's input: every downsampler (3x3, stride 2, padding 1) makes n -> ceil(n / 2)."""
    sizes = [(height, width)]
    for _ in range(len(config.block_out_channels) - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def _batch_hw(config: UNetConfig, sample_shape) -> tuple[int, int, int]:
    shape = tuple(sample_shape)
    if len(shape) != 4:
        raise ValueError(f"sample_shape must be (B, {config.in_channels}, H, W), got {shape}")
    return shape[0], shape[2], shape[3]


def skip_shapes(config: UNetConfig | str, sample_shape) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The skips the down path hands to the up path, in order: ``[(module, shape), ...]``.

    ``module`` names the layer whose output the skip is (``"conv_in"``,
    ``"down_blocks.0.attentions.0"``, ``"down_blocks.0.downsamplers.0"``, ``"down_blocks.3.resnets.1"``);
    ``shape`` is ``(B, C, H, W)`` for a latent of ``sample_shape`` ``(B, in_channels, H, W)``. These are
    also the shapes ControlNet's ``down_block_additional_residuals`` must have. SD 1.5 at 64×64: 12 skips,
    ``(B, 320, 64, 64)`` … ``(B, 1280, 8, 8)``. Pure arithmetic, no model is built.
    """
    c = resolve_config(config)
    B, H, W = _batch_hw(c, sample_shape)
    sizes = _level_sizes(c, H, W)
    out = [("conv_in", (B, c.block_out_channels[0], H, W))]
    for i, (kind, ch) in enumerate(zip(c.down_block_types, c.block_out_channels)):
        # the skip is the output of the attention after each ResNet (or of the ResNet alone)
        layer = "attentions" if kind == "CrossAttnDownBlock2D" else "resnets"
        h, w = sizes[i]
        out += [(f"down_blocks.{i}.{layer}.{j}", (B, ch, h, w)) for j in range(c.layers_per_block)]
        if i < len(sizes) - 1:
            out.append((f"down_blocks.{i}.downsamplers.0", (B, ch, *sizes[i + 1])))
    return out


def mid_shape(config: UNetConfig | str, sample_shape) -> tuple[str, tuple[int, int, int, int]]:
    """``("mid_block", (B, C_last, H_low, W_low))``: where and what shape ControlNet's mid residual is added."""
    c = resolve_config(config)
    B, H, W = _batch_hw(c, sample_shape)
    return "mid_block", (B, c.block_out_channels[-1], *_level_sizes(c, H, W)[-1])


def intrablock_shapes(config: UNetConfig | str, sample_shape) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Where T2I-Adapter's ``down_intrablock_additional_residuals`` are added, and their shapes.

    One entry per down block, then one for the mid block (used only when a residual is left over,
    as T2I-Adapter-XL does). As in diffusers: a ``CrossAttnDownBlock2D`` adds it after its last
    ResNet+attention pair (before the downsampler, at the block's input resolution); a
    ``DownBlock2D`` adds it to its output (after its downsampler, if it has one).
    """
    c = resolve_config(config)
    B, H, W = _batch_hw(c, sample_shape)
    sizes = _level_sizes(c, H, W)
    n = len(c.block_out_channels)
    out = []
    for i, (kind, ch) in enumerate(zip(c.down_block_types, c.block_out_channels)):
        if kind == "CrossAttnDownBlock2D":
            out.append((f"down_blocks.{i}.attentions.{c.layers_per_block - 1} (output)", (B, ch, *sizes[i])))
        else:
            after = sizes[i + 1] if i < n - 1 else sizes[i]
            out.append((f"down_blocks.{i} (output)", (B, ch, *after)))
    out.append(("mid_block (output)", (B, c.block_out_channels[-1], *sizes[-1])))
    return out


class SDUNet(nn.Module):
    """The Stable Diffusion UNet: conv_in → down blocks → mid block → up blocks → conv_out."""

    def __init__(self, config: UNetConfig | str = "sd15"):
        super().__init__()
        config = get_config(config)
        self.config = config
        c = config
        channels = c.block_out_channels
        n_blocks = len(channels)
        time_embed_dim = c.time_embed_dim
        common = dict(groups=c.norm_num_groups, eps=c.norm_eps)
        attn_common = dict(use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention)

        # ---- timestep -> time_emb ------------------------------------------------------
        # (B,) -> (B, 320) sinusoidal features, no parameters
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        # (B, 320) -> (B, 1280)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        if c.addition_embed_type == "text_time":
            # SDXL: (B, 6) size/crop numbers -> (B, 6·256); with text_embeds -> (B, 1280)
            self.add_time_proj = Timesteps(c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift)
            self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, time_embed_dim)
        else:
            self.add_time_proj = None
            self.add_embedding = None

        # ---- input ---------------------------------------------------------------------
        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)

        # ---- down path: block i works at width channels[i]; all but the last halve H, W --
        self.down_blocks = build_down_blocks(c)

        # ---- mid block, at the lowest resolution ---------------------------------------
        self.mid_block = build_mid_block(c)

        # ---- up path: the down path mirrored, one more ResNet per block (it takes the
        #      skip the downsampler left) -----------------------------------------------
        rev_channels = channels[::-1]
        rev_heads = c.num_attention_heads[::-1]
        rev_layers = c.transformer_layers_per_block[::-1]
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(c.up_block_types):
            out_ch = rev_channels[i]
            prev_out = rev_channels[i - 1] if i > 0 else rev_channels[0]
            # width of the down block one level further down, whose skip the last ResNet takes
            skip_in = rev_channels[min(i + 1, n_blocks - 1)]
            last = i == n_blocks - 1
            if kind == "CrossAttnUpBlock2D":
                block = CrossAttnUpBlock2D(
                    skip_in, out_ch, prev_out, time_embed_dim, c.cross_attention_dim, rev_heads[i],
                    num_layers=c.layers_per_block + 1, transformer_layers=rev_layers[i],
                    add_upsample=not last, **common, **attn_common,
                )
            else:
                block = UpBlock2D(skip_in, out_ch, prev_out, time_embed_dim, c.layers_per_block + 1, not last, **common)
            self.up_blocks.append(block)

        # ---- output --------------------------------------------------------------------
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], c.out_channels, kernel_size=3, padding=1)

    def extra_repr(self) -> str:
        return f"config={self.config.name!r}"

    @property
    def device(self) -> torch.device:
        """Where the weights are (inputs must be there too)."""
        return self.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (``sample`` and ``context`` must have it too)."""
        return self.conv_in.weight.dtype

    # ------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        context: torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None = None,
        *,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: Sequence[torch.Tensor] | None = None,
        ip_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B = self._check_inputs(sample, context, added_cond)
        # the extension points (see the module docstring): every tensor checked before any work
        self._check_controlnet_residuals(sample, down_block_additional_residuals, mid_block_additional_residual)
        self._check_intrablock_residuals(sample, down_intrablock_additional_residuals)
        if ip_tokens is not None:
            self._check_ip_tokens(sample, ip_tokens)
            # IP-Adapter: every cross-attention splits this pair again (text keys + image keys)
            context = (context, ip_tokens)

        # ---- time_emb: one vector per sample, read by every ResNet -----------------------
        # (B,)
        timesteps = timestep_batch(timestep, B, device=sample.device)
        # (B, 320), float32 -> the model's dtype
        t_features = self.time_proj(timesteps).to(sample.dtype)
        # (B, 1280)
        time_emb = self.time_embedding(t_features)
        if self.add_embedding is not None:
            # SDXL: (B, 1280 + 6·256) -> (B, 1280), added to time_emb
            add_input = text_time_input(self.add_time_proj, added_cond["text_embeds"], added_cond["time_ids"])
            time_emb = time_emb + self.add_embedding(add_input.to(time_emb.dtype))

        # ---- input -------------------------------------------------------------------------
        # (B, 4, 64, 64) -> (B, 320, 64, 64)
        h = self.conv_in(sample)
        skips = [h]

        # ---- down path: 12 skips in SD 1.5 (conv_in + 3 per block, 2 for the last) --------
        # T2I-Adapter's features, used front to back (diffusers pops them): one per down block
        intrablock = list(down_intrablock_additional_residuals or ())
        for block in self.down_blocks:
            if isinstance(block, CrossAttnDownBlock2D):
                # T2I-Adapter: added inside the block, after its last ResNet+attention pair
                extra = intrablock.pop(0) if intrablock else None
                # block 0: (B, 320, 32, 32); 1: (B, 640, 16, 16); 2: (B, 1280, 8, 8)
                h, block_skips = block(h, time_emb, context, additional_residuals=extra)
            else:
                # block 3: (B, 1280, 8, 8)
                h, block_skips = block(h, time_emb, context)
                if intrablock:
                    # T2I-Adapter on a block without attention: diffusers adds the feature to the
                    # block's output (after its downsampler, if any) in place, so the last skip —
                    # the same tensor — carries it too
                    h = h + intrablock.pop(0)
                    block_skips = (*block_skips[:-1], h)
            skips.extend(block_skips)

        if down_block_additional_residuals is not None:
            # ControlNet: skip_i + residual_i, one residual per skip (12 in SD 1.5), same shapes
            skips = [skip + residual for skip, residual in zip(skips, down_block_additional_residuals)]

        # ---- mid block ---------------------------------------------------------------------
        # (B, 1280, 8, 8)
        h = self.mid_block(h, time_emb, context)
        if intrablock:
            # T2I-Adapter-XL style: one feature more than down blocks, added after the mid block
            h = h + intrablock.pop(0)
        if mid_block_additional_residual is not None:
            # ControlNet: (B, 1280, 8, 8) + the mid residual
            h = h + mid_block_additional_residual

        # ---- up path: each block takes back as many skips as it has ResNets ----------------
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            # upsample to the size of the skip the next block concatenates first (None: last block)
            upsample_size = skips[-1].shape[-2:] if skips else None
            # block 0: (B, 1280, 16, 16); 1: (B, 1280, 32, 32); 2: (B, 640, 64, 64); 3: (B, 320, 64, 64)
            h = block(h, block_skips, time_emb, context, upsample_size)

        # ---- output ------------------------------------------------------------------------
        # (B, 320, 64, 64)
        h = self.conv_act(self.conv_norm_out(h))
        # (B, 4, 64, 64): the predicted noise
        return self.conv_out(h)

    # ---- checks of the extension points ---------------------------------------------------
    def _check_residual(self, name: str, where: str, t, expected: tuple[int, ...], sample: torch.Tensor,
                        pooled_ok: bool = False) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} ({where}) must be a tensor of shape {expected}, got {type(t).__name__}")
        # a pooled ControlNet (global_pool_conditions) hands (B, C, 1, 1): broadcast over H, W as in diffusers
        pooled = pooled_ok and tuple(t.shape) == (*expected[:2], 1, 1)
        if tuple(t.shape) != expected and not pooled:
            also = f" (or {(*expected[:2], 1, 1)}, pooled)" if pooled_ok else ""
            raise ValueError(f"{name} ({where}) must have shape {expected}{also}, got {tuple(t.shape)}")
        if t.device != sample.device or t.dtype != sample.dtype:
            raise TypeError(
                f"{name} ({where}) is {t.dtype} on {t.device} but sample is {sample.dtype} on {sample.device}"
            )

    def _check_controlnet_residuals(self, sample, down, mid) -> None:
        if down is None and mid is None:
            return
        if down is None or mid is None:
            given, missing = (
                ("down_block_additional_residuals", "mid_block_additional_residual")
                if mid is None else ("mid_block_additional_residual", "down_block_additional_residuals")
            )
            raise ValueError(
                f"{given} was given without {missing}: a ControlNet returns both (down_residuals, mid_residual). "
                "A T2I-Adapter's features go to down_intrablock_additional_residuals."
            )
        specs = skip_shapes(self.config, tuple(sample.shape))
        if isinstance(down, torch.Tensor) or not isinstance(down, Sequence):
            raise TypeError(
                f"down_block_additional_residuals must be a tuple/list of {len(specs)} tensors (one per skip), "
                f"got {type(down).__name__}"
            )
        if len(down) != len(specs):
            raise ValueError(
                f"down_block_additional_residuals has {len(down)} tensors but this UNet ({self.config.name}) has "
                f"{len(specs)} skips (conv_in + {self.config.layers_per_block} per down block + one per downsampler); "
                "was the ControlNet built for another UNet config?"
            )
        for i, ((where, shape), t) in enumerate(zip(specs, down)):
            self._check_residual(f"down_block_additional_residuals[{i}]", f"skip of {where}", t, shape, sample, True)
        where, shape = mid_shape(self.config, tuple(sample.shape))
        self._check_residual("mid_block_additional_residual", f"output of {where}", mid, shape, sample, True)

    def _check_intrablock_residuals(self, sample, residuals) -> None:
        if residuals is None:
            return
        specs = intrablock_shapes(self.config, tuple(sample.shape))
        n = len(self.down_blocks)
        if isinstance(residuals, torch.Tensor) or not isinstance(residuals, Sequence):
            raise TypeError(
                f"down_intrablock_additional_residuals must be a tuple/list of {n} tensors (one per down block, "
                f"optionally one more for the mid block), got {type(residuals).__name__}"
            )
        if len(residuals) not in (n, n + 1):
            raise ValueError(
                f"down_intrablock_additional_residuals has {len(residuals)} tensors but this UNet "
                f"({self.config.name}) takes {n} (one per down block) or {n + 1} (and one after the mid block)"
            )
        for i, ((where, shape), t) in enumerate(zip(specs, residuals)):
            self._check_residual(f"down_intrablock_additional_residuals[{i}]", f"added at {where}", t, shape, sample)

    def _check_ip_tokens(self, sample, ip_tokens) -> None:
        c = self.config
        if not isinstance(ip_tokens, torch.Tensor) or ip_tokens.ndim != 3:
            got = tuple(ip_tokens.shape) if isinstance(ip_tokens, torch.Tensor) else type(ip_tokens).__name__
            raise ValueError(
                f"ip_tokens must be a tensor (B, n_image_tokens, {c.cross_attention_dim}) from an ImageProjection, "
                f"got {got}"
            )
        if ip_tokens.shape[0] != sample.shape[0] or ip_tokens.shape[-1] != c.cross_attention_dim:
            raise ValueError(
                f"ip_tokens must have shape ({sample.shape[0]}, n_image_tokens, {c.cross_attention_dim}), "
                f"got {tuple(ip_tokens.shape)}"
            )
        if ip_tokens.device != sample.device or ip_tokens.dtype != sample.dtype:
            raise TypeError(f"ip_tokens is {ip_tokens.dtype} on {ip_tokens.device}, sample {sample.dtype} on {sample.device}")
        if not any(getattr(m, "to_k_ip", None) is not None for m in self.modules()):
            raise ValueError(
                "ip_tokens given but no cross-attention of this UNet has IP-Adapter projections (to_k_ip, to_v_ip); "
                "call unetlab.sd.ip_adapter.enable_ip_adapter(unet) or load_ip_adapter(unet, state_dict) first"
            )

    # ------------------------------------------------------------------------------------
    def _check_inputs(self, sample, context, added_cond) -> int:
        """Clear errors for the mistakes people make; returns the batch size."""
        c = self.config
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a tensor (B, {c.in_channels}, H, W), got {type(sample).__name__}")
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(
                f"sample must have shape (B, {c.in_channels}, H, W) (a latent with {c.in_channels} channels), "
                f"got {tuple(sample.shape)}"
            )
        B = sample.shape[0]
        if not isinstance(context, torch.Tensor):
            raise TypeError(
                f"context must be a tensor (B, tokens, {c.cross_attention_dim}) from the text encoder, "
                f"got {type(context).__name__}"
            )
        if context.ndim != 3:
            raise ValueError(
                f"context must have shape (B, tokens, {c.cross_attention_dim}), got {tuple(context.shape)} "
                f"({context.ndim} dims)"
            )
        if context.shape[-1] != c.cross_attention_dim:
            raise ValueError(
                f"context is {context.shape[-1]} wide but this UNet ({c.name}) expects cross_attention_dim="
                f"{c.cross_attention_dim} (SD 1.x: 768, SD 2.x: 1024, SDXL: 2048): wrong text encoder?"
            )
        if context.shape[0] != B:
            raise ValueError(f"context has batch {context.shape[0]} but sample has batch {B}")
        for name, t in (("sample", sample), ("context", context)):
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device} but the model's weights are on {self.device}")
        # every input whose dtype is not the weights' (e.g. fp32 latents into an fp16 UNet), in one error
        wrong = [f"{name} has dtype {t.dtype}" for name, t in (("sample", sample), ("context", context)) if t.dtype != self.dtype]
        if wrong:
            raise TypeError(
                f"{' and '.join(wrong)} but the model's weights are {self.dtype}: cast the inputs, "
                f"e.g. sample.to(model.dtype), context.to(model.dtype) (or the model: model.to(torch.float32))"
            )
        self._check_added_cond(added_cond, B)
        return B

    def _check_added_cond(self, added_cond, B: int) -> None:
        c = self.config
        if self.add_embedding is None:
            if added_cond is not None:
                raise ValueError(f"added_cond is for SDXL-style UNets; this one ({c.name}) takes none")
            return
        keys = ("text_embeds", "time_ids")
        if not isinstance(added_cond, dict) or set(added_cond) != set(keys):
            got = sorted(added_cond) if isinstance(added_cond, dict) else type(added_cond).__name__
            raise ValueError(
                f"this UNet ({c.name}) needs added_cond=dict(text_embeds=(B, {c.text_embeds_dim}), time_ids=(B, 6)) "
                f"(pooled text embedding; original size, crop corner, target size); got {got}"
            )
        text_embeds, time_ids = added_cond["text_embeds"], added_cond["time_ids"]
        for name, t in (("text_embeds", text_embeds), ("time_ids", time_ids)):
            if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != B:
                raise ValueError(
                    f"added_cond[{name!r}] must be a tensor of shape ({B}, n), got "
                    f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
                )
            if t.device != self.device:
                raise ValueError(f"added_cond[{name!r}] is on {t.device} but the model's weights are on {self.device}")
        width = text_embeds.shape[1] + time_ids.shape[1] * c.addition_time_embed_dim
        if width != c.projection_class_embeddings_input_dim:
            raise ValueError(
                f"text_embeds width {text_embeds.shape[1]} + {time_ids.shape[1]} time_ids × "
                f"{c.addition_time_embed_dim} = {width}, but add_embedding expects "
                f"{c.projection_class_embeddings_input_dim} (e.g. text_embeds (B, {c.text_embeds_dim}), time_ids (B, 6))"
            )
