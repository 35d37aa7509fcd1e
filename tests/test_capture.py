"""capture_attention: outputs unchanged, what is recorded, filters, clean-up, and the map helpers."""
import re

import pytest
import torch

from unetlab import SDUNet
from unetlab.attention import Attention, SelfAttention, Transformer2DModel, attention_backend
from unetlab.capture import (
    AttentionStore,
    aggregate_maps,
    attention_layers,
    capture_attention,
    short_layer_name,
    upsample_maps,
)
from unetlab.configs import SD15, TINY, TINY_21, TINY_XL


def _inputs(cfg, batch=2, h=16, w=16, tokens=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, cfg.in_channels, h, w, generator=g)
    context = torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g)
    added = None
    if cfg.addition_embed_type == "text_time":
        width = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(batch, width, generator=g), "time_ids": torch.rand(batch, 6, generator=g) * 64}
    return sample, context, added


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SDUNet(TINY).eval()


def _no_hooks_left(model):
    for m in model.modules():
        if isinstance(m, Attention):
            assert not m._probs_hooks
        if isinstance(m, (Transformer2DModel, SelfAttention)):
            assert not m._forward_pre_hooks


# ---------------------------------------------------------------------------------------------
# outputs unchanged
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, kind", [(TINY, "cross"), (TINY, "self"), (TINY, "both"), (TINY_21, "both"), (TINY_XL, "both")],
    ids=["tiny-cross", "tiny-self", "tiny-both", "tiny21-both", "tinyxl-both"],
)
def test_outputs_unchanged(cfg, kind):
    torch.manual_seed(0)
    model = SDUNet(cfg).eval()
    sample, context, added = _inputs(cfg)
    with torch.no_grad():
        plain = model(sample, 500, context, added)
        with attention_backend("explicit"):
            explicit = model(sample, 500, context, added)
        with capture_attention(model, kind) as store:
            captured = model(sample, 500, context, added)
    assert len(store) > 0
    # the hooked layers take the explicit path: bit-equal to it, and equal to SDPA up to rounding
    if kind == "both":
        assert torch.equal(captured, explicit)
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)
    _no_hooks_left(model)


@pytest.mark.slow
def test_outputs_unchanged_sd15_full_size():
    torch.manual_seed(0)
    model = SDUNet(SD15).eval()
    sample, context, _ = _inputs(SD15, batch=1, h=8, w=8, tokens=77)
    with torch.no_grad():
        plain = model(sample, 999, context)
        with capture_attention(model, "both") as store:
            captured = model(sample, 999, context)
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)
    # SD 1.5: 16 transformer blocks, each one self- and one cross-attention
    assert len(store.select(kind="self")) == 16 and len(store.select(kind="cross")) == 16
    assert {r.heads for r in store} == {8}
    assert store.sizes == [(8, 8), (4, 4), (2, 2), (1, 1)]


def test_outputs_unchanged_with_grad(tiny):
    sample, context, _ = _inputs(TINY)
    sample.requires_grad_(True)
    with capture_attention(tiny, "cross") as store:
        out = tiny(sample, 10, context)
    out.square().mean().backward()
    assert sample.grad is not None and not any(r.probs.requires_grad for r in store)


# ---------------------------------------------------------------------------------------------
# what is recorded
# ---------------------------------------------------------------------------------------------
def test_records_shapes_sizes_and_rows_sum_to_one(tiny):
    # an odd latent: grids are 9x7, 5x4, 3x2, 2x1 (stride-2 convs round up)
    sample, context, _ = _inputs(TINY, batch=2, h=9, w=7, tokens=5)
    with torch.no_grad(), capture_attention(tiny, "both") as store:
        tiny(sample, 3, context)
    layers = attention_layers(tiny)
    assert store.layers == list(layers)
    assert store.sizes == [(9, 7), (5, 4), (3, 2), (2, 1)]
    for r in store:
        h, w = r.size
        n_keys = 5 if r.kind == "cross" else h * w
        assert r.kind == layers[r.layer]
        assert r.probs.shape == (2, TINY.num_attention_heads[0], h * w, n_keys)
        assert r.probs.dtype == torch.float32 and r.probs.device.type == "cpu"
        torch.testing.assert_close(r.probs.sum(-1), torch.ones(2, r.heads, h * w))
        assert (r.probs >= 0).all()
        assert r.call == 0 and r.step == 0


