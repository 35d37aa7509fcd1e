"""unetlab: from the textbook UNet to the Stable Diffusion UNet.

Everything is importable from the top level (``unetlab.SimpleUNet``, ``unetlab.SDUNet``,
``unetlab.trace_shapes`` …); the names are loaded lazily so that ``import unetlab``
stays fast and a chapter only pays for what it uses.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # chapter 1: the textbook UNet (study note 003 §19.3, bugs fixed)
    "SimpleUNet": "unetlab.simple_unet",
    "TimeEmbedding": "unetlab.simple_unet",
    "ResBlock": "unetlab.simple_unet",
    "DownBlock": "unetlab.simple_unet",
    "UpBlock": "unetlab.simple_unet",
    # attention (study note 003 §19.4 and the SD transformer blocks)
    "SelfAttention": "unetlab.attention",
    "AttnResBlock": "unetlab.attention",
    "Attention": "unetlab.attention",
    "attention_backend": "unetlab.attention",
    "GEGLU": "unetlab.attention",
    "FeedForward": "unetlab.attention",
    "BasicTransformerBlock": "unetlab.attention",
    "Transformer2DModel": "unetlab.attention",
    # shape tracing
    "trace_shapes": "unetlab.tracing",
    "ShapeTrace": "unetlab.tracing",
    # timestep embeddings
    "sinusoidal_embedding": "unetlab.embeddings",
    # the Stable Diffusion UNet
    "SDUNet": "unetlab.sd.unet",
    "UNetConfig": "unetlab.configs",
    "get_config": "unetlab.configs",
    "count_params": "unetlab.sd.count",
    "load_sd_unet": "unetlab.sd.load",
    "load_sd_components": "unetlab.sd.pipeline",
    "component_params": "unetlab.sd.count",
    "find_local_weights": "unetlab.sd.load",
    "default_device": "unetlab.sd.load",
    "block_table": "unetlab.sd.tables",
    "skip_table": "unetlab.sd.tables",
    "io_table": "unetlab.sd.tables",
    # chapter 7: steering the UNet (ControlNet, T2I-Adapter, IP-Adapter)
    "ControlNet": "unetlab.sd.controlnet",
    "load_controlnet": "unetlab.sd.controlnet",
    "check_compatible": "unetlab.sd.controlnet",
    "unet_with_controlnet": "unetlab.sd.controlnet",
    "T2IAdapter": "unetlab.sd.t2i_adapter",
    "ImageProjection": "unetlab.sd.ip_adapter",
    "enable_ip_adapter": "unetlab.sd.ip_adapter",
    "load_ip_adapter": "unetlab.sd.ip_adapter",
    "set_ip_adapter_scale": "unetlab.sd.ip_adapter",
    "skip_shapes": "unetlab.sd.unet",
    "intrablock_shapes": "unetlab.sd.unet",
    "adapter_params": "unetlab.sd.count",
    # attention capture
    "capture_attention": "unetlab.capture",
    "AttentionStore": "unetlab.capture",
    # the small text-to-image model (chapters 5-6)
    "WordTokenizer": "unetlab.text",
    "TextEncoder": "unetlab.text",
    "TextToImage": "unetlab.text2img",
    "load_text2img": "unetlab.text2img",
    # data, diffusion basics, checkpoints (shared by chapters 3-6)
    "make_shapes": "unetlab.data",
    "ShapesDataset": "unetlab.data",
    "NoiseSchedule": "unetlab.schedule",
    "psnr": "unetlab.schedule",
    "DDPMSampler": "unetlab.samplers",
    "DDIMSampler": "unetlab.samplers",
    "guided_eps": "unetlab.guidance",
    "load_checkpoint": "unetlab.checkpoints",
}

_SUBMODULES = {"configs", "homework", "data", "schedule", "samplers", "train", "tracing", "sd", "plots", "text", "capture", "guidance"}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'unetlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(_EXPORTS) + list(_SUBMODULES) + ["__version__"])


__all__ = list(_EXPORTS)
