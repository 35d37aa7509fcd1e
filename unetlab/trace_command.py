"""The ``trace`` command: ``python -m unetlab trace simple|sd15|sd21|sdxl|tiny``.

``simple`` traces chapter 1's :class:`unetlab.simple_unet.SimpleUNet` with
:func:`unetlab.tracing.trace_shapes` and prints one row per module call; the SD names print the
io, block and skip tables of :mod:`unetlab.sd.tables` (meta device, shapes only). The command has
its own module because it sits on top of both: ``tracing`` <- ``sd.tables`` <- this module
<- ``unetlab.cli``, so neither of the two imports the other's command code.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .tracing import trace_shapes

__all__ = ["MODEL_CHOICES", "cli_add_arguments", "cli_run"]


MODEL_CHOICES = ("simple", "sd15", "sd21", "sdxl", "tiny")


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m unetlab trace``."""
    parser.add_argument("model", choices=MODEL_CHOICES,
                        help="simple: chapter 1's SimpleUNet; sd15/sd21/sdxl/tiny: the Stable Diffusion UNet (meta device)")
    parser.add_argument("--depth", type=int, default=None, help="show modules at most this deep (model = 0)")
    parser.add_argument("--filter", default=None, help="glob on module path or class name, e.g. 'up1.*' or 'ResBlock'")
    parser.add_argument("--batch", type=int, default=None, help="batch size (simple: 2)")
    parser.add_argument("--size", type=int, default=None, help="latent height = width (simple: 64)")
    parser.add_argument("--base-channels", type=int, default=64, help="simple only: base_channels (64)")
    parser.add_argument("--no-skips", action="store_true", help="simple only: build SimpleUNet(use_skips=False)")


def cli_run(args: argparse.Namespace) -> int:
    """Print the shape table of the model named in ``args.model``."""
    if args.model != "simple":
        try:
            from unetlab.sd.tables import cli_trace
        except ImportError as exc:
            print(f"error: tracing {args.model} needs unetlab.sd.tables, which could not be imported ({exc})",
                  file=sys.stderr)
            return 1
        return int(cli_trace(args) or 0)

    from unetlab.simple_unet import SimpleUNet

    batch = 2 if args.batch is None else args.batch
    size = 64 if args.size is None else args.size
    if batch < 1 or size < 1:
        raise ValueError(f"--batch and --size must be >= 1, got {batch} and {size}")
    model = SimpleUNet(in_channels=4, out_channels=4, base_channels=args.base_channels, use_skips=not args.no_skips)
    # shapes only: the meta device computes them without memory or time
    model = model.to("meta")
    x = torch.empty(batch, 4, size, size, device="meta")
    timestep = torch.zeros(batch, dtype=torch.long, device="meta")
    trace = trace_shapes(model, x, timestep, depth=args.depth, filter=args.filter)
    print(f"SimpleUNet(in_channels=4, out_channels=4, base_channels={args.base_channels}, "
          f"use_skips={not args.no_skips}), x {tuple(x.shape)}, timestep {tuple(timestep.shape)}")
    print(trace)
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    if not trace.ok:
        return 1
    return 0
