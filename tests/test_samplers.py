"""DDPM and DDIM samplers against diffusers' schedulers configured as Stable Diffusion's."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from unetlab.samplers import DDIMSampler, DDPMSampler, ddim_step, ddpm_step, inference_timesteps, leading_timesteps
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


# --- every prediction type x timestep spacing x zero terminal SNR x (DDIM eta 0, eta > 0, DDPM) ------------

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")
# SD's scheduler_config.json, as diffusers writes it (the keys of a PNDMScheduler config plus the new ones)
SD_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}
N_STEPS = 7  # does not divide 1000: exercises the rounding of every spacing


def _random_model(x, t):
    """A made-up "model" whose output depends on x and t (t: 0-d from diffusers' loop, (B,) from ours)."""
    bias = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(11))
    return 0.6 * x * torch.cos(t.float() / 300).reshape(-1, 1, 1, 1) + bias


def _run_diffusers(ref, x_T, seed, eta=None):
    g = torch.Generator().manual_seed(seed)
    x, steps = x_T.clone(), []
    for t in ref.timesteps:
        kwargs = {} if eta is None else {"eta": eta}
        out = ref.step(_random_model(x, t), t, x, generator=g, **kwargs)
        x = out.prev_sample
        steps.append((int(t), x, out.pred_original_sample))
    return steps


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("kind", ["ddim eta=0", "ddim eta=0.6", "ddpm"])
def test_every_combination_matches_diffusers_step_for_step(kind, prediction_type, spacing, zero_snr):
    cfg = dict(SD_CONFIG, prediction_type=prediction_type, timestep_spacing=spacing, rescale_betas_zero_snr=zero_snr)
    if kind.startswith("ddim"):
        eta = float(kind.split("=")[1])
        ref = DDIMScheduler.from_config(cfg)
        make = lambda: DDIMSampler.from_config(cfg, N_STEPS, eta=eta)  # noqa: E731
    else:
        eta = None
        ref = DDPMScheduler.from_config(cfg)
        make = lambda: DDPMSampler.from_config(cfg, N_STEPS)  # noqa: E731
    ref.set_timesteps(N_STEPS)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    if prediction_type == "epsilon" and zero_snr and int(ref.timesteps[0]) == 999:
        # alpha_bar_999 = 0: x0 = (x - eps) / 0. diffusers returns non-finite values; we refuse up front
        first = ref.step(_random_model(x_T, ref.timesteps[0]), ref.timesteps[0], x_T,
                         generator=torch.Generator().manual_seed(0), **({} if eta is None else {"eta": eta}))
        assert not torch.isfinite(first.pred_original_sample).all()
        with pytest.raises(ValueError, match="zero terminal SNR"):
            make()
        return
    ours = make()
    assert ours.prediction_type == prediction_type
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    expected = _run_diffusers(ref, x_T, seed=5, eta=eta)
    final, trajectory = ours.sample(_random_model, x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(5),
                                    progress=False, return_trajectory=True)
    assert [t for t, _, _ in trajectory] == [t for t, _, _ in expected]
    for (t, x_prev, x0), (_, ref_prev, ref_x0) in zip(trajectory, expected):
        assert torch.isfinite(x_prev).all()
        torch.testing.assert_close(x0, ref_x0, rtol=1e-6, atol=1e-6, msg=f"x0 estimate at t={t}")
        torch.testing.assert_close(x_prev, ref_prev, rtol=1e-6, atol=1e-6, msg=f"x_prev at t={t}")
    torch.testing.assert_close(final, expected[-1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_timesteps_of_every_spacing_and_step_count_match_diffusers(spacing):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=1)
    for n in range(1, 1000):
        ref.set_timesteps(n)
        expected = ref.timesteps.tolist()
        ours = inference_timesteps(1000, n, spacing, steps_offset=1).tolist()
        assert len(ours) == n
        # diffusers' "trailing" float arange adds a step t = -1 for some n (61, 103, ...): we stop at n
        assert ours == expected[:n] and expected[n:] in ([], [-1]), (spacing, n)
    # DDPM computes its timesteps the same way
    ddpm = DDPMScheduler(timestep_spacing=spacing, steps_offset=1)
    ddpm.set_timesteps(30)
    assert DDPMSampler(num_inference_steps=30, timestep_spacing=spacing).timesteps.tolist() == ddpm.timesteps.tolist()


def test_trailing_and_linspace_start_at_the_last_train_step():
    assert DDIMSampler(num_inference_steps=50, timestep_spacing="trailing").timesteps[[0, 1, -1]].tolist() == [999, 979, 19]
    assert DDIMSampler(num_inference_steps=50, timestep_spacing="linspace").timesteps[[0, -1]].tolist() == [999, 0]


def test_missing_config_keys_take_diffusers_defaults():
    # no clip_sample, set_alpha_to_one, steps_offset: diffusers clips x0 to [-1, 1], uses alpha_bar = 1 past the
    # end and no offset; a model output big enough to be clipped shows whether we do the same
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    for ours, ref in ((DDIMSampler.from_config(cfg, 10), DDIMScheduler.from_config(cfg)),
                      (DDPMSampler.from_config(cfg, 10), DDPMScheduler.from_config(cfg))):
        ref.set_timesteps(10)
        assert ours.timesteps.tolist() == ref.timesteps.tolist() and ours.timesteps[-1] == 0
        assert ours.clip_sample
        x = 5 * torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        for t in ref.timesteps.tolist():
            got, x0 = ours.step(-x, t, x, noise=torch.zeros_like(x))
            expected = ref.step(-x, t, x, generator=torch.Generator().manual_seed(0))
            assert float(x0.abs().max()) <= 1.0
            torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-6, atol=1e-6)
            if t == 0 or isinstance(ours, DDIMSampler):  # DDPM adds noise for t > 0: compared above already
                torch.testing.assert_close(got, expected.prev_sample, rtol=1e-5, atol=1e-5)


