"""NoiseSchedule against diffusers' DDPMScheduler with SD's settings; forward noising; the loss; bad input."""
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from unetlab.schedule import NoiseSchedule, denoise, denoising_quality, psnr, rescale_zero_terminal_snr


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
    # the docstring's claim: alpha_bar_999 is about 0.0047, not 0, so x_999 keeps sqrt(alpha_bar_999) ≈ 0.068
    # of the image: the signal leak
    a = NoiseSchedule().alphas_cumprod
    assert 0.004 < float(a[-1]) < 0.0055
    assert float(a[-1].sqrt()) == pytest.approx(0.068, abs=0.001)
    assert float(a[0]) == pytest.approx(1 - 0.00085, abs=1e-6)
    # the zero-terminal-SNR option removes it, and keeps the first step
    zero = NoiseSchedule(rescale_betas_zero_snr=True).alphas_cumprod
    assert float(zero[-1]) == 0.0 and float(zero[-2]) > 0
    assert float(zero[0]) == pytest.approx(float(a[0]), abs=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    dict(beta_schedule="squaredcos_cap_v2"),
])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_every_beta_schedule_and_zero_snr_match_diffusers(kwargs, zero_snr):
    ref = DDPMScheduler(**kwargs, rescale_betas_zero_snr=zero_snr)
    s = NoiseSchedule(**kwargs, rescale_betas_zero_snr=zero_snr)
    torch.testing.assert_close(s.betas, ref.betas, rtol=0, atol=0)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    torch.testing.assert_close(rescale_zero_terminal_snr(ref.betas.clone()), diffusers_rescale(ref.betas.clone()), rtol=0, atol=0)


def test_from_config_reads_diffusers_scheduler_configs():
    sd15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
            "clip_sample": False}
    s = NoiseSchedule.from_config(sd15)
    assert s.config == NoiseSchedule().config and torch.equal(s.alphas_cumprod, NoiseSchedule().alphas_cumprod)
    # SD 2.1 (768): a v-prediction model
    sd21 = dict(sd15, _class_name="DDIMScheduler", prediction_type="v_prediction")
    assert NoiseSchedule.from_config(sd21).prediction_type == "v_prediction"
    # missing keys mean what they mean to diffusers (linear 0.0001 .. 0.02, epsilon)
    empty = NoiseSchedule.from_config({})
    assert empty.prediction_type == "epsilon" and empty.beta_schedule == "linear"
    torch.testing.assert_close(empty.alphas_cumprod, DDPMScheduler.from_config({}).alphas_cumprod, rtol=0, atol=0)
    # a diffusers scheduler's own (frozen) config, and our config round trip
    ref = DDPMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, prediction_type="sample")
    ours = NoiseSchedule.from_config(ref.config)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    assert ours.prediction_type == "sample" and NoiseSchedule(**ours.config).config == ours.config
    assert "rescale_betas_zero_snr=True" in repr(ours)


def test_from_config_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
        NoiseSchedule.from_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="trained_betas"):
        NoiseSchedule.from_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="prediction_type='eps'"):
        NoiseSchedule.from_config({"prediction_type": "eps"})
    with pytest.raises(ValueError, match="thresholding"):
        NoiseSchedule.from_config({"thresholding": True})
    # several problems: all of them in one message
    with pytest.raises(ValueError, match="trained_betas.*beta_schedule"):
        NoiseSchedule.from_config({"trained_betas": [0.1], "beta_schedule": "cosine"})
    with pytest.raises(TypeError, match="dict"):
        NoiseSchedule.from_config("scheduler_config.json")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        NoiseSchedule(rescale_betas_zero_snr="yes")
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule(prediction_type="v")


def _targets(s, x0, noise, t):
    return {"epsilon": noise, "v_prediction": s.velocity(x0, noise, t), "sample": x0}


@pytest.mark.parametrize("zero_snr", [False, True])
def test_predict_x0_and_eps_invert_every_target(zero_snr):
    s = NoiseSchedule(rescale_betas_zero_snr=zero_snr)
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 300, 900, 998])
    x_t = s.add_noise(x0, noise, t)
    for kind, output in _targets(s, x0, noise, t).items():
        torch.testing.assert_close(s.predict_x0(x_t, output, t, prediction_type=kind), x0, rtol=1e-3, atol=1e-3, msg=kind)
        torch.testing.assert_close(s.predict_eps(x_t, output, t, prediction_type=kind), noise, rtol=1e-3, atol=1e-3, msg=kind)
        torch.testing.assert_close(s.target(x0, noise, t, kind), output)
    # None means the schedule's own prediction type
    v = NoiseSchedule(prediction_type="v_prediction")
    out = v.velocity(x0, noise, t)
    torch.testing.assert_close(v.predict_x0(v.add_noise(x0, noise, t), out, t), x0, rtol=1e-3, atol=1e-3)


def test_velocity_matches_diffusers_get_velocity(reference):
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([1, 500, 999])
    torch.testing.assert_close(NoiseSchedule().velocity(x0, noise, t), reference.get_velocity(x0, noise, t),
                               rtol=1e-6, atol=1e-6)


def test_epsilon_at_zero_terminal_snr_is_refused():
    s = NoiseSchedule(rescale_betas_zero_snr=True)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="v_prediction"):
        s.predict_x0(x, x, 999)
    # v and x0 predictions are defined there: x0 = -v, eps = x_t
    torch.testing.assert_close(s.predict_x0(x, x, 999, prediction_type="v_prediction"), -x)
    torch.testing.assert_close(s.predict_eps(x, 2 * x, 999, prediction_type="sample"), x)


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
    with pytest.raises(ValueError, match="beta_schedule.*'cosine'"):
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


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_training_loss_trains_the_chosen_target(kind):
    s = NoiseSchedule(prediction_type=kind)
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([10, 400, 999])
    target = _targets(s, x0, noise, t)[kind]
    perfect = lambda x_t, t_in: target  # noqa: E731
    # the schedule's type by default, any type when asked
    assert float(s.training_loss(perfect, x0, t=t, noise=noise)) == 0.0
    assert float(s.training_loss(perfect, x0, t=t, noise=noise, prediction_type="epsilon")) > 0.1
    eps_model = lambda x_t, t_in: noise  # noqa: E731
    assert float(s.training_loss(eps_model, x0, t=t, noise=noise, prediction_type="epsilon")) == 0.0
    zero = lambda x_t, t_in: torch.zeros_like(x_t)  # noqa: E731
    torch.testing.assert_close(s.training_loss(zero, x0, t=t, noise=noise), (target**2).mean())
    with pytest.raises(ValueError, match="prediction_type"):
        s.training_loss(zero, x0, t=t, noise=noise, prediction_type="x0")


def test_epsilon_only_paths_refuse_other_prediction_types():
    v = NoiseSchedule(prediction_type="v_prediction")
    x0 = torch.zeros(1, 3, 4, 4)
    model = lambda x_t, t: x_t  # noqa: E731
    with pytest.raises(ValueError, match="denoise assumes.*prediction_type='v_prediction'.*predict_x0"):
        denoise(model, x0, 10, torch.zeros_like(x0), schedule=v)
    with pytest.raises(ValueError, match="denoising_quality assumes.*'epsilon'"):
        denoising_quality(model, x0, [10], schedule=v)
    # the epsilon schedule still works
    assert set(denoising_quality(model, x0, [10])[10]) == {"mse", "psnr"}
