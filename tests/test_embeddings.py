"""The shared sinusoidal timestep embedding against diffusers and against study note 003's printed formula."""
import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from unetlab.embeddings import sinusoidal_embedding

TIMESTEPS = torch.tensor([0, 1, 2, 10, 99, 500, 981, 999])


def seed003_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Study note 003 §19.3 ``TimeEmbedding.forward`` before its MLP, as printed."""
    half_dim = dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, device=t.device) * -emb)
    emb = t[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    return emb


@pytest.mark.parametrize(
    "dim, flip, shift",
    [
        (320, True, 0),  # Stable Diffusion 1.x / 2.x: Timesteps(320, True, 0)
        (256, True, 0),  # SDXL's add_time_proj
        (64, False, 1),  # study note 003 / DDPM
        (128, False, 0),
        (32, True, 1),
        (7, True, 0),  # odd: one zero column padded at the end
        (33, False, 1),
    ],
)
def test_matches_diffusers(dim, flip, shift):
    ours = sinusoidal_embedding(TIMESTEPS, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    ref = get_timestep_embedding(TIMESTEPS, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert ours.shape == ref.shape == (len(TIMESTEPS), dim)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_matches_diffusers_scale_max_period_and_fractional_t():
    t = torch.tensor([0.0, 0.5, 12.25, 999.0])
    ours = sinusoidal_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=100, scale=2.0)
    ref = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=100, scale=2.0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [8, 64, 320])
def test_seed003_formula_is_flip_false_shift_one(dim):
    ours = sinusoidal_embedding(TIMESTEPS, dim, flip_sin_to_cos=False, downscale_freq_shift=1)
    torch.testing.assert_close(ours, seed003_embedding(TIMESTEPS, dim), rtol=1e-5, atol=1e-4)


def test_seed003_and_sd_differ_but_share_the_first_frequency():
    seed = sinusoidal_embedding(TIMESTEPS, 320, flip_sin_to_cos=False, downscale_freq_shift=1)
    sd = sinusoidal_embedding(TIMESTEPS, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (seed - sd).abs().max() > 1.0
    # undo SD's flip: [cos | sin] -> [sin | cos]; only frequency i = 0 (= 1 in both) lines up
    sd_unflipped = torch.cat([sd[:, 160:], sd[:, :160]], dim=-1)
    same = (seed - sd_unflipped).abs().amax(dim=0) < 1e-5
    assert same.nonzero().flatten().tolist() == [0, 160]


def test_frequencies_and_norm():
    dim = 320
    emb = sinusoidal_embedding(torch.arange(1000), dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    # every row is [cos(w t) | sin(w t)], so its length is sqrt(half) for every t
    torch.testing.assert_close(emb.norm(dim=1), torch.full((1000,), math.sqrt(dim // 2)))
    # column 160 + i at t = 1 is sin(w_i), w_i = 10000 ** (-i / 160)
    w = 10000.0 ** (-torch.arange(160) / 160)
    torch.testing.assert_close(emb[1, 160:], torch.sin(w))


def test_shape_dtype_and_device():
    emb = sinusoidal_embedding(torch.tensor([3, 4], dtype=torch.int64), 16)
    assert emb.shape == (2, 16) and emb.dtype == torch.float32
    meta = sinusoidal_embedding(torch.zeros(5, device="meta"), 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert meta.shape == (5, 320) and meta.device.type == "meta"


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.tensor(5)])
def test_timesteps_must_be_one_dimensional(bad):
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        sinusoidal_embedding(bad, 320)


def test_timesteps_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"tensor of shape \(B,\), got list"):
        sinusoidal_embedding([0, 1], 320)


# ---------- chapter 4's plot helpers (unetlab.plots.embedding) ----------

def test_embedding_frequencies_are_the_embeddings_frequencies():
    from unetlab.plots.embedding import embedding_frequencies

    for shift, flip in ((0, True), (1, False)):
        w = embedding_frequencies(320, downscale_freq_shift=shift)
        assert w.shape == (160,) and w[0] == 1.0
        # a fractional t keeps every angle below pi/2, where asin inverts sin
        emb = sinusoidal_embedding(torch.tensor([0.5]), 320, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        sin_half = emb[0, 160:] if flip else emb[0, :160]
        torch.testing.assert_close(torch.asin(sin_half) / 0.5, w, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        embedding_frequencies(3, downscale_freq_shift=0)


def test_plot_helpers_return_figures_and_check_shapes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetlab.plots import embedding as P

    t = torch.arange(0, 100, 10)
    emb = sinusoidal_embedding(t, 16, flip_sin_to_cos=True, downscale_freq_shift=0)
    unit = torch.nn.functional.normalize(emb, dim=1)
    sim = unit @ unit.T
    figs = [
        P.plot_embedding_heatmap(emb, t),
        P.plot_embedding_columns(emb, t, [0, 8]),
        P.plot_frequencies({"a": P.embedding_frequencies(16, 0), "b": P.embedding_frequencies(16, 1)}),
        P.plot_similarity_matrix(sim, t),
        P.plot_similarity_profile(t, {"sim(0, t)": sim[0]}),
        P.plot_clean_estimates(torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8), [1, 2, 3], clean=torch.zeros(3, 8, 8)),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert len(figs[2].axes) == 3  # two variants of the same width: frequencies, periods, ratio
    assert len(figs[5].axes) == 2 * 4
    with pytest.raises(ValueError, match="timesteps"):
        P.plot_embedding_heatmap(emb, t[:-1])
    with pytest.raises(ValueError, match="shape"):
        P.plot_similarity_matrix(sim[:-1], t)
    with pytest.raises(ValueError, match="column"):
        P.plot_embedding_columns(emb, t, [16])
    with pytest.raises(ValueError, match="channels"):
        P.plot_clean_estimates(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), [5])
    plt.close("all")
