"""Classifier-free guidance (unetlab.guidance): every timestep form the UNet takes, guidance_rescale against
diffusers' rescale_noise_cfg, any prediction type, bad input."""
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as diffusers_rescale
from helpers import randomise

import unetlab
from unetlab.configs import TINY
from unetlab.guidance import check_guidance_rescale, check_guidance_scale, guided_eps, rescale_noise_cfg
from unetlab.schedule import NoiseSchedule
from unetlab.sd.unet import SDUNet

B, SIZE = 2, 16


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return randomise(SDUNet(TINY)).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, TINY.in_channels, SIZE, SIZE, generator=g)
    text = torch.randn(B, 5, TINY.cross_attention_dim, generator=g)
    empty = torch.randn(1, 5, TINY.cross_attention_dim, generator=g).expand(B, -1, -1)
    return x, text, empty


@torch.no_grad()
def _reference(unet, x, t_batch, text, empty, scale):
    # the formula, from two separate UNet calls with a (B,) timestep
    e_u, e_c = unet(x, t_batch, empty), unet(x, t_batch, text)
    return e_u + scale * (e_c - e_u)


@pytest.mark.parametrize("scale", [0.0, 1.0, 0.5, 4.0])
@pytest.mark.parametrize("form", ["int", "float", "0-d", "(1,)", "(B,)", "(B,) int32"])
def test_every_timestep_form_gives_the_formula(unet, inputs, scale, form):
    x, text, empty = inputs
    t = {"int": 700, "float": 700.0, "0-d": torch.tensor(700), "(1,)": torch.tensor([700]),
         "(B,)": torch.full((B,), 700), "(B,) int32": torch.full((B,), 700, dtype=torch.int32)}[form]
    with torch.no_grad():
        got = guided_eps(unet, x, t, text, empty, scale)
    assert got.shape == x.shape
    torch.testing.assert_close(got, _reference(unet, x, torch.full((B,), 700), text, empty, scale), rtol=1e-4, atol=1e-4)


def test_per_image_timesteps_stay_with_their_image(unet, inputs):
    x, text, empty = inputs
    t = torch.tensor([900, 100])
    with torch.no_grad():
        both = guided_eps(unet, x, t, text, empty, 3.0)
        for i in range(B):
            alone = guided_eps(unet, x[i : i + 1], int(t[i]), text[i : i + 1], empty[i : i + 1], 3.0)
            torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-4, atol=1e-4)


def test_sampler_loop_timesteps_work(unet, inputs):
    # what iterating sampler.timesteps yields (0-d long tensors), as in chapter 6's hand-written loop
    from unetlab.samplers import DDIMSampler

    x, text, empty = inputs
    with torch.no_grad():
        for t in DDIMSampler(num_inference_steps=2).timesteps:
            assert t.ndim == 0
            torch.testing.assert_close(guided_eps(unet, x, t, text, empty, 2.0),
                                       _reference(unet, x, t.expand(B), text, empty, 2.0), rtol=1e-4, atol=1e-4)


def test_one_prompt_for_the_whole_batch(unet, inputs):
    x, text, empty = inputs
    with torch.no_grad():
        one = guided_eps(unet, x, 500, text[:1], empty[:1], 3.0)
        torch.testing.assert_close(one, _reference(unet, x, torch.full((B,), 500), text[:1].expand(B, -1, -1),
                                                   empty, 3.0), rtol=1e-4, atol=1e-4)


