"""trace_shapes: one row per module call, depth/filter, nested in/outputs, failures, meta device."""
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn

from unetlab import note003
from unetlab.simple_unet import ResBlock, SimpleUNet
from unetlab.tracing import ShapeTrace, TraceRow, trace_shapes


@pytest.fixture(scope="module")
def simple_trace():
    torch.manual_seed(0)
    model = SimpleUNet(base_channels=16)
    return model, trace_shapes(model, torch.randn(2, 4, 32, 32), torch.tensor([1, 2]))


def test_one_row_per_module_in_call_order(simple_trace):
    model, trace = simple_trace
    assert isinstance(trace, ShapeTrace) and trace.ok and trace.error is None and trace.failed_module is None
    assert all(isinstance(row, TraceRow) for row in trace)
    # every module of SimpleUNet runs exactly once; a parent comes before its children
    assert sorted(row.path for row in trace) == sorted(name for name, _ in model.named_modules())
    paths = [row.path for row in trace]
    assert paths[0] == "" and paths[1] == "time_embed"
    assert paths.index("down1") < paths.index("down1.res") < paths.index("down1.res.conv1") < paths.index("down1.down")
    assert paths.index("bottleneck") < paths.index("up1") < paths.index("up2") < paths.index("out")
    assert [row.index for row in trace] == list(range(len(trace)))
    assert all(row.status == "ok" and row.call == 1 for row in trace)


def test_shapes_params_and_depth_of_rows(simple_trace):
    model, trace = simple_trace
    rows = {row.path: row for row in trace}
    assert rows[""].input_shapes == [(2, 4, 32, 32), (2,)] and rows[""].output_shapes == [(2, 4, 32, 32)]
    assert rows["down1"].output_shapes == [(2, 16, 16, 16), (2, 16, 32, 32)]
    assert rows["up1.res"].input_shapes == [(2, 48, 16, 16), (2, 64)]
    assert rows["time_embed"].output_shapes == [(2, 64)]
    assert rows["down1.res.conv1"].params == sum(p.numel() for p in model.down1.res.conv1.parameters())
    assert rows["down1"].params == 0
    assert rows["down1"].params_total == sum(p.numel() for p in model.down1.parameters())
    assert rows[""].params_total == sum(p.numel() for p in model.parameters())
    assert (rows[""].depth, rows["up1"].depth, rows["up1.res"].depth, rows["up1.res.conv1"].depth) == (0, 1, 2, 3)


def test_records_are_plain_dicts(simple_trace):
    _, trace = simple_trace
    records = trace.records()
    assert len(records) == len(trace)
    assert records[0]["path"] == "" and records[0]["cls"] == "SimpleUNet"
    assert set(records[0]) >= {"path", "cls", "input_shapes", "output_shapes", "params", "params_total", "depth", "call"}


def test_text_table(simple_trace):
    _, trace = simple_trace
    text = str(trace)
    lines = text.splitlines()
    assert lines[0].split() == ["module", "class", "input", "output", "params"]
    assert len(lines) == len(trace) + 2
    assert "(model)" in lines[2] and "SimpleUNet" in lines[2]
    assert any(line.startswith("up1.res ") and "(2, 48, 16, 16), (2, 64)" in line for line in lines)
    assert repr(trace) == text
    assert "call" in trace.table(columns=["path", "call", "total"]).splitlines()[0]
    with pytest.raises(ValueError, match="unknown columns"):
        trace.table(columns=["path", "colour"])


def test_depth_option():
    model = SimpleUNet(base_channels=8)
    x, t = torch.randn(1, 4, 16, 16), 5
    assert [row.path for row in trace_shapes(model, x, t, depth=0)] == [""]
    depth1 = trace_shapes(model, x, t, depth=1)
    assert [row.path for row in depth1] == ["", "time_embed", "down1", "down2", "bottleneck", "up1", "up2", "out"]
    assert all(row.depth <= 2 for row in trace_shapes(model, x, t, depth=2))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="depth"):
            trace_shapes(model, x, t, depth=bad)


def test_filter_option():
    model = SimpleUNet(base_channels=8)
    x, t = torch.randn(1, 4, 16, 16), 5
    assert [r.path for r in trace_shapes(model, x, t, filter="up1.*")][:2] == ["up1.up", "up1.res"]
    assert {r.cls for r in trace_shapes(model, x, t, filter="ResBlock")} == {"ResBlock"}
    assert len(trace_shapes(model, x, t, filter=ResBlock)) == 5
    convs = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())
    assert [r.cls for r in trace_shapes(model, x, t, filter=(nn.Conv2d, nn.ConvTranspose2d))].count("Conv2d") == convs - 2
    assert len(trace_shapes(model, x, t, filter=nn.Module)) == len(list(model.modules()))
    assert [r.path for r in trace_shapes(model, x, t, filter=lambda r: r.params > 30_000)] == []
    big = trace_shapes(model, x, t, filter=lambda r: r.params > 2_000)
    assert big and all(r.params > 2_000 for r in big)
    with pytest.raises(TypeError, match="filter must be"):
        trace_shapes(model, x, t, filter=3)


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        trace_shapes(lambda x: x, torch.zeros(1))


