"""Every checker answers the notebook's untouched stub with "还没有作答 | not attempted yet", never a diagnosis.

``STUBS`` holds each exercise's stub exactly as its chapter notebook has it (the code the learner
edits, then the call that checks it). ``test_stubs_are_the_notebooks`` fails when a notebook's stub
changes, so that this table, and the checker's rule for recognising the stub
(:mod:`unetlab.homework.stubs`), are looked at again. The reference answers and the typical wrong
answers of each checker are in ``tests/test_homework_chNN.py``; the typical mistakes whose
diagnosis changed with the stub rule (chapters 4 and 6) are tested here too.
"""
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from unetlab.homework import check_ddim_step, check_gap_prediction, check_guidance
from unetlab.homework.ch06 import reference_ddim_step, reference_guidance
from unetlab.homework.exercises import EXERCISES
from unetlab.homework.feedback import NOT_ATTEMPTED

ROOT = Path(__file__).resolve().parent.parent

# checker name -> (notebook, the stub's code as in the notebook, the call that checks it)
STUBS = {
    "check_unet_shapes": ("01_simple_unet.ipynb", '''
class MyUNet(nn.Module):
    def __init__(self, in_channels=4, out_channels=4, base_channels=16):
        super().__init__()
        # TODO: time embedding, down path, bottleneck, up path with skips, output conv

    def forward(self, x, timestep):
        # TODO
        raise NotImplementedError
''', "check_unet_shapes(MyUNet)"),
    "check_own_trace": ("01_simple_unet.ipynb", '''
from unetlab.homework import check_own_trace

my_trace = {}  # TODO: {"time_embed": (2, ...), "down1": (2, ...), ...}, worked out by hand for x of shape (2, 4, 64, 64)
''', "check_own_trace(MyUNet, my_trace)"),
    "check_param_scaling": ("01_simple_unet.ipynb", '''
from unetlab.homework import check_param_scaling
from unetlab.homework.ch01 import PARTS

scaling = {
    "quadratic": {part: None for part in PARTS},  # TODO: the coefficient a of C² in each part's count
    "at_128": {part: None for part in PARTS},     # TODO: each part's count at base_channels=128, predicted
}
''', "check_param_scaling(scaling)"),
    "check_sd21_params": ("02_sd_unet.ipynb", '''
from unetlab.homework import check_sd21_params

sd21_answer = {
    "grew": None,                # TODO: the sub-modules whose parameter count grows, e.g. {"attn1.to_q"}
    "reshaped": None,            # TODO: the sub-modules whose weights change shape but not size
    "heads_change_count": None,  # TODO: True or False
}


def extra_params(config, width):
    # TODO: the parameters gained when only config.cross_attention_dim becomes width
    raise NotImplementedError
''', "check_sd21_params(sd21_answer, extra_params)"),
    "check_shape_predictions": ("02_sd_unet.ipynb", '''
from unetlab.homework import SD_SHAPE_POINTS, check_shape_predictions

predictions = {point: None for point in SD_SHAPE_POINTS}  # TODO: a shape tuple for every point
predictions["conv_in output"] = (1, 320, 96, 96)  # the first one, as an example
''', "check_shape_predictions(predictions)"),
    "check_skip_channels": ("02_sd_unet.ipynb", '''
def skip_channels(config):
    # TODO: list the skips the down path saves (channels), then pop them for every up-block ResNet
    return []
''', "check_skip_channels(skip_channels)"),
    "check_skip_ablation": ("03_skip_connections.ipynb", '''
from unetlab.homework import check_skip_ablation
from unetlab.homework.ch03 import ABLATION_TIMESTEPS, homework_images


def my_replacement(skip):
    # skip: (B, C, H, W) -> a tensor of the same shape
    raise NotImplementedError

ablation_table = {"up1": {t: None for t in ABLATION_TIMESTEPS}, "up2": {t: None for t in ABLATION_TIMESTEPS}}  # TODO: measure
verdict = {t: None for t in ABLATION_TIMESTEPS}  # TODO: "up1" or "up2", the skip whose replacement costs more at t
''', "check_skip_ablation(my_replacement, ablation_table, verdict, models=models)"),
    "check_crossover": ("03_skip_connections.ipynb", '''
from unetlab.homework import check_crossover
from unetlab.homework.ch03 import mean_training_image

crossing = {"skips": None, "noskips": None}  # TODO: for each model, a t where it wins at t - 1 and loses at t
''', "check_crossover(crossing, models=models)"),
    "check_embedding": ("04_timestep_embedding.ipynb", '''
def my_timestep_embedding(t, dim):
    # TODO: frequencies w_i = 10000 ** (-i / half), angles t * w_i, then [cos | sin]
    raise NotImplementedError
''', "check_embedding(my_timestep_embedding)"),
    "check_similarity_matrix": ("04_timestep_embedding.ipynb", '''
hw_timesteps = torch.arange(0, 1000, 25)
hw_sim = None  # TODO: (N, 64) embeddings -> unit length -> (N, N) matrix of dot products
''', "check_similarity_matrix(hw_sim, hw_timesteps, dim=64)"),
    "check_gap_prediction": ("04_timestep_embedding.ipynb", '''
from unetlab.homework import check_gap_prediction
from unetlab.homework.ch04 import GAP, VARIANT_DIM


def my_variant(t, dim):
    # TODO: your own frequencies w (dim // 2 of them), then [cos(t w) | sin(t w)]
    raise NotImplementedError


predicted = None  # TODO: from your frequencies alone, before embedding anything
measured = None   # TODO: mean over t = 0 ... 999 - GAP of cos(my_variant(t), my_variant(t + GAP)), dim = VARIANT_DIM
''', "check_gap_prediction(my_variant, predicted, measured)"),
    "check_smooth_embedding": ("04_timestep_embedding.ipynb", '''
from unetlab.homework import check_smooth_embedding


def smooth_embedding(t, dim):
    # TODO: choose the frequencies so that both conditions hold
    raise NotImplementedError
''', "check_smooth_embedding(smooth_embedding)"),
    "check_self_attention": ("05_attention.ipynb", '''
def self_attention(x, w_q, w_k, w_v):
    """x: (B, N, C); w_q, w_k: (C, d); w_v: (C, d_v) -> (out (B, N, d_v), weights (B, N, N))."""
    # 你的代码 | your code
    raise NotImplementedError
''', "check_self_attention(self_attention)"),
    "check_attention_map": ("05_attention.ipynb", '''
def attention_map(weights, query, size):
    """weights: (N, N); query: (y, x); size: (h, w) -> the (h, w) attention map of pixel (y, x)."""
    # 你的代码 | your code
    raise NotImplementedError
''', "check_attention_map(attention_map)"),
    "check_aggregation": ("05_attention.ipynb", '''
def my_aggregate(records, token, size):
    """records: AttentionRecords; token: int; size: (H, W) -> (B, H, W), as AttentionStore.aggregate."""
    # 你的代码 | your code
    raise NotImplementedError
''', "check_aggregation(my_aggregate)"),
    "check_word_swap": ("05_attention.ipynb", '''
def word_swap(model, source, target, seed):
    """-> (source image, edited image), each (1, 3, 32, 32), both made with swap_sample."""
    # 你的代码 | your code
    raise NotImplementedError
''', "check_word_swap(word_swap)"),
    "check_guidance": ("06_denoising_loop.ipynb", '''
def my_guidance(eps_uncond, eps_text, guidance_scale):
    # TODO: 你的代码 | your code
    return eps_text
''', "check_guidance(my_guidance)"),
    "check_ddim_step": ("06_denoising_loop.ipynb", '''
def my_ddim_step(x_t, v, alpha_bar_t, alpha_bar_prev):
    # TODO: 你的代码 | your code
    return x_t
''', "check_ddim_step(my_ddim_step)"),
    "check_residual_shapes": ("07_controlnet_adapters.ipynb", '''
from unetlab.homework import check_residual_shapes

residual_shapes = {
    "down": [],     # the shapes (B, C, H, W) in skip order, conv_in's first — how many are there?
    "mid": None,    # the mid residual's shape
}
''', "check_residual_shapes(residual_shapes)"),
    "check_add_at_skip": ("07_controlnet_adapters.ipynb", '''
def add_at_skip(unet, sample, timestep, context, skip_name, residual):
    raise NotImplementedError
''', "check_add_at_skip(add_at_skip)"),
    "check_negative_prompt": ("06_denoising_loop.ipynb", '''
def my_negative_guidance(unet, x_t, t, context, negative_context, guidance_scale):
    # TODO: 你的代码 | your code
    raise NotImplementedError
''', "check_negative_prompt(my_negative_guidance)"),
    "check_ddim_sigma": ("06_denoising_loop.ipynb", '''
def my_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    # TODO: 你的代码 | your code
    return torch.zeros(())
''', "check_ddim_sigma(my_ddim_sigma)"),
}


