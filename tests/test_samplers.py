"""DDPM and DDIM samplers against diffusers' schedulers configured as Stable Diffusion's."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from unetlab.samplers import DDIMSampler, DDPMSampler, leading_timesteps
from unetlab.schedule import NoiseSchedule

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          clip_sample=False, steps_offset=1)


def ddim_reference(n):
    s = DDIMScheduler(**SD, set_alpha_to_one=False)
    s.set_timesteps(n)
    return s


def ddpm_reference(n=None):
    s = DDPMScheduler(**SD)
    if n is not None:
        s.set_timesteps(n)
    return s


@pytest.mark.parametrize("n", [1, 10, 50, 999])
def test_ddim_timesteps_match_diffusers(n):
    assert DDIMSampler(num_inference_steps=n).timesteps.tolist() == ddim_reference(n).timesteps.tolist()


def test_ddim_fifty_steps_start_at_981():
    assert DDIMSampler(num_inference_steps=50).timesteps[[0, 1, -1]].tolist() == [981, 961, 1]


@pytest.mark.parametrize("n", [10, 50])
def test_ddpm_timesteps_match_diffusers(n):
    assert DDPMSampler(num_inference_steps=n).timesteps.tolist() == ddpm_reference(n).timesteps.tolist()
    assert DDPMSampler().timesteps.tolist() == ddpm_reference().timesteps.tolist()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(eta):
    ref = ddim_reference(20)
    ours = DDIMSampler(num_inference_steps=20, eta=eta)
    x, eps, noise = _inputs()
    for t in ref.timesteps.tolist():  # includes the last step, whose prev is alpha_bar_0
        expected = ref.step(eps, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
        got, x0 = ours.step(eps, t, x, noise=noise)
        torch.testing.assert_close(got, expected.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [None, 25])
def test_ddpm_step_matches_diffusers(n):
    ref = ddpm_reference(n)
    ours = DDPMSampler(num_inference_steps=n)
    x, eps, noise = _inputs(1)
    for t in ref.timesteps.tolist()[:: 97 if n is None else 1] + [int(ref.timesteps[-1])]:
        # diffusers draws its noise with randn from the generator: give both the same generator state
        g_ref = torch.Generator().manual_seed(t)
        expected = ref.step(eps, t, x, generator=g_ref).prev_sample
        g_ours = torch.Generator().manual_seed(t)
        step_noise = torch.randn(x.shape, generator=g_ours) if t > 0 else None
        got, _ = ours.step(eps, t, x, noise=step_noise)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_full_ddim_loop_matches_diffusers_loop():
    # the same made-up "model" in both loops: the whole 10-step chain agrees
    model = lambda x, t: 0.3 * x + 0.001 * t.float().view(-1, 1, 1, 1)  # noqa: E731
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = DDIMSampler(num_inference_steps=10).sample(model, x_T.shape, x_T=x_T, progress=False)
    ref = ddim_reference(10)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(2)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_sampling_is_reproducible_and_returns_trajectory():
    model = lambda x, t: 0.1 * x  # noqa: E731
    a = DDPMSampler(num_inference_steps=5).sample(model, (1, 3, 4, 4), generator=torch.Generator().manual_seed(0), progress=False)
    b, traj = DDPMSampler(num_inference_steps=5).sample(
        model, (1, 3, 4, 4), generator=torch.Generator().manual_seed(0), progress=False, return_trajectory=True
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [t for t, _, _ in traj] == DDPMSampler(num_inference_steps=5).timesteps.tolist()


def test_sampler_bad_settings():
    with pytest.raises(ValueError, match="outside"):
        leading_timesteps(1000, 1000, steps_offset=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMSampler(num_inference_steps=0)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(eta=2.0)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        DDIMSampler().step(torch.zeros(1, 3, 4, 4), 1000, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        DDIMSampler(num_inference_steps=2).sample(lambda x, t: x, (0, 3, 4, 4), progress=False)
    with pytest.raises(TypeError, match="callable"):
        DDIMSampler(num_inference_steps=2).sample("model", (1, 3, 4, 4), progress=False)
    assert isinstance(DDIMSampler().schedule, NoiseSchedule)