class Shared(nn.Module):
    """One Linear called three times, a dict output with a nested tuple, kwargs and non-tensor args."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x, scale=1.0, *, mask=None, name="x"):
        h = self.lin(self.lin(x))
        return {"out": self.lin(h) * scale, "pair": (h, [self.act(h), 7]), "name": name}


def test_repeated_calls_nested_outputs_and_non_tensor_args():
    trace = trace_shapes(Shared(), torch.zeros(2, 3), 0.5, mask=None, name="abc")
    lin_rows = trace.find("lin")
    assert [row.call for row in lin_rows] == [1, 2, 3]
    assert all(row.input_shapes == [(2, 3)] for row in lin_rows)
    root = trace.find("")[0]
    assert root.inputs == "(2, 3), 0.5, mask=None, name='abc'"
    assert root.input_shapes == [(2, 3)]
    assert root.output_shapes == [(2, 3), (2, 3), (2, 3)]
    assert root.outputs == "{out: (2, 3), pair: [(2, 3), [(2, 3), 7]], name: 'abc'}"
    assert "lin (call 3)" in str(trace)


def test_zero_dim_and_one_dim_tensors_are_readable():
    class Pass(nn.Module):
        def forward(self, a, b):
            return a, b

    trace = trace_shapes(Pass(), torch.tensor(3), torch.zeros(5))
    assert trace[0].inputs == "(), (5,)" and trace[0].input_shapes == [(), (5,)]


def _seed_model_bug1_patched():
    group_norm = nn.GroupNorm
    with mock.patch.object(nn, "GroupNorm", lambda g, c: group_norm(math.gcd(g, c), c)):
        return note003.SimpleUNet(in_channels=4, out_channels=4, base_channels=64)


def test_failing_forward_keeps_rows_and_names_the_module():
    model = _seed_model_bug1_patched()
    x, t = torch.randn(2, 4, 64, 64), torch.randint(0, 1000, (2,))
    trace = trace_shapes(model, x, t)
    assert not trace.ok
    assert isinstance(trace.error, RuntimeError)
    assert trace.failed_module == "up1.res.norm1" and trace.failed_class == "GroupNorm"
    paths = [row.path for row in trace]
    # everything up to the failure is there; nothing after it ran
    assert paths[-1] == "up1.res.norm1" and "up2" not in paths and "out" not in paths
    status = {row.path: row.status for row in trace}
    assert [status[p] for p in ("", "up1", "up1.res", "up1.res.norm1")] == ["failed"] * 4
    assert status["up1.up"] == "ok" and status["bottleneck"] == "ok"
    failed = trace.find("up1.res.norm1")[0]
    assert failed.input_shapes == [(2, 192, 32, 32)] and failed.output_shapes == []
    assert "number of channels" in failed.error
    text = str(trace)
    assert "✗ failed" in text and "forward failed in up1.res.norm1 (GroupNorm)" in text.splitlines()[-1]
    # the failure is found whatever is shown
    shallow = trace_shapes(model, x, t, depth=1)
    assert shallow.failed_module == "up1.res.norm1" and all(r.depth <= 1 for r in shallow)
    # hooks are gone afterwards
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_raise_errors_reraises():
    model = _seed_model_bug1_patched()
    with pytest.raises(RuntimeError):
        trace_shapes(model, torch.randn(1, 4, 16, 16), torch.tensor([1]), raise_errors=True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_error_in_the_models_own_code_names_the_model():
    model = SimpleUNet(base_channels=8)
    trace = trace_shapes(model, torch.randn(1, 3, 16, 16), 1)
    assert isinstance(trace.error, ValueError) and trace.failed_module == ""
    assert len(trace) == 1 and trace[0].status == "failed"
    assert "forward failed in (model) (SimpleUNet): ValueError" in str(trace)


def test_exception_caught_inside_the_model():
    class Careful(nn.Module):
        def __init__(self):
            super().__init__()
            self.bad = nn.Linear(5, 2)
            self.good = nn.Linear(3, 2)

        def forward(self, x):
            try:
                return self.bad(x)
            except RuntimeError:
                return self.good(x)

    trace = trace_shapes(Careful(), torch.zeros(4, 3))
    assert trace.ok and trace.failed_module is None
    assert [(r.path, r.status) for r in trace] == [("", "ok"), ("bad", "failed"), ("good", "ok")]
    assert trace[0].output_shapes == [(4, 2)]


def test_meta_device_gives_the_same_shapes():
    torch.manual_seed(0)
    cpu_trace = trace_shapes(SimpleUNet(base_channels=16), torch.randn(3, 4, 32, 32), torch.tensor([1, 2, 3]))
    with torch.device("meta"):
        model = SimpleUNet(base_channels=16)
        meta_trace = trace_shapes(model, torch.empty(3, 4, 32, 32), torch.zeros(3, dtype=torch.long))
    strip = lambda t: [(r.path, r.input_shapes, r.output_shapes, r.params) for r in t]  # noqa: E731
    assert strip(meta_trace) == strip(cpu_trace)


def test_no_grad_and_mode_untouched():
    model = SimpleUNet(base_channels=8).train()
    trace_shapes(model, torch.randn(1, 4, 8, 8), 1)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_to_pandas_needs_pandas(simple_trace):
    _, trace = simple_trace
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="records"):
            trace.to_pandas()
    else:
        assert len(trace.to_pandas()) == len(trace)