def _namespace() -> dict:
    """What the notebooks have imported by the time their homework runs."""
    import unetlab.homework as homework
    from unetlab.schedule import fixed_noise

    ns = {"torch": torch, "nn": nn, "fixed_noise": fixed_noise,
          # chapter 3's stub reads only the names of the models, never calls them
          "models": {"skips": None, "noskips": None}}
    ns.update({name: getattr(homework, name) for name in EXERCISES})
    # chapter 1's later exercises use the learner's MyUNet: still the untouched stub of 1.1
    exec(compile(STUBS["check_unet_shapes"][1], "<stub of MyUNet>", "exec"), ns)
    return ns


def run_stub(name: str):
    _, code, call = STUBS[name]
    ns = _namespace()
    exec(compile(code, f"<stub of {name}>", "exec"), ns)
    return eval(call, ns)


def test_every_checker_has_its_stub_here():
    import unetlab.homework.report  # noqa: F401  (imports every chapter, which registers every checker)

    assert set(STUBS) == set(EXERCISES), "add the stub of every new checker to STUBS"


@pytest.mark.parametrize("name", sorted(STUBS))
def test_the_untouched_stub_is_not_attempted(name):
    fb = run_stub(name)
    text = str(fb)
    assert fb.status == NOT_ATTEMPTED and not fb.passed and not fb, text
    assert "还没有作答" in text and "not attempted yet" in text, text
    # nothing is diagnosed as wrong: no ❌ line, every check that is not passed is marked as still to do
    assert "❌" not in text and "⏳" in text, text
    stubs = [c for c in fb.checks if c.stub]
    # the check that recognised the stub says what to do, in both languages
    assert stubs and all(c.hint_en and c.hint_zh for c in stubs), text