def test_probs_are_the_softmax_of_the_layer(tiny):
    sample, context, _ = _inputs(TINY, tokens=4)
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    attn = tiny.get_submodule(layer)
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    try:
        with torch.no_grad(), capture_attention(tiny, layers=layer) as store:
            tiny(sample, 3, context)
    finally:
        handle.remove()
    (record,) = store.records
    q = attn.to_q(seen["x"]).view(2, -1, attn.heads, attn.dim_head).transpose(1, 2)
    k = attn.to_k(context).view(2, -1, attn.heads, attn.dim_head).transpose(1, 2)
    expected = (q @ k.transpose(-1, -2) * attn.dim_head**-0.5).softmax(-1)
    torch.testing.assert_close(record.probs, expected.detach())


def test_steps_calls_and_per_step_maps(tiny):
    sample, context, _ = _inputs(TINY, tokens=6)
    with torch.no_grad(), capture_attention(tiny, "cross") as store:
        for t in (900, 500, 100):
            store.step = torch.tensor(t)
            tiny(sample, t, context)
    assert store.steps == [900, 500, 100]
    assert {r.call for r in store} == {0, 1, 2}
    maps = store.maps_for_token(2, per_step=True)
    m = maps["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert m.shape == (2, 3, 2, 2)
    # the mean over steps equals per_step averaged; a step filter picks one call
    mean = store.maps_for_token(2)
    for layer in maps:
        torch.testing.assert_close(maps[layer].mean(1), mean[layer])
    only = store.maps_for_token(2, steps=500)
    for layer in maps:
        torch.testing.assert_close(only[layer], maps[layer][:, 1])
    # without labels the step is the call index
    with torch.no_grad(), capture_attention(tiny, "cross", layers="mid_block*") as store2:
        tiny(sample, 1, context)
        tiny(sample, 2, context)
    assert store2.steps == [0, 1]


def test_maps_for_token_and_query_match_the_probabilities(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8, tokens=6)
    with torch.no_grad(), capture_attention(tiny, "both") as store:
        tiny(sample, 7, context)
    layer = "up_blocks.3.attentions.1.transformer_blocks.0.attn2"
    rec = store.select(layers=layer)[0]
    maps = store.maps_for_token(4)
    torch.testing.assert_close(maps[layer], rec.probs[..., 4].mean(1).reshape(2, 8, 8))
    words = store.maps_for_token([1, 2], heads="all")
    torch.testing.assert_close(words[layer], (rec.probs[..., 1] + rec.probs[..., 2]).reshape(2, 4, 8, 8))
    assert store.maps_for_token(1, heads=3)[layer].shape == (2, 8, 8)

    self_layer = layer.replace("attn2", "attn1")
    srec = store.select(layers=self_layer)[0]
    qmaps = store.maps_for_query(2, 5, layers="up_blocks.3*")
    torch.testing.assert_close(qmaps[self_layer], srec.probs[:, :, 2 * 8 + 5].mean(1).reshape(2, 8, 8))
    # a query's map is one row of probabilities: it sums to 1
    torch.testing.assert_close(qmaps[self_layer].sum((-1, -2)), torch.ones(2))
    rel = store.maps_for_query(0.5, 0.5, relative=True)
    assert {tuple(m.shape[-2:]) for m in rel.values()} == {(8, 8), (4, 4), (2, 2), (1, 1)}
    with pytest.raises(ValueError, match="outside"):
        store.maps_for_query(6, 6)  # fits 8x8 but not 4x4
    with pytest.raises(ValueError, match="out of range"):
        store.maps_for_token(6)
    with pytest.raises(ValueError, match="token"):
        store.maps_for_token("circle")


def test_aggregate_and_by_resolution(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8, tokens=6)
    with torch.no_grad(), capture_attention(tiny, "cross") as store:
        tiny(sample, 7, context)
    maps = store.maps_for_token(3)
    agg = store.aggregate(token=3)
    assert agg.shape == (2, 8, 8)
    torch.testing.assert_close(agg, torch.stack([upsample_maps(m, (8, 8)) for m in maps.values()]).mean(0))
    big = store.aggregate(token=3, size=(32, 32), normalize=True)
    assert big.shape == (2, 32, 32)
    torch.testing.assert_close(big.amax((-1, -2)), torch.ones(2))
    torch.testing.assert_close(big.amin((-1, -2)), torch.zeros(2))
    groups = store.by_resolution(maps)
    assert list(groups) == [(8, 8), (4, 4), (2, 2), (1, 1)]
    eight = [m for m in maps.values() if m.shape[-1] == 8]
    torch.testing.assert_close(groups[(8, 8)], torch.stack(eight).mean(0))
    # a 1x1 map upsampled is constant; a map already at size is unchanged
    torch.testing.assert_close(upsample_maps(torch.full((1, 1), 0.3), (4, 4)), torch.full((4, 4), 0.3))
    torch.testing.assert_close(aggregate_maps([eight[0]]), eight[0])
    with pytest.raises(ValueError, match="exactly one"):
        store.aggregate()
    with pytest.raises(ValueError, match="no self-attention records"):
        store.aggregate(query=(0.5, 0.5))


def test_summary_and_short_names(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8)
    with torch.no_grad(), capture_attention(tiny, "cross", layers="up_blocks.1*") as store:
        tiny(sample, 7, context)
    text = store.summary()
    assert text.splitlines()[0].split() == ["layer", "kind", "grid", "heads", "keys", "calls"]
    assert len(text.splitlines()) == 2 + 3
    assert short_layer_name("down_blocks.1.attentions.0.transformer_blocks.0.attn2") == "down1.0.attn2"
    assert short_layer_name("mid_block.attentions.0.transformer_blocks.0.attn1") == "mid.0.attn1"
    assert short_layer_name("up_blocks.0.attentions.2.transformer_blocks.3.attn1") == "up0.2.t3.attn1"
    assert short_layer_name("attn") == "attn"


# ---------------------------------------------------------------------------------------------
# choosing what to record
# ---------------------------------------------------------------------------------------------
def test_layer_filters(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8)
    all_cross = [p for p, k in attention_layers(tiny).items() if k == "cross"]
    cases = {
        "up_blocks.*": [p for p in all_cross if p.startswith("up_blocks.")],
        re.compile(r"^down_blocks\.[01]\."): [p for p in all_cross if p.startswith(("down_blocks.0.", "down_blocks.1."))],
        (lambda p: "mid" in p): [p for p in all_cross if "mid" in p],
        ("mid_block*", "down_blocks.2.*"): [p for p in all_cross if p.startswith(("mid_block", "down_blocks.2."))],
    }
    for layers, expected in cases.items():
        with torch.no_grad(), capture_attention(tiny, "cross", layers=layers) as store:
            tiny(sample, 7, context)
        assert store.layers == expected
        assert list(store.hooked) == expected


def test_layer_filter_that_matches_nothing_raises(tiny):
    with pytest.raises(ValueError, match=r"matches none.*down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2"):
        with capture_attention(tiny, "cross", layers="attn2"):  # a glob without '*': matches no full path
            pass
    # a self-attention path asked for with kind="cross"
    with pytest.raises(ValueError, match="matches none"):
        with capture_attention(tiny, "cross", layers="*attn1"):
            pass
    with pytest.raises(TypeError, match="layers must be"):
        with capture_attention(tiny, layers=3):
            pass
    with pytest.raises(ValueError, match="empty"):
        with capture_attention(tiny, layers=[]):
            pass
    _no_hooks_left(tiny)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="kind"):
        with capture_attention(tiny, "crossattention"):
            pass
    with pytest.raises(ValueError, match="max_resolution"):
        with capture_attention(tiny, "self", max_resolution=0):
            pass
    with pytest.raises(TypeError, match="dtype"):
        with capture_attention(tiny, dtype=torch.int64):
            pass
    with pytest.raises(ValueError, match="no attention layers"):
        with capture_attention(torch.nn.Linear(2, 2)):
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        with capture_attention("unet"):
            pass
    with pytest.raises(ValueError, match="no cross-attention layers"):
        with capture_attention(SelfAttention(8), "cross"):
            pass


