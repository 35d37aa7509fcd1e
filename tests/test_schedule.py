"""NoiseSchedule against diffusers' DDPMScheduler with SD's settings; forward noising; the loss; bad input."""
import pytest
import torch
from diffusers import DDPMScheduler

from unetlab.schedule import NoiseSchedule, psnr


@pytest.fixture(scope="module")
def reference():
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)


def test_betas_and_alphas_match_diffusers(reference):
    s = NoiseSchedule()
    assert s.betas.shape == (1000,)
    torch.testing.assert_close(s.betas, reference.betas, rtol=0, atol=0)
    torch.testing.assert_close(s.alphas, reference.alphas, rtol=0, atol=0)
    torch.testing.assert_close(s.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)


def test_linear_schedule_matches_diffusers():
    ref = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    s = NoiseSchedule(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)


def test_sd_schedule_does_not_reach_pure_noise():
    # the docstring's claim: alpha_bar_999 is about 0.0047, not 0
    a = NoiseSchedule().alphas_cumprod
    assert 0.004 < float(a[-1]) < 0.0055
    assert float(a[0]) == pytest.approx(1 - 0.00085, abs=1e-6)


def test_add_noise_matches_diffusers(reference):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 8, 8, generator=g)
    noise = torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 998, 999])
    ours = NoiseSchedule().add_noise(x0, noise, t)
    torch.testing.assert_close(ours, reference.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)


def test_predict_x0_inverts_add_noise():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    for t in (0, 500, 900):
        x_t = s.add_noise(x0, noise, t)
        torch.testing.assert_close(s.predict_x0(x_t, noise, t), x0, rtol=1e-4, atol=1e-3)


def test_timestep_forms_and_range_errors():
    s = NoiseSchedule()
    assert s.check_timesteps(5, batch_size=3).tolist() == [5, 5, 5]
    assert s.check_timesteps(torch.tensor(7)).tolist() == [7]
    assert s.check_timesteps(torch.tensor([1, 2])).dtype == torch.long
    for bad in (-1, 1000, torch.tensor([3, 1000])):
        with pytest.raises(ValueError, match=r"\[0, 999\]"):
            s.check_timesteps(bad)
    with pytest.raises(ValueError, match="integers"):
        s.check_timesteps(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="batch of 4"):
        s.check_timesteps(torch.tensor([1, 2]), batch_size=4)
    with pytest.raises(ValueError):
        s.add_noise(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), 1000)


def test_bad_schedule_settings():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="cosine")
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(beta_start=0.02, beta_end=0.01)


def test_training_loss_is_noise_prediction_mse():
    s = NoiseSchedule()
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn(4, 3, 8, 8)
    t = torch.tensor([10, 20, 30, 40])
    seen = {}

    def model(x_t, t_in, **cond):
        seen.update(cond)
        seen["t"] = t_in
        torch.testing.assert_close(x_t, s.add_noise(x0, noise, t))
        return torch.zeros_like(x_t)

    loss = s.training_loss(model, x0, t=t, noise=noise, context="ctx")
    torch.testing.assert_close(loss, (noise**2).mean())
    assert seen["context"] == "ctx" and seen["t"].tolist() == t.tolist()
    # a perfect noise predictor has zero loss
    assert float(s.training_loss(lambda x_t, t_in: noise, x0, t=t, noise=noise)) == 0.0
    # random t and noise are reproducible from a generator
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    zero = lambda x_t, t_in: torch.zeros_like(x_t)  # noqa: E731
    assert float(s.training_loss(zero, x0, generator=g1)) == float(s.training_loss(zero, x0, generator=g2))


def test_training_loss_weighted_mean():
    s = NoiseSchedule()
    x0, noise, t = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2), torch.tensor([5, 5])
    zero = lambda x_t, t_in: torch.zeros_like(x_t)  # noqa: E731
    # squared errors all 1: any weighting gives 1
    assert float(s.training_loss(zero, x0, t=t, noise=noise, weight=torch.rand(2, 1, 2, 2) + 0.1)) == pytest.approx(1.0)
    # errors 4 on one pixel per image, 1 elsewhere; weight 3 there: (3*4 + 3*1) / (3 + 3) = 2.5
    noise[:, :, 0, 0] = 2.0
    weight = torch.ones(2, 1, 2, 2)
    weight[:, :, 0, 0] = 3.0
    assert float(s.training_loss(zero, x0, t=t, noise=noise, weight=weight)) == pytest.approx(2.5)
    # a weight of ones is the plain MSE
    assert float(s.training_loss(zero, x0, t=t, noise=noise, weight=torch.ones(1))) == pytest.approx(float((noise**2).mean()))
    with pytest.raises(ValueError, match=">= 0"):
        s.training_loss(zero, x0, t=t, noise=noise, weight=-weight)
    with pytest.raises(ValueError, match="broadcast"):
        s.training_loss(zero, x0, t=t, noise=noise, weight=torch.ones(3, 1, 2, 2))


def test_training_loss_refuses_empty_batch_and_wrong_output():
    s = NoiseSchedule()
    with pytest.raises(ValueError, match="batch size"):
        s.training_loss(lambda x, t: x, torch.zeros(0, 3, 4, 4))
    with pytest.raises(ValueError, match="expected"):
        s.training_loss(lambda x, t: x[:, :1], torch.zeros(2, 3, 4, 4))


def test_psnr_range_convention():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.2)
    # MSE 0.04 on a range of 2 -> 10 log10(4 / 0.04) = 20 dB; the same images in [0, 1] give the same value
    assert float(psnr(b, a)) == pytest.approx(20.0)
    assert float(psnr((b + 1) / 2, (a + 1) / 2, data_range=1.0)) == pytest.approx(20.0)
    assert psnr(b, a, reduce=False).shape == (2,)