def _code_lines(text: str) -> list[str]:
    # comments and blank lines do not matter; the code does
    lines = [re.sub(r"\s+#.*$|^\s*#.*$", "", line).rstrip() for line in text.splitlines()]
    return [line for line in lines if line.strip()]


@pytest.mark.parametrize("name", sorted(STUBS))
def test_stubs_are_the_notebooks(name):
    notebook, code, call = STUBS[name]
    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    want = _code_lines(code)
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    found = [i for i, src in enumerate(sources) if "\n".join(want) in "\n".join(_code_lines(src))]
    assert found, (f"{notebook} no longer has this stub of {name}; update STUBS and check that the checker "
                   f"still answers the new stub with 'not attempted yet':\n{code}")
    assert any(call in src for src in sources[found[0]:found[0] + 3]), f"{notebook}: {call} not found after the stub"


# --- the stub rule does not swallow real attempts ------------------------------------------------------------


def test_a_partly_filled_answer_is_an_attempt():
    import math

    def my_variant(t, dim):
        w = torch.exp(-math.log(1000.0) * torch.arange(dim // 2) / (dim // 2))
        return torch.cat([torch.cos(t[:, None] * w), torch.sin(t[:, None] * w)], dim=1)

    # the function is written, the numbers not yet: an attempt, and the blanks are named
    fb = check_gap_prediction(my_variant, None, None)
    assert fb.attempted and fb.status == "failed"
    assert sum(c.passed for c in fb.checks) == 1 and "❌" in str(fb)


def _hints(fb) -> str:
    return " ".join(c.hint_en for c in fb.failed())


@pytest.mark.parametrize("answer, hint", [
    (lambda u, c, s: c + s * (u - c), "halves are swapped"),
    (lambda u, c, s: c + s * (c - u), "starting point is eps_uncond"),
    (lambda u, c, s: u + s * c - u, "Missing brackets"),
    (lambda u, c, s: s * c, "the text prediction scaled"),
])
def test_guidance_typical_mistakes_are_attempts_with_their_diagnosis(answer, hint):
    fb = check_guidance(answer)
    assert fb.status == "failed" and hint in _hints(fb), str(fb)


def test_guidance_that_only_ignores_the_scale_differently_is_an_attempt():
    # always the unconditional half: not the stub (which returns eps_text), an attempt that ignores s
    fb = check_guidance(lambda u, c, s: u)
    assert fb.status == "failed" and not any(c.stub for c in fb.checks)


@pytest.mark.parametrize("answer, hint", [
    # 6.3's epsilon lines with v for eps: nan at t = 999, then the diagnosis
    (lambda x, v, a, p: p.sqrt() * (x - (1 - a).sqrt() * v) / a.sqrt() + (1 - p).sqrt() * v, "taken for ε"),
    (lambda x, v, a, p: p.sqrt() * (a.sqrt() * x - (1 - a).sqrt() * v), "noise direction"),
    (lambda x, v, a, p: a.sqrt() * (p.sqrt() * x - (1 - p).sqrt() * v) + (1 - a).sqrt() * ((1 - p).sqrt() * x + p.sqrt() * v),
     "are swapped"),
])
def test_ddim_typical_mistakes_are_attempts_with_their_diagnosis(answer, hint):
    fb = check_ddim_step(answer)
    assert fb.status == "failed" and hint in _hints(fb), str(fb)


def _twice(x, v, a, p):
    # ā_t in both lines: the step gives x_t back exactly, the same output as the stub
    x0 = a.sqrt() * x - (1 - a).sqrt() * v
    eps = (1 - a).sqrt() * x + a.sqrt() * v
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def test_ddim_with_alpha_bar_t_twice_is_an_attempt_told_apart_by_its_source():
    fb = check_ddim_step(_twice)
    assert fb.status == "failed" and not any(c.stub for c in fb.checks), str(fb)
    wrong = fb.failed()
    assert len(wrong) == 3, str(fb)  # every case, each with the diagnosis
    assert all("equals x_t exactly: your second line uses ā_t" in c.detail_en for c in wrong), str(fb)
    assert all("第二行用了 ā_t" in c.detail_zh and "ā_prev" in c.hint_zh for c in wrong), str(fb)
    assert "It must use ā_prev to move to the previous timestep." in _hints(fb)


def test_ddim_with_alpha_bar_t_twice_in_one_expression_is_an_attempt():
    fb = check_ddim_step(lambda x, v, a, p: a.sqrt() * (a.sqrt() * x - (1 - a).sqrt() * v)
                         + (1 - a).sqrt() * ((1 - a).sqrt() * x + a.sqrt() * v))
    assert fb.status == "failed" and "your second line uses ā_t" in str(fb), str(fb)


def test_ddim_computing_x_prev_but_returning_x_t_is_an_attempt():
    def forgot(x_t, v, alpha_bar_t, alpha_bar_prev):
        x0 = alpha_bar_t.sqrt() * x_t - (1 - alpha_bar_t).sqrt() * v
        eps = (1 - alpha_bar_t).sqrt() * x_t + alpha_bar_t.sqrt() * v
        x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps  # noqa: F841
        return x_t

    fb = check_ddim_step(forgot)
    assert fb.status == "failed" and "Return the x_prev you computed" in _hints(fb), str(fb)


def _ddim_stub_hint(fb) -> str:
    return " ".join(c.hint_en for c in fb.checks if c.stub)


def test_ddim_stub_with_docstring_and_comments_is_not_attempted():
    def my_ddim_step(x_t, v, alpha_bar_t, alpha_bar_prev):
        """One DDIM step."""
        # TODO: 你的代码 | your code
        pass
        return x_t  # not yet

    fb = check_ddim_step(my_ddim_step)
    assert fb.status == NOT_ATTEMPTED, str(fb)
    # the source shows it is the stub: the hint does not need to name the ā_t case
    assert "ā_prev" in _ddim_stub_hint(fb) and "If you did" not in _ddim_stub_hint(fb)
    # it gives the two equations, not their solution
    assert "x0 = √ā_t·x_t" not in str(fb) and "v = √ā·ε − √(1−ā)·x0" in _ddim_stub_hint(fb)


def test_ddim_stub_as_a_lambda_is_not_attempted():
    # a lambda's source is the line it stands on; its body is only its first parameter
    fb = check_ddim_step(lambda x, v, a, p: x)
    assert fb.status == NOT_ATTEMPTED and "If you did" not in _ddim_stub_hint(fb), str(fb)


def test_ddim_stub_as_in_jupyter_has_its_source_and_is_not_attempted():
    # IPython puts each cell's code into linecache, so inspect.getsource finds the notebook's stub
    import linecache

    code = STUBS["check_ddim_step"][1]
    filename = "<ipython-input-ddim-stub-test>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        ns = _namespace()
        exec(compile(code, filename, "exec"), ns)
        fb = check_ddim_step(ns["my_ddim_step"])
    finally:
        del linecache.cache[filename]
    assert fb.status == NOT_ATTEMPTED and "If you did" not in _ddim_stub_hint(fb), str(fb)


def test_ddim_without_source_the_output_decides():
    # exec without linecache (how run_stub runs the notebook's stub): no source, x_t back means the stub,
    # and the stub's hint names the ā_t case
    import inspect

    ns = {}
    exec(compile(inspect.getsource(_twice), "<no source>", "exec"), ns)
    fb = check_ddim_step(ns["_twice"])
    assert fb.status == NOT_ATTEMPTED and "second line uses ā_t too" in _ddim_stub_hint(fb), str(fb)
    assert check_ddim_step(STUB_LIKE_OBJECT).status == NOT_ATTEMPTED
    assert "second line uses ā_t too" in _ddim_stub_hint(run_stub("check_ddim_step"))


class _GivesXBack:
    """A callable object: inspect.getsource raises TypeError on it."""

    def __call__(self, x_t, v, alpha_bar_t, alpha_bar_prev):
        return x_t


STUB_LIKE_OBJECT = _GivesXBack()


@pytest.mark.parametrize("checker, reference", [(check_guidance, reference_guidance), (check_ddim_step, reference_ddim_step)])
def test_references_pass(checker, reference):
    fb = checker(reference)
    assert fb.status == "passed" and fb.passed, str(fb)