def test_max_resolution_skips_large_self_attention_only(tiny):
    sample, context, _ = _inputs(TINY, h=16, w=16)
    for limit in (8 * 8, (8, 8)):
        with torch.no_grad(), capture_attention(tiny, "both", max_resolution=limit) as store:
            tiny(sample, 7, context)
        assert {r.size for r in store.select(kind="self")} == {(8, 8), (4, 4), (2, 2)}
        assert {r.size for r in store.select(kind="cross")} == {(16, 16), (8, 8), (4, 4), (2, 2)}


# ---------------------------------------------------------------------------------------------
# only what is recorded costs: unselected layers carry no hook and keep SDPA
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def attention_calls(tiny, monkeypatch):
    """{module path: calls of its explicit path} and a total count of SDPA calls, for ``tiny``."""
    counts = {"sdpa": 0}
    for path, module in tiny.named_modules():
        if isinstance(module, Attention):
            counts[path] = 0

            def counted(*args, _path=path, _original=module._explicit_attention, **kwargs):
                counts[_path] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, "_explicit_attention", counted)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        counts["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)
    return counts


def test_unselected_layers_carry_no_hook_and_run_sdpa(tiny, attention_calls):
    sample, context, _ = _inputs(TINY, h=16, w=16)
    layers = attention_layers(tiny)
    chosen = [p for p, k in layers.items() if k == "cross" and p.startswith("up_blocks.1.")]
    with torch.no_grad():
        plain = tiny(sample, 7, context)
        assert attention_calls["sdpa"] == len(layers) and sum(v for k, v in attention_calls.items() if k != "sdpa") == 0
        attention_calls["sdpa"] = 0
        with capture_attention(tiny, "cross", layers="up_blocks.1*") as store:
            hooked = [p for p, m in tiny.named_modules() if isinstance(m, Attention) and m._probs_hooks]
            captured = tiny(sample, 7, context)
    assert hooked == chosen == store.layers
    # exactly the chosen layers built probabilities, once each; the 29 others ran SDPA
    assert {p: n for p, n in attention_calls.items() if p != "sdpa" and n} == {p: 1 for p in chosen}
    assert attention_calls["sdpa"] == len(layers) - len(chosen)
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)
    _no_hooks_left(tiny)


