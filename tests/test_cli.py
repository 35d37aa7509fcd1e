"""The command line: ``python -m unetlab --help`` and ``python -m unetlab trace simple``."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from unetlab import trace_command
from unetlab.simple_unet import SimpleUNet


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "unetlab", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_trace():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "trace" in result.stdout and "usage" in result.stdout


def test_no_command_prints_help():
    result = run_cli()
    assert result.returncode == 0 and "trace" in result.stdout


def test_trace_simple_prints_the_table():
    result = run_cli("trace", "simple")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    model = SimpleUNet()
    # a header, one row per module, a total
    assert sum(1 for line in lines if line.split() and line.split()[0] in dict(model.named_modules())) == len(
        [n for n, _ in model.named_modules() if n]
    )
    up1_res = next(line for line in lines if line.startswith("up1.res "))
    assert "(2, 192, 32, 32), (2, 256)" in up1_res and "(2, 64, 32, 32)" in up1_res
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in result.stdout


def test_trace_simple_options():
    result = run_cli("trace", "simple", "--depth", "1", "--batch", "3", "--size", "32", "--no-skips")
    assert result.returncode == 0, result.stderr
    assert "down1.res" not in result.stdout
    up1 = next(line for line in result.stdout.splitlines() if line.startswith("up1 "))
    # no skips: up1 gets only the bottleneck output (B, 2C, H/4, W/4), skip=None and the time_emb
    assert "(3, 128, 8, 8), None, (3, 256)" in up1 and "(3, 64, 16, 16)" in up1
    assert "use_skips=False" in result.stdout


def test_trace_simple_bad_size_says_why():
    result = run_cli("trace", "simple", "--size", "30")
    assert result.returncode == 1
    assert "multiples of 4" in result.stdout


def test_trace_unknown_model_is_an_argparse_error():
    result = run_cli("trace", "resnet")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_sd_models_without_tables_module_give_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "unetlab.sd.tables", None)  # import fails
    args = argparse.Namespace(model="sd15", depth=None, filter=None, batch=None, size=None)
    assert trace_command.cli_run(args) == 1
    assert "unetlab.sd.tables" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["sd15", "tiny"])
def test_sd_models_are_delegated(monkeypatch, model):
    seen = []
    fake = type(sys)("unetlab.sd.tables")
    fake.cli_trace = lambda args: seen.append(args.model) or 0
    monkeypatch.setitem(sys.modules, "unetlab.sd.tables", fake)
    args = argparse.Namespace(model=model, depth=None, filter=None, batch=None, size=None)
    assert trace_command.cli_run(args) == 0 and seen == [model]
