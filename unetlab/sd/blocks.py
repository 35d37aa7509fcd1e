"""The SD UNet's blocks: ``DownBlock2D``, ``CrossAttnDownBlock2D``, ``UNetMidBlock2DCrossAttn``,
``UpBlock2D``, ``CrossAttnUpBlock2D`` (submodule names ``resnets``, ``attentions``,
``downsamplers``, ``upsamplers`` as in diffusers).

Every block has the same call signature, so ``SDUNet.forward`` runs them in one loop:

* down: ``h, skips = block(h, time_emb, context)``. ``skips`` holds the output of every
  ResNet(+attention) layer and of the downsampler: 3 tensors per SD 1.5 block (2 for the last).
  ``CrossAttnDownBlock2D`` also takes ``additional_residuals=`` (a T2I-Adapter feature, diffusers'
  name), added after its last ResNet+attention pair.
* mid:  ``h = block(h, time_emb, context)``.
* up:   ``h = block(h, skips, time_emb, context, upsample_size)``. Each of its
  ``layers_per_block + 1`` ResNets first concatenates one skip (the last one in ``skips``)
  to ``h`` along channels; then the upsampler doubles H, W (to ``upsample_size`` if given).

Blocks without attention accept ``context`` and ignore it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unetlab.attention import Transformer2DModel
from unetlab.sd.resnet import Downsample2D, ResnetBlock2D, Upsample2D

__all__ = [
    "DownBlock2D",
    "CrossAttnDownBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "build_down_blocks",
    "build_mid_block",
]


def _transformer(channels, heads, layers, cross_attention_dim, groups, use_linear_projection, upcast_attention):
    # heads × (channels / heads) = channels: the transformer works at the block's width
    return Transformer2DModel(
        heads,
        channels // heads,
        in_channels=channels,
        cross_attention_dim=cross_attention_dim,
        num_layers=layers,
        norm_num_groups=groups,
        use_linear_projection=use_linear_projection,
        upcast_attention=upcast_attention,
    )


def _transformers(num_layers, channels, heads, layers, cross_attention_dim, groups, use_linear_projection,
                  upcast_attention) -> nn.ModuleList:
    # one spatial transformer after each ResNet of a block
    return nn.ModuleList(
        [_transformer(channels, heads, layers, cross_attention_dim, groups, use_linear_projection, upcast_attention)
         for _ in range(num_layers)]
    )


def _down_resnets(num_layers, in_channels, out_channels, time_embed_dim, groups, eps, dropout) -> nn.ModuleList:
    # the first ResNet changes the width (in -> out), the others keep it
    return nn.ModuleList(
        [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, time_embed_dim, groups, eps, dropout)
         for i in range(num_layers)]
    )


class DownBlock2D(nn.Module):
    """``num_layers`` ResNets, then (unless last) a stride-2 downsampler."""

    def __init__(self, in_channels, out_channels, time_embed_dim, num_layers=2, add_downsample=True,
                 groups=32, eps=1e-5, dropout=0.0):
        super().__init__()
        self.resnets = _down_resnets(num_layers, in_channels, out_channels, time_embed_dim, groups, eps, dropout)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, h, time_emb, context=None):
        skips = []
        for resnet in self.resnets:
            # (B, C_out, H, W)
            h = resnet(h, time_emb)
            skips.append(h)
        if self.downsamplers is not None:
            # (B, C_out, H/2, W/2)
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, tuple(skips)


class CrossAttnDownBlock2D(nn.Module):
    """``num_layers`` × (ResNet → Transformer2DModel), then (unless last) a downsampler."""

    def __init__(self, in_channels, out_channels, time_embed_dim, cross_attention_dim, num_attention_heads,
                 num_layers=2, transformer_layers=1, add_downsample=True, groups=32, eps=1e-5, dropout=0.0,
                 use_linear_projection=False, upcast_attention=False):
        super().__init__()
        self.resnets = _down_resnets(num_layers, in_channels, out_channels, time_embed_dim, groups, eps, dropout)
        self.attentions = _transformers(num_layers, out_channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection, upcast_attention)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, h, time_emb, context, additional_residuals=None):
        """``additional_residuals`` (diffusers' name): T2I-Adapter's feature ``(B, C_out, H, W)``,
        added to the output of the last ResNet+attention pair, before it is kept as a skip and
        before the downsampler (diffusers' ``CrossAttnDownBlock2D``)."""
        skips = []
        last = len(self.resnets) - 1
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            # (B, C_out, H, W)
            h = resnet(h, time_emb)
            # (B, C_out, H, W): pixels attend to each other and to the text
            h = attn(h, context)
            if i == last and additional_residuals is not None:
                # (B, C_out, H, W) + adapter feature: the skip and the downsampler both see it
                h = h + additional_residuals
            skips.append(h)
        if self.downsamplers is not None:
            # (B, C_out, H/2, W/2)
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, tuple(skips)


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResNet → (Transformer2DModel → ResNet) × num_layers, at the lowest resolution."""

    def __init__(self, channels, time_embed_dim, cross_attention_dim, num_attention_heads, num_layers=1,
                 transformer_layers=1, groups=32, eps=1e-5, dropout=0.0, use_linear_projection=False,
                 upcast_attention=False):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, time_embed_dim, groups, eps, dropout) for _ in range(num_layers + 1)]
        )
        self.attentions = _transformers(num_layers, channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection, upcast_attention)

    def forward(self, h, time_emb, context):
        # (B, C, H, W) throughout
        h = self.resnets[0](h, time_emb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            h = attn(h, context)
            h = resnet(h, time_emb)
        return h


def _up_resnet_in_channels(i, num_layers, in_channels, out_channels, prev_output_channel):
    # what resnet i sees: h (from the block below, or its own previous resnet) + one skip.
    # The last resnet's skip comes from the down block one level further down (in_channels).
    h_channels = prev_output_channel if i == 0 else out_channels
    skip_channels = in_channels if i == num_layers - 1 else out_channels
    return h_channels + skip_channels


def _up_resnets(num_layers, in_channels, out_channels, prev_output_channel, time_embed_dim, groups, eps,
                dropout) -> nn.ModuleList:
    return nn.ModuleList(
        [ResnetBlock2D(_up_resnet_in_channels(i, num_layers, in_channels, out_channels, prev_output_channel),
                       out_channels, time_embed_dim, groups, eps, dropout)
         for i in range(num_layers)]
    )


class UpBlock2D(nn.Module):
    """``num_layers`` × (concatenate a skip → ResNet), then (unless last) an upsampler.

    ``in_channels``: width of the down block whose skips the last ResNet takes;
    ``prev_output_channel``: width of ``h`` arriving from below.
    """

    def __init__(self, in_channels, out_channels, prev_output_channel, time_embed_dim, num_layers=3,
                 add_upsample=True, groups=32, eps=1e-5, dropout=0.0):
        super().__init__()
        self.resnets = _up_resnets(num_layers, in_channels, out_channels, prev_output_channel, time_embed_dim,
                                   groups, eps, dropout)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, h, skips, time_emb, context=None, upsample_size=None):
        skips = list(skips)
        for resnet in self.resnets:
            # (B, C_h + C_skip, H, W): the skip saved last on the way down is used first
            h = torch.cat([h, skips.pop()], dim=1)
            # (B, C_out, H, W)
            h = resnet(h, time_emb)
        if self.upsamplers is not None:
            # (B, C_out, 2H, 2W)
            h = self.upsamplers[0](h, upsample_size)
        return h


class CrossAttnUpBlock2D(nn.Module):
    """``num_layers`` × (concatenate a skip → ResNet → Transformer2DModel), then an upsampler."""

    def __init__(self, in_channels, out_channels, prev_output_channel, time_embed_dim, cross_attention_dim,
                 num_attention_heads, num_layers=3, transformer_layers=1, add_upsample=True, groups=32, eps=1e-5,
                 dropout=0.0, use_linear_projection=False, upcast_attention=False):
        super().__init__()
        self.resnets = _up_resnets(num_layers, in_channels, out_channels, prev_output_channel, time_embed_dim,
                                   groups, eps, dropout)
        self.attentions = _transformers(num_layers, out_channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection, upcast_attention)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, h, skips, time_emb, context, upsample_size=None):
        skips = list(skips)
        for resnet, attn in zip(self.resnets, self.attentions):
            # (B, C_h + C_skip, H, W)
            h = torch.cat([h, skips.pop()], dim=1)
            # (B, C_out, H, W)
            h = resnet(h, time_emb)
            # (B, C_out, H, W)
            h = attn(h, context)
        if self.upsamplers is not None:
            # (B, C_out, 2H, 2W)
            h = self.upsamplers[0](h, upsample_size)
        return h


# ---- the encoder half, built from a config: shared by SDUNet and ControlNet (its trainable copy) --
def build_down_blocks(c) -> nn.ModuleList:
    """The down path of a ``UNetConfig`` ``c``: block i works at width ``c.block_out_channels[i]``;
    all but the last halve H, W. ``SDUNet.down_blocks`` and ``ControlNet.down_blocks`` are both
    built here, so the copy has exactly the UNet's modules and parameter names."""
    channels = c.block_out_channels
    common = dict(groups=c.norm_num_groups, eps=c.norm_eps)
    attn_common = dict(use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention)
    blocks = nn.ModuleList()
    for i, kind in enumerate(c.down_block_types):
        in_ch = channels[i - 1] if i > 0 else channels[0]
        last = i == len(channels) - 1
        if kind == "CrossAttnDownBlock2D":
            block = CrossAttnDownBlock2D(
                in_ch, channels[i], c.time_embed_dim, c.cross_attention_dim, c.num_attention_heads[i],
                num_layers=c.layers_per_block, transformer_layers=c.transformer_layers_per_block[i],
                add_downsample=not last, **common, **attn_common,
            )
        else:
            block = DownBlock2D(in_ch, channels[i], c.time_embed_dim, c.layers_per_block, not last, **common)
        blocks.append(block)
    return blocks


def build_mid_block(c) -> UNetMidBlock2DCrossAttn:
    """The mid block of a ``UNetConfig`` ``c``, at the lowest resolution and the last block's width."""
    return UNetMidBlock2DCrossAttn(
        c.block_out_channels[-1], c.time_embed_dim, c.cross_attention_dim, c.num_attention_heads[-1],
        transformer_layers=c.transformer_layers_per_block[-1], groups=c.norm_num_groups, eps=c.norm_eps,
        use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention,
    )