def test_bad_timesteps_and_contexts(unet, inputs):
    x, text, empty = inputs
    for bad, what in ((torch.tensor([1, 2, 3]), r"\(3,\)"), (torch.zeros(B, 1), r"\(2, 1\)"),
                      ("700", "str"), (True, "bool"), (None, "NoneType"), (torch.tensor([True, False]), "bool")):
        with pytest.raises(ValueError, match=f"guided_eps.*{what}"):
            guided_eps(unet, x, bad, text, empty, 3.0)
    with pytest.raises(ValueError, match="context holds 3 prompts for a batch of 2"):
        guided_eps(unet, x, 10, torch.cat([text, text[:1]]), empty, 3.0)
    with pytest.raises(ValueError, match=r"uncond_context must be a \(B, L, D\)"):
        guided_eps(unet, x, 10, text, empty[0], 3.0)
    with pytest.raises(ValueError, match="same"):
        guided_eps(unet, x, 10, text, empty[:, :3], 3.0)
    with pytest.raises(ValueError, match=">= 0"):
        guided_eps(unet, x, 10, text, empty, -1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        guided_eps(unet, x, 10, text, empty, 3.0, guidance_rescale=1.5)


def test_rescale_noise_cfg_matches_diffusers():
    g = torch.Generator().manual_seed(2)
    cfg, text = 3 * torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for phi in (0.0, 0.3, 0.7, 1.0):
        torch.testing.assert_close(rescale_noise_cfg(cfg, text, phi), diffusers_rescale(cfg, text, phi), rtol=0, atol=0)
    # phi = 1: every image has the text prediction's standard deviation
    torch.testing.assert_close(rescale_noise_cfg(cfg, text, 1.0).flatten(1).std(dim=1), text.flatten(1).std(dim=1))
    with pytest.raises(ValueError, match="same shape"):
        rescale_noise_cfg(cfg, text[:1], 0.5)


def test_guidance_rescale_in_guided_eps_is_diffusers_step(unet, inputs):
    x, text, empty = inputs
    with torch.no_grad():
        e_u, e_c = unet(x, 300, empty), unet(x, 300, text)
        expected = diffusers_rescale(e_u + 5.0 * (e_c - e_u), e_c, guidance_rescale=0.7)
        got = guided_eps(unet, x, 300, text, empty, 5.0, guidance_rescale=0.7)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        # and it changes the result (the test above could not tell otherwise)
        assert not torch.allclose(got, guided_eps(unet, x, 300, text, empty, 5.0), atol=1e-3)
        # at s = 1 the output is the text prediction, rescaled or not
        torch.testing.assert_close(guided_eps(unet, x, 300, text, empty, 1.0, guidance_rescale=0.7), e_c)


def test_guidance_combines_raw_outputs_of_any_prediction_type():
    # a "v-model": guiding its v and then converting equals guiding the eps it implies (conversion is affine)
    s = NoiseSchedule(prediction_type="v_prediction")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 4, 8, 8, generator=g)
    v_text, v_uncond = torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 4, 8, 8, generator=g)

    def v_unet(sample, t, context):
        # context[:, 0, 0] marks the half: 1 = text, 0 = unconditional
        return torch.where(context[:, :1, :1, None] > 0.5, v_text.repeat(2, 1, 1, 1)[: len(sample)],
                           v_uncond.repeat(2, 1, 1, 1)[: len(sample)])

    text, empty = torch.ones(B, 1, 1), torch.zeros(B, 1, 1)
    guided_v = guided_eps(v_unet, x, 600, text, empty, 7.5)
    torch.testing.assert_close(guided_v, v_uncond + 7.5 * (v_text - v_uncond))
    eps_u, eps_c = s.predict_eps(x, v_uncond, 600), s.predict_eps(x, v_text, 600)
    torch.testing.assert_close(s.predict_eps(x, guided_v, 600), eps_u + 7.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_checks_and_reexports():
    assert check_guidance_scale(7) == 7.0 and check_guidance_rescale(0.7) == 0.7
    for bad in (True, "0.7", None):
        with pytest.raises(TypeError):
            check_guidance_rescale(bad)
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            check_guidance_rescale(bad)
    import unetlab.text2img as text2img

    assert text2img.guided_eps is guided_eps and text2img.check_guidance_scale is check_guidance_scale
    assert unetlab.guided_eps is guided_eps
