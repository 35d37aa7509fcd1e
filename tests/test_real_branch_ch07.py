"""Chapter 7's real-weights cell, proven offline on a tiny random pipeline and a tiny random ControlNet.

The pipeline is d-realsd's ``save_random_pipeline("tiny")`` (6 latent channels, VAE factor 4, 16×16
latents, context width 32, v-prediction — nothing like SD 1.5); the ControlNet is made for its UNet
(``ControlNet.from_unet``, zero convolutions perturbed so that it changes something, a 3-stride-level
conditioning embedding of factor 4 = the VAE's) and saved by diffusers' own ``ControlNetModel.save_pretrained``.
Chapter 7 is executed into a copy with ``UNETLAB_SD_WEIGHTS`` and ``UNETLAB_CONTROLNET`` set
(``benchmarks/gpu_check.check_real_chapters``): the real cell must load both, say so, draw one image,
raise nothing, and every other compared cell must give its stored output.
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "07_controlnet_adapters.ipynb"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_tiny_controlnet(pipeline: Path, folder: Path) -> Path:
    from diffusers import ControlNetModel

    from unetlab import ControlNet
    from unetlab.sd.load import load_sd_unet

    unet = load_sd_unet(pipeline / "unet")
    torch.manual_seed(0)
    # factor 2 ** (3 - 1) = 4, the tiny VAE's scale factor: the control image is as big as the decoded image
    cn = ControlNet.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=(8, 16, 32))
    with torch.no_grad():
        for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters(),
                  *cn.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, 0.02)
    reference = ControlNetModel(**cn.to_diffusers())
    reference.load_state_dict(cn.state_dict(), strict=True)
    reference.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_chapter7_real_cell_runs_with_a_tiny_pipeline_and_controlnet(tmp_path, monkeypatch):
    from unetlab.sd.pipeline import no_weights_message
    from unetlab.sd.random_pipeline import save_random_pipeline

    pipeline = save_random_pipeline(tmp_path / "random-tiny", "tiny")
    controlnet = _save_tiny_controlnet(pipeline, tmp_path / "controlnet-tiny")
    assert (controlnet / "config.json").is_file() and (controlnet / "diffusion_pytorch_model.safetensors").is_file()
    monkeypatch.setenv("UNETLAB_CONTROLNET", str(controlnet))
    monkeypatch.setenv("UNETLAB_DEVICE", "cpu")
    before = (ROOT / "notebooks" / CHAPTER).read_bytes()
    results = _gpu_check().check_real_chapters(pipeline, chapters=(CHAPTER,), out_dir=tmp_path / "executed")
    assert (ROOT / "notebooks" / CHAPTER).read_bytes() == before, "the stored notebook was modified"
    r = results[CHAPTER]
    assert r["real_cells"] == 1
    assert not r["errors"], r["errors"]
    assert not r["mismatches"], r["mismatches"]
    text = r["text"]
    assert no_weights_message().splitlines()[2] not in text and "no ControlNet" not in text
    assert f"weights: {pipeline.resolve()} (pipeline)" in text
    # the ControlNet was loaded through unetlab.ControlNet, with the sizes of its config
    assert f"ControlNet: {controlnet}" in text and "3 control channels, factor 4" in text
    assert r["images"] == 1

    # the stored notebook keeps the no-weights note in that cell
    stored = nbformat.read(ROOT / "notebooks" / CHAPTER, as_version=4)
    cell = next(c for c in stored.cells if c.cell_type == "code" and "find_sd_weights()" in c.source)
    assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT")
    assert "".join(o.get("text", "") for o in cell.outputs).startswith(no_weights_message())
