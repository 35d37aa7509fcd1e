"""Cost of recording attention: a forward under ``capture_attention`` against a plain forward.

    python benchmarks/bench_capture.py                         # SD 1.5, 64×64 latent, CPU fp32
    python benchmarks/bench_capture.py --config tiny --latent 32

Runs interleaved after warm-up: plain forward; capture of cross-attention only; capture of
self- and cross-attention (self-attention bounded by ``--max-resolution``). Target: cross-only
capture costs at most 1.3× the plain forward.
"""
from __future__ import annotations

import argparse

import torch

from common import header, interleaved_medians, save

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sd15")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--max-resolution", type=int, default=32 * 32, help="largest self-attention query grid recorded")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--save")
    args = p.parse_args()

    from unetlab import SDUNet, capture_attention
    from unetlab.configs import PRESETS

    config = PRESETS[args.config]
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = SDUNet(config).eval().to(args.device, dtype)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(args.batch, config.in_channels, args.latent, args.latent, generator=g).to(args.device, dtype)
    context = torch.randn(args.batch, 77, config.cross_attention_dim, generator=g).to(args.device, dtype)

    @torch.inference_mode()
    def plain():
        return model(sample, 500, context)

    @torch.inference_mode()
    def cross():
        with capture_attention(model, kind="cross") as store:
            model(sample, 500, context)
        return store

    @torch.inference_mode()
    def both():
        with capture_attention(model, kind="both", max_resolution=args.max_resolution) as store:
            model(sample, 500, context)
        return store

    medians = interleaved_medians(
        {"plain": plain, "cross": cross, "both": both}, device=args.device, warmup=args.warmup, repeats=args.repeats
    )
    lines = [
        header(f"Attention capture overhead, {args.config.upper()} at {args.latent}×{args.latent}, {args.dtype}, batch {args.batch}", args.device),
        "| forward | median s | / plain |",
        "| --- | --- | --- |",
        f"| plain | {medians['plain']:.4f} | 1.000 |",
        f"| capture cross-attention | {medians['cross']:.4f} | {medians['cross'] / medians['plain']:.3f} |",
        f"| capture self (≤ {args.max_resolution} queries) + cross | {medians['both']:.4f} | {medians['both'] / medians['plain']:.3f} |",
    ]
    save("\n".join(lines) + "\n", args.save)


if __name__ == "__main__":
    main()