def test_max_resolution_leaves_large_layers_on_sdpa(tiny, attention_calls):
    # 16x16 latent: self-attention grids 16x16, 8x8, 4x4, 2x2; record only <= 8x8
    sample, context, _ = _inputs(TINY, h=16, w=16)
    with torch.no_grad():
        plain = tiny(sample, 7, context)
        attention_calls["sdpa"] = 0
        with capture_attention(tiny, "self", max_resolution=(8, 8)) as store:
            captured = tiny(sample, 7, context)
    big = [p for p in attention_layers(tiny) if p.endswith("attn1") and p.startswith(("down_blocks.0.", "up_blocks.3."))]
    assert len(big) == 5
    recorded = [r.layer for r in store]
    assert not set(big) & set(recorded) and {r.size for r in store} == {(8, 8), (4, 4), (2, 2)}
    # the large layers carried a hook but never left SDPA: no (B, heads, 256, 256) was built
    assert all(attention_calls[p] == 0 for p in big)
    assert all(attention_calls[p] == 1 for p in recorded)
    # SDPA: every cross-attention (unhooked) and the five large self-attentions
    assert attention_calls["sdpa"] == 16 + 5
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)


def test_probs_hook_wants_decides_before_anything_is_computed():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8)
    asked, seen = [], []
    handle = attn.register_probs_hook(
        lambda m, probs: seen.append(tuple(probs.shape)),
        wants=lambda m, batch, n_q, n_k: asked.append((batch, n_q, n_k)) or n_q <= 4,
    )
    x_small, x_big = torch.randn(3, 4, 16), torch.randn(3, 9, 16)
    with torch.no_grad():
        attn(x_small)
        out = attn(x_big)
        with attention_backend("explicit"):
            explicit = attn(x_big)  # use_sdpa off: explicit path, but the hook still is not called
    assert asked == [(3, 4, 4), (3, 9, 9), (3, 9, 9)]
    assert seen == [(3, 2, 4, 4)]
    torch.testing.assert_close(out, explicit, rtol=1e-5, atol=1e-6)
    handle.remove()
    assert not attn._probs_hooks
    with pytest.raises(TypeError, match="wants"):
        attn.register_probs_hook(lambda m, p: None, wants="small only")


