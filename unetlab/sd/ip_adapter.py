"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion
Models", arXiv:2308.06721) on :class:`unetlab.SDUNet`: an image as a prompt, next to the text.

Where the image tokens come from
    1. A **CLIP image encoder** (for the SD 1.5 IP-Adapter: OpenCLIP ViT-H/14, ``image_embeds`` of width
       1024) turns the reference image into one embedding vector ``(B, 1024)``. It is frozen and not
       part of this package: nothing here trains or downloads it; any ``(B, image_embed_dim)`` tensor
       stands in for it.
    2. :class:`ImageProjection` (diffusers' name; ``image_proj`` in IP-Adapter checkpoints) maps that
       vector to a few tokens of the text encoder's width: ``Linear(1024 -> 4·768)``, reshape to
       ``(B, 4, 768)``, LayerNorm. These are the ``ip_tokens``.
    3. Every cross-attention of the UNet gets a second key/value projection, ``to_k_ip`` / ``to_v_ip``
       (:meth:`unetlab.attention.Attention.enable_ip_adapter`); its queries attend to the text tokens
       and, separately, to the image tokens, and the two outputs are added with a weight ``ip_scale``
       (*decoupled* cross-attention). The UNet's own weights stay frozen; only steps 2 and 3 are trained
       (22.3 M parameters for SD 1.5).

API
---
``ImageProjection(image_embed_dim=1024, cross_attention_dim=768, num_image_text_embeds=4)``
    ``(B, image_embed_dim) -> (B, num_image_text_embeds, cross_attention_dim)``. Parameter names
    ``image_embeds`` (Linear) and ``norm`` as diffusers'. (Defaults: the SD 1.5 IP-Adapter's; diffusers'
    class defaults are 768, 768, 32.)
``cross_attentions(unet)``
    ``[(name, Attention), ...]`` of every cross-attention (``attn2``) in diffusers' order — down blocks, up
    blocks, mid block — the order IP-Adapter checkpoints number them (``1.to_k_ip``, ``3.to_k_ip``, …).
``enable_ip_adapter(unet, scale=1.0)`` -> number of layers changed (16 for SD 1.5)
    Like diffusers' ``_load_ip_adapter_weights`` attaching ``IPAdapterAttnProcessor2_0`` everywhere,
    with ``to_k_ip``/``to_v_ip`` copied from ``to_k``/``to_v``. Then ``unet(sample, t, context, ip_tokens=…)``.
``set_ip_adapter_scale(unet, scale)``
    ``ip_scale`` on every IP-Adapter layer (diffusers' ``pipe.set_ip_adapter_scale``); 0 switches the image off.
``load_ip_adapter(unet, state_dict, scale=1.0)`` -> ``ImageProjection``
    An original IP-Adapter state dict — ``{"image_proj": {"proj.weight", "proj.bias", "norm.weight",
    "norm.bias"}, "ip_adapter": {"1.to_k_ip.weight", "1.to_v_ip.weight", "3.to_k_ip.weight", …}}`` or the
    same flattened (``"image_proj.proj.weight"`` …, as in the ``.safetensors`` release) — into the UNet's
    cross-attentions; returns the image projection. Only the plain IP-Adapter (``proj.weight``) layout.
``ip_adapter_params(unet_or_config="sd15", image_embed_dim=1024, num_image_text_embeds=4)``
    Its parameter count, on the meta device (SD 1.5: 22,319,616).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from unetlab.attention import Attention

__all__ = [
    "ImageProjection",
    "cross_attentions",
    "enable_ip_adapter",
    "set_ip_adapter_scale",
    "load_ip_adapter",
    "ip_adapter_params",
]

# diffusers' UNet2DConditionModel registers up_blocks before mid_block: that is the checkpoints' order
_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}


class ImageProjection(nn.Module):
    """A CLIP image embedding ``(B, image_embed_dim)`` -> ``num_image_text_embeds`` tokens of the text width."""

    def __init__(self, image_embed_dim: int = 1024, cross_attention_dim: int = 768, num_image_text_embeds: int = 4):
        super().__init__()
        self.image_embed_dim = image_embed_dim
        self.cross_attention_dim = cross_attention_dim
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2 or image_embeds.shape[1] != self.image_embed_dim:
            got = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
            raise ValueError(
                f"image_embeds must have shape (B, {self.image_embed_dim}) (a CLIP image encoder's embedding), got {got}"
            )
        B = image_embeds.shape[0]
        # (B, 1024) -> (B, 4·768)
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        # (B, 4, 768): four tokens of the text encoder's width
        tokens = tokens.reshape(B, self.num_image_text_embeds, self.cross_attention_dim)
        return self.norm(tokens)


def cross_attentions(unet: nn.Module) -> list[tuple[str, Attention]]:
    """Every cross-attention of ``unet`` with its name, in diffusers' order (down, up, mid)."""
    found = [(name, m) for name, m in unet.named_modules()
             if isinstance(m, Attention) and m.is_cross_attention and name.endswith("attn2")]
    if not found:
        raise ValueError(f"{type(unet).__name__} has no cross-attention (attn2) layers")
    return sorted(found, key=lambda nm: _ORDER.get(nm[0].split(".")[0], 3))  # stable: keeps order within a part


