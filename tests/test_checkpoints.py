"""Checkpoint registry: manifest, sha256 verification, architecture checks, errors that name the fix."""
import shutil

import pytest
import torch

from unetlab import cli
from unetlab.checkpoints import (
    DATA_DIR, load_checkpoint, load_weights, read_manifest, register_checkpoint, sha256_file, verify,
)
from unetlab.simple_unet import SimpleUNet
from unetlab.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A private data/ folder holding one freshly trained (3-step) checkpoint."""
    folder = tmp_path_factory.mktemp("data")
    out = folder / "simple-skips.safetensors"
    result = train("simple-skips", steps=3, batch_size=2, progress=False, out=out)
    register_checkpoint("simple-skips", out, command="python -m unetlab train simple-skips --steps 3 --batch-size 2",
                        metadata=result.metadata, data_dir=folder)
    return folder


def test_manifest_and_markdown(data_dir):
    entry = read_manifest(data_dir)["simple-skips"]
    assert entry["sha256"] == sha256_file(data_dir / "simple-skips.safetensors")
    assert entry["bytes"] == (data_dir / "simple-skips.safetensors").stat().st_size
    md = (data_dir / "CHECKPOINTS.md").read_text()
    assert entry["sha256"] in md and entry["command"] in md


def test_load_rebuilds_the_model(data_dir):
    ckpt = load_checkpoint("simple-skips", arch="SimpleUNet", config={"use_skips": True}, data_dir=data_dir)
    assert isinstance(ckpt.model, SimpleUNet) and not ckpt.model.training
    assert ckpt.metadata["steps"] == 3 and len(ckpt.metadata["loss_curve"]) == 3
    assert ckpt.model(torch.zeros(1, 3, 32, 32), 10).shape == (1, 3, 32, 32)


def test_missing_file_names_the_command(data_dir, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    (folder / "simple-skips.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="python -m unetlab train simple-skips --steps 3"):
        load_checkpoint("simple-skips", data_dir=folder)
    ok, message = verify("simple-skips", folder)
    assert not ok and "MISSING" in message


def test_corrupted_file_names_the_command(data_dir, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    path = folder / "simple-skips.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted.*python -m unetlab train simple-skips"):
        load_checkpoint("simple-skips", data_dir=folder)
    assert "CORRUPTED" in verify("simple-skips", folder)[1]
    # a truncated file without a manifest entry: still a clear error, not a crash deep in safetensors
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(bad)


def test_other_architecture_is_refused(data_dir):
    with pytest.raises(ValueError, match="use_skips=True"):
        load_checkpoint("simple-skips", config={"use_skips": False}, data_dir=data_dir)
    with pytest.raises(ValueError, match="not a SDUNet"):
        load_checkpoint("simple-skips", arch="SDUNet", data_dir=data_dir)
    with pytest.raises(ValueError, match="another architecture"):
        load_weights(SimpleUNet(3, 3, 32, use_skips=False), "simple-skips", data_dir=data_dir)
    with pytest.raises(ValueError, match="another architecture"):
        load_weights(SimpleUNet(3, 3, 16), "simple-skips", data_dir=data_dir)


def test_unknown_name():
    with pytest.raises(FileNotFoundError, match="python -m unetlab train nothing-here"):
        load_checkpoint("nothing-here")


def test_cli_lists_and_verifies(data_dir, tmp_path, capsys):
    assert cli.main(["checkpoints", "--data-dir", str(data_dir)]) == 0
    assert "simple-skips.safetensors" in capsys.readouterr().out
    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    (folder / "simple-skips.safetensors").write_bytes(b"x")
    assert cli.main(["checkpoints", "--data-dir", str(folder)]) == 1
    assert "CORRUPTED" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(read_manifest()))
def test_shipped_checkpoints_verify_and_load(name):
    ok, message = verify(name)
    assert ok, message
    ckpt = load_checkpoint(name)
    assert ckpt.metadata["recipe"] == read_manifest()[name]["recipe"]
    assert (DATA_DIR / read_manifest()[name]["file"]).exists()