# ---------------------------------------------------------------------------------------------
# a selection that matches nothing or does not fit the call raises
# ---------------------------------------------------------------------------------------------
def test_batch_that_does_not_fit_the_call_raises(tiny, attention_calls):
    sample, context, _ = _inputs(TINY, batch=2, h=8, w=8)
    for batch, match in [
        (5, r"batch=5 does not fit a call with batch size 2"),
        (-3, r"batch size 2.*\[-3\]"),
        ([0, 7], r"batch size 2.*\[7\]"),
        (slice(3, 5), r"selects no entry of a call with batch size 2"),
    ]:
        with pytest.raises(ValueError, match=match):
            with torch.no_grad(), capture_attention(tiny, "cross", batch=batch):
                tiny(sample, 7, context)
        _no_hooks_left(tiny)
    # refused before the first probabilities were built
    assert sum(n for p, n in attention_calls.items() if p != "sdpa") == 0
    with pytest.raises(TypeError, match="batch must be"):
        with capture_attention(tiny, batch="conditional"):
            pass
    with pytest.raises(ValueError, match="empty"):
        with capture_attention(tiny, batch=[]):
            pass
    # negative indices and lists that fit are fine
    with torch.no_grad(), capture_attention(tiny, "cross", layers="mid*", batch=[-1, 0]) as store:
        tiny(sample, 7, context)
    assert store.records[0].probs.shape[0] == 2


def test_max_resolution_below_every_grid_raises_at_the_forward(tiny):
    sample, context, _ = _inputs(TINY, h=16, w=16)
    with pytest.raises(ValueError, match=r"recorded nothing in this forward.*max_resolution=3.*\[256, 64, 16, 4\]"):
        with torch.no_grad(), capture_attention(tiny, "self", max_resolution=3):
            tiny(sample, 7, context)
    _no_hooks_left(tiny)
    # with cross-attention also selected, the forward records something: no error
    with torch.no_grad(), capture_attention(tiny, "both", max_resolution=3) as store:
        tiny(sample, 7, context)
    assert {r.kind for r in store} == {"cross"}
    # a bound on self-attention given to a capture that hooks none is refused, not ignored
    for kind, layers in (("cross", None), ("both", "*attn2")):
        with pytest.raises(ValueError, match="max_resolution=64 bounds self-attention only"):
            with capture_attention(tiny, kind, layers=layers, max_resolution=64):
                pass
    _no_hooks_left(tiny)


def test_a_capture_that_records_nothing_raises_at_exit(tiny):
    with pytest.raises(ValueError, match="recorded nothing.*call the model inside"):
        with capture_attention(tiny, "cross"):
            pass
    _no_hooks_left(tiny)
    # study note 003's SelfAttention, with a grid above max_resolution: the forward itself raises
    block = SelfAttention(8)
    with pytest.raises(ValueError, match=r"max_resolution=4.*\[9\]"):
        with torch.no_grad(), capture_attention(block, "self", max_resolution=4):
            block(torch.randn(1, 8, 3, 3))
    _no_hooks_left(block)