def enable_ip_adapter(unet: nn.Module, scale: float = 1.0) -> int:
    """Give every cross-attention of ``unet`` IP-Adapter projections (copies of ``to_k``/``to_v``); returns how many."""
    layers = cross_attentions(unet)
    for _, attn in layers:
        attn.enable_ip_adapter(scale)
    return len(layers)


def set_ip_adapter_scale(unet: nn.Module, scale: float) -> None:
    """Set ``ip_scale`` on every IP-Adapter layer (``ValueError`` if none has been enabled)."""
    layers = [a for _, a in cross_attentions(unet) if a.to_k_ip is not None]
    if not layers:
        raise ValueError("no IP-Adapter layers: call enable_ip_adapter(unet) or load_ip_adapter(unet, ...) first")
    for attn in layers:
        attn.ip_scale = float(scale)


def _nested(state_dict: Mapping[str, Any]) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    if "image_proj" in state_dict and "ip_adapter" in state_dict:
        return state_dict["image_proj"], state_dict["ip_adapter"]
    image_proj = {k[len("image_proj."):]: v for k, v in state_dict.items() if k.startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter."):]: v for k, v in state_dict.items() if k.startswith("ip_adapter.")}
    if not image_proj or not ip_adapter:
        raise ValueError(
            "expected an IP-Adapter state dict {'image_proj': {...}, 'ip_adapter': {...}} (or flattened "
            f"'image_proj.*' / 'ip_adapter.*' keys), got keys {list(state_dict)[:5]}"
        )
    return image_proj, ip_adapter


def load_ip_adapter(unet: nn.Module, state_dict: Mapping[str, Any], scale: float = 1.0) -> ImageProjection:
    """Load an original (plain) IP-Adapter into ``unet``'s cross-attentions; returns its ``ImageProjection``.

    Cross-attention j (0-based, diffusers' order) takes ``ip_adapter["{2j+1}.to_k_ip.weight"]`` and
    ``["{2j+1}.to_v_ip.weight"]`` (the checkpoint numbers every attention, self (even) and cross (odd)).
    Raises ``ValueError`` for a missing key, a wrong shape or another IP-Adapter variant.
    """
    image_proj, ip_adapter = _nested(state_dict)
    if "proj.weight" not in image_proj:
        raise ValueError(
            "only the plain IP-Adapter (image_proj 'proj.weight') is supported here; got image_proj keys "
            f"{sorted(image_proj)[:5]} (Plus / FaceID / Full-face variants use other projections)"
        )
    layers = cross_attentions(unet)
    expected = {f"{2 * j + 1}.{p}.weight" for j in range(len(layers)) for p in ("to_k_ip", "to_v_ip")}
    missing, extra = sorted(expected - set(ip_adapter)), sorted(set(ip_adapter) - expected)
    if missing or extra:
        raise ValueError(
            f"this UNet has {len(layers)} cross-attentions; the IP-Adapter state dict has "
            f"{len(ip_adapter)} keys (missing {missing[:4]}, unexpected {extra[:4]}): an IP-Adapter for another model?"
        )
    proj = image_proj["proj.weight"]
    w = next(unet.parameters())
    cross_dim = layers[0][1].cross_attention_dim
    if proj.shape[0] % cross_dim:
        raise ValueError(f"image_proj proj.weight {tuple(proj.shape)} does not make tokens of width {cross_dim}")
    projection = ImageProjection(proj.shape[1], cross_dim, proj.shape[0] // cross_dim).to(w.device, w.dtype)
    projection.load_state_dict({k.replace("proj", "image_embeds", 1) if k.startswith("proj") else k: v
                                for k, v in image_proj.items()}, strict=True)
    for j, (name, attn) in enumerate(layers):
        attn.enable_ip_adapter(scale, copy_text_projections=False)
        for p in ("to_k_ip", "to_v_ip"):
            tensor = ip_adapter[f"{2 * j + 1}.{p}.weight"]
            target = getattr(attn, p).weight
            if tensor.shape != target.shape:
                raise ValueError(f"{2 * j + 1}.{p}.weight is {tuple(tensor.shape)} but {name}.{p} needs {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(tensor)
    return projection.eval()


def ip_adapter_params(unet_or_config: Any = "sd15", image_embed_dim: int = 1024, num_image_text_embeds: int = 4) -> int:
    """Parameters an IP-Adapter adds to a UNet: ``to_k_ip`` + ``to_v_ip`` everywhere + ``ImageProjection``."""
    # built here, not with unetlab.sd.count.meta_unet: count imports this module (imports point one way)
    from unetlab.configs import resolve_config
    from unetlab.sd.unet import SDUNet

    if isinstance(unet_or_config, nn.Module):
        unet = unet_or_config
    else:
        # shapes without storage (instant for SDXL)
        with torch.device("meta"):
            unet = SDUNet(resolve_config(unet_or_config))
    total = 0
    for _, attn in cross_attentions(unet):
        # two (cross_attention_dim -> inner_dim) matrices, no bias
        total += 2 * attn.cross_attention_dim * attn.inner_dim
    cross_dim = cross_attentions(unet)[0][1].cross_attention_dim
    with torch.device("meta"):
        projection = ImageProjection(image_embed_dim, cross_dim, num_image_text_embeds)
    return total + sum(p.numel() for p in projection.parameters())
