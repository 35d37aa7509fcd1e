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

``sample`` and ``context`` must have the weights' dtype and device; bad inputs raise a
``ValueError``/``TypeError`` that says what was expected.

Meta device: ``with torch.device("meta"): model = SDUNet("sdxl")`` allocates nothing, and a
forward on meta tensors computes only shapes — instant even for SDXL.

The shape comments in ``forward`` follow SD 1.5 at a 64×64 latent (512×512 pixels), batch B.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unetlab.configs import UNetConfig, get_config
from unetlab.embeddings import timestep_batch
from unetlab.sd.blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from unetlab.sd.embeddings import TimestepEmbedding, Timesteps, text_time_input

__all__ = ["SDUNet"]


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
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(c.down_block_types):
            in_ch = channels[i - 1] if i > 0 else channels[0]
            last = i == n_blocks - 1
            if kind == "CrossAttnDownBlock2D":
                block = CrossAttnDownBlock2D(
                    in_ch, channels[i], time_embed_dim, c.cross_attention_dim, c.num_attention_heads[i],
                    num_layers=c.layers_per_block, transformer_layers=c.transformer_layers_per_block[i],
                    add_downsample=not last, **common, **attn_common,
                )
            else:
                block = DownBlock2D(in_ch, channels[i], time_embed_dim, c.layers_per_block, not last, **common)
            self.down_blocks.append(block)

        # ---- mid block, at the lowest resolution ---------------------------------------
        self.mid_block = UNetMidBlock2DCrossAttn(
            channels[-1], time_embed_dim, c.cross_attention_dim, c.num_attention_heads[-1],
            transformer_layers=c.transformer_layers_per_block[-1], **common, **attn_common,
        )

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
    ) -> torch.Tensor:
        B = self._check_inputs(sample, context, added_cond)

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
        for block in self.down_blocks:
            # block 0: (B, 320, 32, 32); 1: (B, 640, 16, 16); 2: (B, 1280, 8, 8); 3: (B, 1280, 8, 8)
            h, block_skips = block(h, time_emb, context)
            skips.extend(block_skips)

        # ---- mid block ---------------------------------------------------------------------
        # (B, 1280, 8, 8)
        h = self.mid_block(h, time_emb, context)

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