def test_store_selections_that_match_nothing_raise(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8, tokens=6)
    with torch.no_grad(), capture_attention(tiny, "cross", layers="up_blocks.1*") as store:
        for t in (900, 500):
            store.step = t
            tiny(sample, t, context)
    assert len(store.select(steps=[900, 500])) == 6
    with pytest.raises(ValueError, match=r"steps \[42\] were never recorded.*\[900, 500\]"):
        store.maps_for_token(1, steps=42)
    with pytest.raises(ValueError, match=r"steps \[100\] were never recorded"):
        store.select(steps=[900, 100])  # one label of several that matches nothing is not dropped silently
    with pytest.raises(ValueError, match=r"matches none of the 3 layers recorded.*up_blocks\.1\.attentions\.0"):
        store.aggregate(token=1, layers="down_blocks.*")
    with pytest.raises(ValueError, match="no self-attention records: the store holds only cross"):
        store.maps_for_query(0, 0)
    with pytest.raises(ValueError, match=r"size=\(3, 3\) was not recorded.*\[\(2, 2\)\]"):
        store.select(size=(3, 3))
    with pytest.raises(ValueError, match="empty"):
        store.select(steps=[])
    with pytest.raises(ValueError, match="holds no records"):
        AttentionStore().select()


def test_average_heads_batch_dtype(tiny):
    sample, context, _ = _inputs(TINY, batch=3, h=8, w=8)
    with torch.no_grad(), capture_attention(tiny, "cross") as full:
        tiny(sample, 7, context)
    with torch.no_grad(), capture_attention(tiny, "cross", average_heads=True, batch=1, dtype=torch.float16) as small:
        tiny(sample, 7, context)
    for a, b in zip(full, small):
        assert b.probs.shape == (1, 1, a.num_queries, a.num_keys) and b.probs.dtype == torch.float16
        torch.testing.assert_close(b.probs.float(), a.probs[1:2].mean(1, keepdim=True), atol=1e-3, rtol=1e-3)
    with torch.no_grad(), capture_attention(tiny, "cross", batch=slice(0, 2), dtype=None) as two:
        tiny(sample, 7, context)
    assert {r.probs.shape[0] for r in two} == {2}


def test_hooks_removed_after_an_exception(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8)
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), capture_attention(tiny, "both") as store:
            tiny(sample, 7, context)
            raise RuntimeError("boom")
    _no_hooks_left(tiny)
    n = len(store)
    with torch.no_grad():
        tiny(sample, 7, context)
    assert len(store) == n  # nothing recorded any more
    # an error inside the model's forward (wrong context width) also leaves no hooks behind
    with pytest.raises(ValueError):
        with torch.no_grad(), capture_attention(tiny, "both"):
            tiny(sample, 7, torch.randn(2, 7, 5))
    _no_hooks_left(tiny)


def test_two_captures_and_a_shared_store(tiny):
    sample, context, _ = _inputs(TINY, h=8, w=8)
    store = AttentionStore()
    with torch.no_grad(), capture_attention(tiny, "cross", store=store):
        with capture_attention(tiny, "self", max_resolution=16, store=store):
            tiny(sample, 7, context)
    assert {r.kind for r in store} == {"self", "cross"}
    assert {r.size for r in store.select(kind="self")} == {(4, 4), (2, 2), (1, 1)}
    _no_hooks_left(tiny)


# ---------------------------------------------------------------------------------------------
# study note 003's SelfAttention and a standalone Attention
# ---------------------------------------------------------------------------------------------
def test_seed003_self_attention_is_recorded_without_touching_its_output():
    torch.manual_seed(0)
    block = SelfAttention(16).eval()
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        plain = block(x)
        with capture_attention(block, "self") as store:
            out = block(x)
    assert torch.equal(out, plain)
    (rec,) = store.records
    assert rec.layer == "" and rec.size == (5, 6) and rec.probs.shape == (2, 1, 30, 30)
    torch.testing.assert_close(rec.probs.sum(-1), torch.ones(2, 1, 30))
    assert store.maps_for_query(4, 5)[""].shape == (2, 5, 6)
    _no_hooks_left(block)


def test_standalone_attention_gets_a_square_or_flat_grid():
    torch.manual_seed(0)
    attn = Attention(16, cross_attention_dim=8, heads=2, dim_head=8)
    with torch.no_grad(), capture_attention(attn) as store:
        attn(torch.randn(1, 9, 16), torch.randn(1, 3, 8))
        attn(torch.randn(1, 6, 16), torch.randn(1, 3, 8))
    assert [r.size for r in store] == [(3, 3), (1, 6)]


