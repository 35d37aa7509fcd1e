"""SD 1.5 UNet forward: unetlab's SDUNet against diffusers' UNet2DConditionModel, same weights, one process.

    python benchmarks/bench_unet.py                       # CPU, fp32, batch 1
    python benchmarks/bench_unet.py --device cuda --dtype fp16 bf16 --batch 1 2 8 --channels-last both --compile both

For every setting the two models run interleaved after warm-up; the table gives the median
time of each, the ratio unetlab/diffusers (below 1 means unetlab is faster), achieved TFLOP/s
against the FLOPs one forward costs (counted by torch's FlopCounterMode on the meta device),
and on CUDA the peak memory of each model's forward.
"""
from __future__ import annotations

import argparse
import gc
import itertools

import torch

from common import header, interleaved_medians, save, unet_flops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_pair(config_name: str, device: str, dtype: torch.dtype, seed: int = 0):
    """diffusers' UNet with random weights, and our SDUNet holding the very same weights."""
    from diffusers import UNet2DConditionModel

    from unetlab import SDUNet
    from unetlab.configs import PRESETS

    config = PRESETS[config_name]
    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**config.to_diffusers()).eval()
    ours = SDUNet(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return config, ours.to(device, dtype), reference.to(device, dtype)


def inputs(config, batch: int, latent: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, config.in_channels, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=g).to(device, dtype)
    timestep = torch.full((batch,), 500, device=device)
    return sample, timestep, context


def peak_memory(fn, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sd15")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES))
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--latent", type=int, default=64, help="latent height = width (64 for 512x512 images)")
    p.add_argument("--channels-last", choices=["off", "on", "both"], default="off")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--save", help="append the table to this Markdown file")
    args = p.parse_args()

    pick = lambda choice: {"off": [False], "on": [True], "both": [False, True]}[choice]
    rows = []
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        config, ours, reference = build_pair(args.config, args.device, dtype)
        for batch, channels_last, compiled in itertools.product(args.batch, pick(args.channels_last), pick(args.compile)):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            ours.to(memory_format=fmt)
            reference.to(memory_format=fmt)
            sample, timestep, context = inputs(config, batch, args.latent, args.device, dtype)
            sample = sample.contiguous(memory_format=fmt)
            run_ours = torch.compile(ours) if compiled else ours
            run_ref = torch.compile(reference) if compiled else reference

            @torch.inference_mode()
            def f_ours():
                return run_ours(sample, timestep, context)

            @torch.inference_mode()
            def f_ref():
                return run_ref(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

            # FLOPs of one forward (compiling changes the kernels, not the arithmetic)
            flops = unet_flops(config, batch, args.latent)
            medians = interleaved_medians(
                {"unetlab": f_ours, "diffusers": f_ref}, device=args.device, warmup=args.warmup, repeats=args.repeats
            )
            rows.append(
                dict(
                    dtype=dtype_name, batch=batch, channels_last=channels_last, compiled=compiled, flops=flops,
                    ours=medians["unetlab"], ref=medians["diffusers"],
                    mem_ours=peak_memory(f_ours, args.device), mem_ref=peak_memory(f_ref, args.device),
                )
            )
            print(rows[-1], flush=True)
        del ours, reference
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    lines = [
        header(f"{args.config.upper()} UNet forward, {args.latent}×{args.latent} latent, unetlab vs diffusers", args.device),
        "| dtype | batch | channels_last | compile | GFLOP/forward | unetlab s | diffusers s | ratio unetlab/diffusers | unetlab TFLOP/s | diffusers TFLOP/s | peak GiB unetlab / diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mem = "n/a (CPU)" if r["mem_ours"] is None else f"{r['mem_ours']:.2f} / {r['mem_ref']:.2f}"
        lines.append(
            f"| {r['dtype']} | {r['batch']} | {'on' if r['channels_last'] else 'off'} | {'on' if r['compiled'] else 'off'} "
            f"| {r['flops'] / 1e9:.0f} | {r['ours']:.4f} | {r['ref']:.4f} | {r['ours'] / r['ref']:.3f} "
            f"| {r['flops'] / r['ours'] / 1e12:.2f} | {r['flops'] / r['ref'] / 1e12:.2f} | {mem} |"
        )
    save("\n".join(lines) + "\n", args.save)


if __name__ == "__main__":
    main()