def test_sampler_config_round_trips_through_diffusers():
    ours = DDIMSampler(NoiseSchedule(prediction_type="v_prediction", rescale_betas_zero_snr=True), 20,
                       timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True)
    ref = DDIMScheduler.from_config(ours.config)
    ref.set_timesteps(20)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert ref.config.prediction_type == "v_prediction" and ref.config.rescale_betas_zero_snr
    x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(ours.step(out, 999, x)[0], ref.step(out, 999, x).prev_sample, rtol=1e-6, atol=1e-6)
    again = DDIMSampler.from_config(ours.config, 20)
    assert again.config == ours.config and torch.equal(again.schedule.alphas_cumprod, ours.schedule.alphas_cumprod)
    ddpm = DDPMSampler(num_inference_steps=5, prediction_type="sample")
    assert DDPMSampler.from_config(ddpm.config, 5).config == ddpm.config


def test_sampler_prediction_type_overrides_the_schedule():
    v_schedule = NoiseSchedule(prediction_type="v_prediction")
    assert DDIMSampler(v_schedule).prediction_type == "v_prediction"
    assert DDIMSampler(v_schedule, prediction_type="sample").prediction_type == "sample"
    assert DDPMSampler().prediction_type == "epsilon"
    assert DDIMSampler.from_config(dict(SD_CONFIG, prediction_type="v_prediction"), 25,
                                   prediction_type="epsilon").prediction_type == "epsilon"


# --- the witness: an exact v-model of a one-image data set ------------------------------------------