# ---------------------------------------------------------------------------------------------
# plot helpers (unetlab.plots.attention)
# ---------------------------------------------------------------------------------------------
def test_plot_helpers_draw_and_reject_bad_maps():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetlab.plots.attention import image_to_display, overlay, plot_maps, plot_query_map, plot_token_maps

    image = torch.rand(3, 32, 32) * 2 - 1                       # [-1, 1]
    maps = {"a": torch.rand(8, 8), "b": torch.rand(16, 16), "c": torch.rand(4, 4)}
    disp = image_to_display(image)
    assert disp.shape == (32, 32, 3) and disp.min() >= 0 and disp.max() <= 1
    def panels(fig):
        return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]

    def bars(fig):
        return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]

    fig = plot_maps(maps, image=image, ncols=2)
    assert len(panels(fig)) == 4 and [ax.get_title() for ax in panels(fig)[:3]] == ["a", "b", "c"]
    # one colour bar per map, in the map's own units: the values are drawn unchanged, the colours span min … max
    assert len(bars(fig)) == 3
    assert panels(fig)[1].images[-1].get_clim() == pytest.approx((float(maps["b"].min()), float(maps["b"].max())))
    # shared colour scale: 0 … the largest value of all maps, the values themselves unchanged
    fig2 = plot_maps([torch.full((2, 2), 0.5), torch.ones(2, 2)], normalize=False)
    assert panels(fig2)[0].images[-1].get_clim() == pytest.approx((0.0, 1.0))
    assert panels(fig2)[0].images[-1].get_array().max() == pytest.approx(0.5)
    fig3 = plot_query_map(torch.rand(6, 6), (2, 3), image=image)
    assert len(fig3.axes) == 3  # image, map, colour bar
    fig4 = plot_token_maps(image, {"red": torch.rand(8, 8) * 0.5, "circle": torch.rand(8, 8)}, title="a red circle")
    assert [ax.get_title() for ax in panels(fig4)] == ["image", "red", "circle"] and len(bars(fig4)) == 2
    # the words share one scale: the weaker word's map does not get stretched to the top
    assert panels(fig4)[1].images[-1].get_clim() == panels(fig4)[2].images[-1].get_clim()
    _, ax = plt.subplots()
    overlay(ax, None, torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        plot_maps([torch.rand(2, 4, 4)])
    with pytest.raises(ValueError, match="outside"):
        plot_query_map(torch.rand(4, 4), (4, 0))
    with pytest.raises(ValueError, match="image must be"):
        image_to_display(torch.rand(5, 4, 4, 4))
    with pytest.raises(TypeError, match="tensor or array"):
        plot_maps(["not a map"])
    plt.close("all")


def test_attention_layout_lists_sd15_attention_on_the_meta_device():
    from unetlab.capture import attention_layout
    from unetlab.sd.unet import SDUNet

    with torch.device("meta"):
        unet = SDUNet("sd15")
        layout = attention_layout(unet, torch.zeros(1, 4, 64, 64), 500, torch.zeros(1, 77, 768))
    grids = {(path.split(".attentions")[0], hw) for path, _, hw in layout}
    # SD 1.5: attention at 64, 32, 16 and the mid block's 8; none in down_blocks.3 or up_blocks.0
    assert grids == {("down_blocks.0", (64, 64)), ("down_blocks.1", (32, 32)), ("down_blocks.2", (16, 16)),
                     ("mid_block", (8, 8)), ("up_blocks.1", (16, 16)), ("up_blocks.2", (32, 32)),
                     ("up_blocks.3", (64, 64))}
    assert len(layout) == 32 and sum(k == "cross" for _, k, _ in layout) == 16
    # a non-square latent: grids follow it
    with torch.device("meta"):
        wide = attention_layout(unet, torch.zeros(1, 4, 32, 48), 500, torch.zeros(1, 77, 768))
    assert wide[0][2] == (32, 48)
    with pytest.raises(ValueError, match="no attention layer"):
        attention_layout(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    # every hook is gone again
    assert not any(m._forward_pre_hooks for m in unet.modules())
