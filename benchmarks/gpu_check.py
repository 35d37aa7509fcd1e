"""Everything the course promises for a GPU, checked in one offline command (< 10 minutes on one H200).

    python benchmarks/gpu_check.py --save benchmarks/RESULTS.md      # on a CUDA machine
    python benchmarks/gpu_check.py --tiny                            # the same steps on a tiny pipeline, CPU, ~2 min

Steps (each result is printed; with --save the section is appended to RESULTS.md):

1. Build a random Stable Diffusion pipeline in diffusers layout on disk
   (``unetlab.sd.random_pipeline.save_random_pipeline``): full-size SD 1.5 (unet, vae, CLIP text
   encoder, a tokenizer from a written vocabulary, scheduler), or the tiny one with ``--tiny``.
2. Parity of ``SDUNet`` against diffusers' ``UNet2DConditionModel`` holding the same weights, in fp16
   and bf16 (fp32 and bf16 on a CPU): each one's largest error against an fp32 reference, and the
   difference between the two.
3. The CUDA rows of RESULTS.md: ``bench_unet.py`` (fp16, bf16 × batch 1, 2, 8 × channels_last; torch.compile
   at batch 2) and ``bench_capture.py``. On a CPU (``--tiny``) one tiny row, so the script cannot rot.
4. Chapters 2, 5 and 6 executed with ``UNETLAB_SD_WEIGHTS`` pointing at the pipeline (into temporary
   copies; the stored notebooks are never written): every real-weights cell must run its real
   branch (no "no weights" note, no error; chapter 5 and 6 cells draw images), and every other
   compared cell must give its stored output, as nbval checks it.

``check_real_chapters(weights, chapters)`` is also used by ``tests/test_real_branch.py``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import header, save  # noqa: E402

CHAPTERS = ("02_sd_unet.ipynb", "05_attention.ipynb", "06_denoising_loop.ipynb")
# a real-weights cell is recognised by this call in its source
REAL_CELL_MARK = "find_sd_weights()"
# nbval's comparison: output keys it never compares, and the course's sanitize rules
_SKIP_KEYS = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
              "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}
_SANITIZE = [(re.compile(r"at 0x[0-9a-fA-F]+"), "at 0xADDRESS")]


# ---- step 4: the chapters on real weights ---------------------------------------------------------
def _flatten(outputs) -> dict[str, list[str]]:
    """nbval's view of a cell's outputs: {key or MIME type: [sanitized values]}, streams merged per name."""
    merged = []
    for out in outputs:
        if out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                and merged[-1].get("name") == out.get("name"):
            merged[-1] = dict(merged[-1], text=merged[-1]["text"] + out["text"])
        else:
            merged.append(dict(out))
    flat: dict[str, list[str]] = defaultdict(list)
    for out in merged:
        if out.get("name") == "stderr":  # nbval drops stderr unless asked to compare it
            continue
        for key, value in out.items():
            if key in _SKIP_KEYS:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for k, v in items:
                if k in _SKIP_KEYS:
                    continue
                text = "".join(v) if isinstance(v, list) else str(v)
                for pattern, repl in _SANITIZE:
                    text = pattern.sub(repl, text)
                flat[k].append(text)
    return dict(flat)


def _ignored(source: str) -> bool:
    first = source.lstrip().splitlines()[:1]
    return bool(first) and any(m in first[0] for m in ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_RAISES_EXCEPTION"))


def check_real_chapters(weights: str | os.PathLike, chapters=CHAPTERS, out_dir: str | os.PathLike | None = None,
                        timeout: int = 600) -> dict[str, dict]:
    """Execute ``chapters`` with ``UNETLAB_SD_WEIGHTS=weights``; report what each real cell did.

    Returns ``{chapter: {"seconds", "real_cells", "text", "images", "errors", "mismatches"}}``:
    ``real_cells`` the number of real-weights cells, ``text`` their stdout, ``images`` how many
    image/png outputs they made, ``errors`` error outputs anywhere, ``mismatches`` compared cells
    whose output differs from the stored one. Executed copies go to ``out_dir`` (default: a temp folder).
    """
    import nbformat
    from nbclient import NotebookClient

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="unetlab-real-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("UNETLAB_SD_WEIGHTS", "HF_HUB_OFFLINE", "MPLBACKEND", "PYTHONPATH")}
    os.environ.update(UNETLAB_SD_WEIGHTS=str(weights), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    # the kernel imports this checkout's unetlab
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    results = {}
    try:
        for name in chapters:
            stored = nbformat.read(ROOT / "notebooks" / name, as_version=4)
            nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": str(ROOT / "notebooks")}})
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
            nbformat.write(nb, out_dir / name)
            report = dict(seconds=seconds, real_cells=0, text="", images=0, errors=[], mismatches=[])
            for i, (cell, ref) in enumerate(zip(nb.cells, stored.cells)):
                if cell.cell_type != "code":
                    continue
                for out in cell.outputs:
                    if out.output_type == "error" and "NBVAL_RAISES_EXCEPTION" not in cell.source:
                        report["errors"].append(f"cell {i}: {out.ename}: {out.evalue}")
                if REAL_CELL_MARK in cell.source:
                    report["real_cells"] += 1
                    report["text"] += "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
                    report["images"] += sum("image/png" in o.get("data", {}) for o in cell.outputs)
                elif not _ignored(cell.source) and _flatten(cell.outputs) != _flatten(ref.outputs):
                    report["mismatches"].append(f"cell {i}: {cell.source.splitlines()[0][:60]!r}")
            results[name] = report
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return results


def real_branch_problems(results: dict[str, dict], weights) -> list[str]:
    """Everything that shows a real cell did not run its real branch, or the chapter changed."""
    from unetlab.sd.pipeline import no_weights_message

    note = no_weights_message().splitlines()[2]
    problems = []
    for name, r in results.items():
        if r["real_cells"] != 1:
            problems.append(f"{name}: {r['real_cells']} real-weights cells (expected 1)")
        if note in r["text"] or "skipped" in r["text"].lower():
            problems.append(f"{name}: the real cell printed the no-weights note")
        if f"weights: {Path(weights).resolve()}" not in r["text"]:
            problems.append(f"{name}: the real cell did not say it loaded {weights}")
        if name != "02_sd_unet.ipynb" and r["images"] < 1:
            problems.append(f"{name}: the real cell drew no image")
        problems += [f"{name}: {e}" for e in r["errors"]]
        problems += [f"{name}: output differs from the stored one: {m}" for m in r["mismatches"]]
    return problems


# ---- step 2: parity ------------------------------------------------------------------------------
@torch.no_grad()
def parity(pipeline: Path, device: str, dtypes: list[torch.dtype]) -> list[dict]:
    """SDUNet vs diffusers' UNet from ``pipeline/unet``, both loaded from disk in each dtype.

    Errors are the largest |difference| from diffusers in float32, divided by that output's largest |value|.
    """
    import json

    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from unetlab.sd.load import load_sd_unet

    # no 'install accelerate' / 'casting with to()' notices in the report
    diffusers_logging.set_verbosity_error()

    def reference(dtype):
        return UNet2DConditionModel.from_pretrained(pipeline / "unet").to(device, dtype).eval()

    exact_model = reference(torch.float32)
    config = exact_model.config
    tokens = json.loads((pipeline / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
    g = torch.Generator().manual_seed(0)
    # (2, C, h, w) latents at the trained size, (2, tokens, width) context, two timesteps
    sample = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, generator=g).to(device)
    context = torch.randn(2, tokens, config.cross_attention_dim, generator=g).to(device)
    t = torch.tensor([999, 20], device=device)
    exact = exact_model(sample, t, encoder_hidden_states=context).sample.float()
    del exact_model
    scale = exact.abs().max().item()
    rows = []
    for dtype in dtypes:
        ours = load_sd_unet(pipeline / "unet", device=device, dtype=dtype)
        a = ours(sample.to(dtype), t, context.to(dtype)).float()
        del ours
        theirs = reference(dtype)
        b = theirs(sample.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
        del theirs
        rows.append(dict(dtype=str(dtype).replace("torch.", ""), ours=(a - exact).abs().max().item() / scale,
                         diffusers=(b - exact).abs().max().item() / scale, between=(a - b).abs().max().item() / scale,
                         finite=bool(torch.isfinite(a).all())))
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- the whole check -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny pipeline on this machine's device (CPU: ~2 minutes)")
    p.add_argument("--work", help="folder for the pipeline and the executed notebooks (default: a temp folder)")
    p.add_argument("--skip-bench", action="store_true", help="leave out step 3")
    p.add_argument("--save", help="append the results to this Markdown file (e.g. benchmarks/RESULTS.md)")
    args = p.parse_args(argv)

    from unetlab.sd.random_pipeline import save_random_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = "tiny" if args.tiny or device == "cpu" else "sd15"
    work = Path(args.work or tempfile.mkdtemp(prefix="unetlab-gpu-check-"))
    lines = [header(f"GPU check: random {size} pipeline, parity, chapters 2, 5, 6 on it", device)]
    failures: list[str] = []

    # 1. the pipeline
    start = time.perf_counter()
    pipeline = work / f"random-{size}"
    if not (pipeline / "model_index.json").is_file():
        save_random_pipeline(pipeline, size)
    lines.append(f"1. random {size} pipeline in diffusers layout: {time.perf_counter() - start:.0f} s, {pipeline}\n")

    # 2. parity
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32, torch.bfloat16]
    rows = parity(pipeline, device, dtypes)
    lines += ["2. SDUNet vs diffusers, same weights, batch 2; largest |error| / largest |output|, against diffusers in fp32:\n",
              "| dtype | unetlab | diffusers | unetlab − diffusers | finite |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['ours']:.2e} | {r['diffusers']:.2e} | {r['between']:.2e} | {r['finite']} |")
        # unetlab may not be clearly worse than diffusers at the same precision
        if not r["finite"] or r["ours"] > 2 * r["diffusers"] + 1e-5:
            failures.append(f"parity {r['dtype']}: unetlab error {r['ours']:.2e} vs diffusers {r['diffusers']:.2e}")
    lines.append("")

    # 3. benchmarks (their own sections, appended by the scripts)
    if not args.skip_bench:
        py = sys.executable
        save_args = ["--save", args.save] if args.save else []
        if device == "cuda":
            commands = [
                [py, "benchmarks/bench_unet.py", "--device", "cuda", "--dtype", "fp16", "bf16", "--batch", "1", "2", "8",
                 "--channels-last", "both", "--warmup", "2", "--repeats", "5"],
                [py, "benchmarks/bench_unet.py", "--device", "cuda", "--dtype", "fp16", "--batch", "2",
                 "--compile", "on", "--warmup", "3", "--repeats", "5"],
                [py, "benchmarks/bench_capture.py", "--device", "cuda", "--dtype", "fp16", "--batch", "2"],
            ]
        else:  # one tiny row: proves the scripts still run
            commands = [[py, "benchmarks/bench_unet.py", "--config", "tiny", "--latent", "16", "--warmup", "0",
                         "--repeats", "1"]]
        for command in commands:
            done = subprocess.run(command + save_args, cwd=ROOT, capture_output=True, text=True)
            status = "ok" if done.returncode == 0 else f"failed ({done.returncode}): {done.stderr.strip()[-300:]}"
            lines.append(f"3. `{' '.join(Path(c).name if c == py else c for c in command)}`: {status}")
            if done.returncode:
                failures.append(f"benchmark {command[1]} failed")
        lines.append("")

    # 4. the chapters on this pipeline
    results = check_real_chapters(pipeline, out_dir=work / "executed")
    problems = real_branch_problems(results, pipeline)
    failures += problems
    lines += ["4. chapters with UNETLAB_SD_WEIGHTS set to the pipeline:\n",
              "| notebook | wall s | real cells | images drawn | other cells as stored |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {r['seconds']:.1f} | {r['real_cells']} | {r['images']} | "
                     f"{'yes' if not r['mismatches'] and not r['errors'] else 'NO'} |")
    lines.append("")
    lines.append("Result: " + ("all checks passed" if not failures else "FAILED:\n" + "\n".join(f"- {f}" for f in failures)))
    save("\n".join(lines) + "\n", args.save)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