def test_exact_v_model_lands_on_its_image_only_when_read_as_v():
    from unetlab.data import HELDOUT_SEED, make_shapes

    x0 = make_shapes(1, seed=HELDOUT_SEED).images  # (1, 3, 32, 32): the whole data set
    schedule = NoiseSchedule(prediction_type="v_prediction")  # SD 2.x 768's schedule

    def exact_v(x_t, t):
        # the data set holds one image, so x_t and t determine eps, hence v = sqrt(a) eps - sqrt(1 - a) x0
        a = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return schedule.velocity(x0.expand_as(x_t), eps, t)

    def run(prediction_type):
        return DDIMSampler(schedule, 25, prediction_type=prediction_type).sample(
            exact_v, x0.shape, generator=torch.Generator().manual_seed(0), progress=False, return_trajectory=True)

    rms = lambda a: float((a - x0).pow(2).mean().sqrt())  # noqa: E731
    as_v, trajectory = run(None)
    as_eps, _ = run("epsilon")
    # read as v: the last x0 estimate is the image; the sample keeps only SD's final sqrt(1 - alpha_bar_0) noise
    assert rms(trajectory[-1][2]) < 1e-3
    assert rms(as_v) < 1.5 * float((1 - schedule.alphas_cumprod[0]).sqrt())
    # read as eps (the old samplers' assumption): far from the image
    assert rms(as_eps) > 0.2 and rms(as_eps) > 5 * rms(as_v)


def test_zero_terminal_snr_with_epsilon_is_refused_before_any_model_call():
    zero = NoiseSchedule(rescale_betas_zero_snr=True)
    calls = []
    with pytest.raises(ValueError, match="v_prediction"):
        DDIMSampler(zero, 10, timestep_spacing="trailing").sample(lambda x, t: calls.append(t) or x, (1, 3, 4, 4))
    with pytest.raises(ValueError, match="t=999"):
        DDPMSampler(zero)
    assert calls == []
    # leading spacing never visits t = 999: allowed, as in diffusers
    assert DDIMSampler(zero, 10).timesteps[0] == 901
    # a v-model is fine there
    DDIMSampler(NoiseSchedule(rescale_betas_zero_snr=True, prediction_type="v_prediction"), 10, timestep_spacing="trailing")


def test_sampler_bad_new_settings():
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMSampler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDPMSampler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMSampler(prediction_type="eps")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(eta=True)
    with pytest.raises(ValueError, match="clip_sample_range"):
        DDIMSampler(clip_sample=True, clip_sample_range=0)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        DDIMSampler({"beta_schedule": "linear"})
    with pytest.raises(TypeError, match="unknown overrides"):
        DDIMSampler.from_config(SD_CONFIG, 10, etta=0.5)
    with pytest.raises(TypeError, match="unknown overrides.*'eta'"):
        DDPMSampler.from_config(SD_CONFIG, 10, eta=0.5)
    with pytest.raises(TypeError, match="dict"):
        DDIMSampler.from_config("scheduler_config.json", 10)
    with pytest.raises(ValueError, match="timestep_spacing='karras'"):
        DDIMSampler.from_config(dict(SD_CONFIG, timestep_spacing="karras"), 10)
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        DDPMSampler.from_config(dict(SD_CONFIG, variance_type="learned_range"), 10)
    with pytest.raises(ValueError, match="thresholding"):
        DDIMSampler.from_config(dict(SD_CONFIG, thresholding=True), 10)
    with pytest.raises(ValueError, match="prev_t"):
        ddim_step(NoiseSchedule(), torch.zeros(1, 3, 4, 4), 500, torch.zeros(1, 3, 4, 4), 600)


def test_step_functions_take_prediction_type():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    x_t = s.add_noise(x0, noise, 600)
    # the true eps, v and x0 of the same x_t all give the same step
    outputs = {"epsilon": noise, "v_prediction": s.velocity(x0, noise, 600), "sample": x0}
    for step in (lambda o, k: ddim_step(s, o, 600, x_t, 400, prediction_type=k),
                 lambda o, k: ddpm_step(s, o, 600, x_t, 400, noise=torch.zeros_like(x_t), prediction_type=k)):
        results = {k: step(o, k) for k, o in outputs.items()}
        for k, (x_prev, x0_hat) in results.items():
            torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4, msg=k)
            torch.testing.assert_close(x_prev, results["epsilon"][0], rtol=1e-4, atol=1e-4, msg=k)
