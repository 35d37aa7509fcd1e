"""Stable Diffusion's noise schedule, forward noising, the three prediction targets and the training loss.

SD (1.x and 2.x) trains with 1000 timesteps and "scaled-linear" betas: the *square roots* of the betas
are spaced linearly from sqrt(0.00085) to sqrt(0.012). From the betas:

    alpha_t     = 1 - beta_t
    alpha_bar_t = alpha_0 * alpha_1 * ... * alpha_t             (``alphas_cumprod``)
    x_t         = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

Signal leak. At the last step alpha_bar_999 ≈ 0.0047, so x_999 still holds sqrt(alpha_bar_999) ≈ 0.068 of
the clean signal (``tests/test_schedule.py`` computes it): SD's schedule never reaches pure noise, yet
samplers start from pure noise. A model trained this way never sees an x_999 without a trace of the
image's mean, so it cannot make very bright or very dark images. Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed" (WACV), fix this signal leak with the zero-terminal-SNR options:
``rescale_betas_zero_snr=True`` (:func:`rescale_zero_terminal_snr`, alpha_bar_999 = 0 exactly), which
needs ``prediction_type="v_prediction"`` (an ε prediction says nothing about x_0 when alpha_bar = 0),
and ``timestep_spacing="trailing"`` in the samplers (so that sampling starts at t = 999).

What the model predicts (``prediction_type``, diffusers' names), each one a function of (x_0, eps, t):

    "epsilon"       eps                                               (SD 1.x, SD 2.x base)
    "v_prediction"  v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0   (SD 2.x 768 models; Salimans & Ho 2022)
    "sample"        x_0

:meth:`NoiseSchedule.predict_x0` and :meth:`NoiseSchedule.predict_eps` turn any of them into x_0 and eps.

The numbers equal diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` built from the same config (tested in
``tests/test_schedule.py``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import torch
import torch.nn.functional as F

__all__ = [
    "PREDICTION_TYPES", "BETA_SCHEDULES", "NoiseSchedule", "rescale_zero_terminal_snr", "betas_for_alpha_bar",
    "check_prediction_type", "convert_model_output", "psnr", "fixed_noise", "denoise", "denoising_quality",
]

#: what a model may predict, with diffusers' names
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: beta schedules this module builds (diffusers' DDIM and DDPM schedulers know these three)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

#: diffusers' defaults (``DDIMScheduler`` and ``DDPMScheduler``) for the schedule keys a config may leave out
DIFFUSERS_SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "rescale_betas_zero_snr": False,
    "prediction_type": "epsilon",
}


def check_prediction_type(prediction_type) -> str:
    """``prediction_type`` if it is one of :data:`PREDICTION_TYPES`; anything else raises ``ValueError``."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))}, got {prediction_type!r}"
        )
    return prediction_type


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The "squaredcos_cap_v2" betas (Nichol & Dhariwal 2021's cosine schedule), as diffusers' ``betas_for_alpha_bar``.

    alpha_bar(s) = cos²((s + 0.008) / 1.008 · π/2) for s in [0, 1]; beta_i = min(1 - alpha_bar((i+1)/T) /
    alpha_bar(i/T), max_beta). Returns (T,) float32.
    """

    def alpha_bar_fn(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that the last alpha_bar is exactly 0 (zero terminal SNR), keeping the first one.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1; the
    same operations as diffusers' ``rescale_zero_terminal_snr``. ``betas`` (T,) float -> (T,) float:
    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first value is unchanged;
    the last beta becomes 1.
    """
    if not isinstance(betas, torch.Tensor) or betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be a 1-d tensor with at least 2 values, got {betas!r}")
    # alpha_bar_t: (T,)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
    # shift: sqrt(alpha_bar_T) -> 0
    alphas_bar_sqrt -= alphas_bar_sqrt_T
    # scale: sqrt(alpha_bar_0) -> its old value
    alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)
    # back to alpha_bar, then undo the cumulative product: alpha_t = alpha_bar_t / alpha_bar_{t-1}
    alphas_bar = alphas_bar_sqrt**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = torch.cat([alphas_bar[0:1], alphas])
    return 1 - alphas


def convert_model_output(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's raw output -> ``(x0, eps)``, the formulas of diffusers' ``DDIMScheduler.step``.

    ``alpha_bar`` is alpha_bar_t as a 0-d tensor or shaped to broadcast against ``x_t`` (e.g. (B, 1, 1, 1)).
    ``prediction_type="epsilon"`` at a timestep with alpha_bar = 0 (zero terminal SNR) raises ``ValueError``:
    x_0 = (x_t - eps) / 0 is undefined there (diffusers returns inf/NaN).
    """
    check_prediction_type(prediction_type)
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"the model output must have the sample's shape {tuple(x_t.shape)}, got {tuple(model_output.shape)}"
        )
    beta_prod = 1 - alpha_bar
    if prediction_type == "epsilon":
        if bool((alpha_bar == 0).any()):
            raise ValueError(
                "prediction_type='epsilon' at a timestep whose alpha_bar is 0 (a zero-terminal-SNR schedule at its "
                "last step): x0 = (x_t - eps) / sqrt(alpha_bar) is undefined there. Zero terminal SNR needs a "
                "v-prediction model (prediction_type='v_prediction', Lin et al. 2024), or timesteps that skip t=T-1"
            )
        # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        pred_original_sample = (x_t - beta_prod ** (0.5) * model_output) / alpha_bar ** (0.5)
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        # eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
        pred_epsilon = (x_t - alpha_bar ** (0.5) * pred_original_sample) / beta_prod ** (0.5)
    else:
        # x0 = sqrt(a) x_t - sqrt(1 - a) v
        pred_original_sample = (alpha_bar**0.5) * x_t - (beta_prod**0.5) * model_output
        # eps = sqrt(a) v + sqrt(1 - a) x_t
        pred_epsilon = (alpha_bar**0.5) * model_output + (beta_prod**0.5) * x_t
    return pred_original_sample, pred_epsilon


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class NoiseSchedule:
    """Betas, alphas and cumulative alphas of a DDPM-style schedule, plus the maths that uses them.

    Arguments (diffusers' scheduler-config names and meanings; the defaults are SD 1.x's):

    * ``num_train_timesteps``: T, int >= 2.
    * ``beta_start``, ``beta_end``: 0 < beta_start < beta_end < 1.
    * ``beta_schedule``: ``"scaled_linear"`` (SD), ``"linear"`` (DDPM), ``"squaredcos_cap_v2"`` (cosine).
    * ``rescale_betas_zero_snr``: apply :func:`rescale_zero_terminal_snr` (alpha_bar_{T-1} = 0).
    * ``prediction_type``: what the model trained on this schedule predicts, one of :data:`PREDICTION_TYPES`.

    Attributes ``betas``, ``alphas``, ``alphas_cumprod``: (T,) float32 on the CPU. Anything invalid raises
    ``ValueError``. Source: diffusers' ``DDPMScheduler.__init__`` (same numbers, tested).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        rescale_betas_zero_snr: bool = False,
        prediction_type: str = "epsilon",
    ):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, Integral) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start, self.beta_end, self.beta_schedule = float(beta_start), float(beta_end), beta_schedule
        self.rescale_betas_zero_snr = _check_bool("rescale_betas_zero_snr", rescale_betas_zero_snr)
        self.prediction_type = check_prediction_type(prediction_type)
        if beta_schedule == "scaled_linear":
            # sqrt(beta) linear in t, then squared (as diffusers: float32 linspace, then **2)
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        else:
            raise ValueError(
                f"beta_schedule must be one of {', '.join(map(repr, BETA_SCHEDULES))}, got {beta_schedule!r}"
            )
        if self.rescale_betas_zero_snr:
            # zero terminal SNR: alpha_bar_{T-1} = 0, the last beta = 1
            self.betas = rescale_zero_terminal_snr(self.betas)
        # alpha_t = 1 - beta_t: (T,)
        self.alphas = 1.0 - self.betas
        # alpha_bar_t = prod_{s<=t} alpha_s: (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @classmethod
    def from_config(cls, scheduler_config: Mapping) -> "NoiseSchedule":
        """The schedule of a diffusers ``scheduler_config.json`` (a dict, e.g. ``json.load(f)`` or ``pipe.scheduler.config``).

        Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``, ``rescale_betas_zero_snr``,
        ``prediction_type``; a missing key takes diffusers' default (:data:`DIFFUSERS_SCHEDULE_DEFAULTS`, e.g. a
        config without ``prediction_type`` means ε, as it does to diffusers). Other keys are ignored. Values this
        class cannot honour raise ``ValueError`` naming the key: ``trained_betas`` that is not null, an unknown
        ``beta_schedule`` or ``prediction_type``.
        """
        cfg = _read_config(scheduler_config, DIFFUSERS_SCHEDULE_DEFAULTS)
        return cls(**cfg)

    def __repr__(self) -> str:
        return "NoiseSchedule(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    @property
    def config(self) -> dict:
        """The constructor's arguments, with diffusers' scheduler-config names (``NoiseSchedule(**s.config)`` rebuilds it)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
            "prediction_type": self.prediction_type,
        }

    # --- timesteps -------------------------------------------------------------------------------

    def check_timesteps(self, t, batch_size: int | None = None, device=None) -> torch.Tensor:
        """``t`` (int, 0-d or (B,) integer tensor) -> a (B,) long tensor; anything outside [0, T-1] raises."""
        last = self.num_train_timesteps - 1
        if isinstance(t, bool):
            raise ValueError(f"timestep must be an integer in [0, {last}], got a bool")
        if isinstance(t, Integral):
            t = torch.tensor([int(t)])
        elif isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                if t.is_floating_point() and torch.equal(t, t.round()):
                    t = t.long()
                else:
                    raise ValueError(f"timesteps must be integers in [0, {last}], got dtype {t.dtype}")
            if t.ndim == 0:
                t = t[None]
            elif t.ndim != 1:
                raise ValueError(f"timesteps must be an int, a 0-d tensor or a (B,) tensor, got shape {tuple(t.shape)}")
        else:
            raise ValueError(f"timestep must be an int or an integer tensor, got {type(t).__name__}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > last):
            raise ValueError(
                f"timesteps must lie in [0, {last}] (the schedule has {self.num_train_timesteps} steps), "
                f"got values from {int(t.min())} to {int(t.max())}"
            )
        if batch_size is not None:
            if t.shape[0] == 1:
                t = t.expand(batch_size)
            elif t.shape[0] != batch_size:
                raise ValueError(f"got {t.shape[0]} timesteps for a batch of {batch_size}")
        return t.long().to(device) if device is not None else t.long()

    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def _prediction_type(self, prediction_type) -> str:
        return self.prediction_type if prediction_type is None else check_prediction_type(prediction_type)

    # --- forward process, targets and estimates --------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (diffusers' ``add_noise``)."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
        t = self.check_timesteps(t, batch_size=x0.shape[0])
        # (B, 1, 1, 1)
        alpha_bar = self._gather(self.alphas_cumprod, t, x0)
        # (B, C, H, W)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (diffusers' ``get_velocity``).

        ``x0``, ``noise``: (B, C, H, W); ``t``: int, 0-d or (B,) integers. Salimans & Ho 2022, "Progressive
        Distillation", §4. Returns (B, C, H, W).
        """
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
        t = self.check_timesteps(t, batch_size=x0.shape[0])
        # (B, 1, 1, 1)
        alpha_bar = self._gather(self.alphas_cumprod, t, x0)
        # (B, C, H, W)
        return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction_type: str | None = None) -> torch.Tensor:
        """What a model of ``prediction_type`` (None: the schedule's) should output for x_t = add_noise(x0, noise, t).

        ``"epsilon"``: ``noise``; ``"v_prediction"``: :meth:`velocity`; ``"sample"``: ``x0``.
        """
        kind = self._prediction_type(prediction_type)
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        return self.velocity(x0, noise, t)

    def _estimates(self, x_t, model_output, t, prediction_type):
        if not isinstance(x_t, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise TypeError("x_t and model_output must be tensors")
        if x_t.shape != model_output.shape:
            raise ValueError(
                f"x_t and model_output must have the same shape, got {tuple(x_t.shape)} and {tuple(model_output.shape)}"
            )
        t = self.check_timesteps(t, batch_size=x_t.shape[0])
        # (B, 1, 1, 1)
        alpha_bar = self._gather(self.alphas_cumprod, t, x_t)
        return convert_model_output(model_output, x_t, alpha_bar, self._prediction_type(prediction_type))

    def predict_x0(self, x_t: torch.Tensor, model_output: torch.Tensor, t, prediction_type: str | None = None) -> torch.Tensor:
        """The clean-image estimate x_0 from a model's raw output at timestep ``t``.

        ``prediction_type`` (None: the schedule's): ``"epsilon"`` x0 = (x_t - sqrt(1 - a) eps) / sqrt(a);
        ``"v_prediction"`` x0 = sqrt(a) x_t - sqrt(1 - a) v; ``"sample"`` x0 = the output. ``x_t``,
        ``model_output``: (B, C, H, W); ``t``: int, 0-d or (B,). ε at alpha_bar = 0 raises ``ValueError``.
        """
        return self._estimates(x_t, model_output, t, prediction_type)[0]

    def predict_eps(self, x_t: torch.Tensor, model_output: torch.Tensor, t, prediction_type: str | None = None) -> torch.Tensor:
        """The noise estimate eps from a model's raw output at timestep ``t`` (see :meth:`predict_x0`).

        ``"epsilon"``: the output; ``"v_prediction"`` eps = sqrt(a) v + sqrt(1 - a) x_t;
        ``"sample"`` eps = (x_t - sqrt(a) x0) / sqrt(1 - a).
        """
        return self._estimates(x_t, model_output, t, prediction_type)[1]

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps ``t``."""
        t = self.check_timesteps(t)
        a = self.alphas_cumprod[t]
        return a / (1 - a)

    def require_epsilon(self, where: str) -> None:
        """Raise ``ValueError`` unless this schedule's model predicts ε (for the code paths that assume it)."""
        if self.prediction_type != "epsilon":
            raise ValueError(
                f"{where} assumes a model that predicts the noise (prediction_type='epsilon'), but the schedule says "
                f"prediction_type={self.prediction_type!r}. Convert the output first with "
                f"schedule.predict_x0(x_t, model_output, t) / schedule.predict_eps(...), or sample with "
                f"DDIMSampler / DDPMSampler, which read prediction_type"
            )

    # --- training ---------------------------------------------------------------------------------

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform random timesteps (B,) in [0, T-1]."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch size must be a positive int, got {batch_size!r}")
        t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)
        return t.to(device) if device is not None else t

    def training_loss(
        self,
        model,
        x0: torch.Tensor,
        t=None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
        prediction_type: str | None = None,
        **cond,
    ) -> torch.Tensor:
        """The diffusion loss ``MSE(model(x_t, t, **cond), target)`` with x_t = add_noise(x0, eps, t).

        The target is what ``prediction_type`` (None: the schedule's) names (:meth:`target`): eps, v or x_0.
        ``t`` and ``noise`` are drawn (from ``generator``) when not given; ``cond`` (e.g. ``context=``)
        is passed through to the model. ``weight`` (broadcastable to ``x0``, >= 0) makes it a weighted
        mean ``Σ w·(out − target)² / Σ w``: more weight where the errors matter most (``unetlab.text2img``
        weights the object's pixels). Returns a 0-d tensor.
        """
        kind = self._prediction_type(prediction_type)
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
            raise ValueError("x0 must be a tensor of shape (B, C, ...)")
        if x0.shape[0] == 0:
            raise ValueError("batch size must be at least 1, got an empty batch")
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, generator=generator)
        t = self.check_timesteps(t, batch_size=batch).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        # (B, C, H, W)
        x_t = self.add_noise(x0, noise, t)
        # (B, C, H, W): the model's guess of eps, v or x0
        out = model(x_t, t, **cond)
        if out.shape != noise.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, expected {tuple(noise.shape)} (the noise's shape)")
        # (B, C, H, W)
        target = self.target(x0, noise, t, kind)
        if weight is None:
            return F.mse_loss(out, target)
        # (B, C, H, W): the weight broadcast to every value
        weight = torch.as_tensor(weight, dtype=out.dtype, device=out.device)
        try:
            weight = weight.expand_as(out)
        except RuntimeError:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to {tuple(out.shape)}") from None
        if bool((weight < 0).any()) or not bool(weight.sum() > 0):
            raise ValueError("weight must be >= 0 everywhere and not all zero")
        return (weight * (out - target) ** 2).sum() / weight.sum()


def _read_config(scheduler_config, keys: dict) -> dict:
    """``keys`` (name -> diffusers default) read from a diffusers scheduler config; checks what it cannot honour."""
    if not isinstance(scheduler_config, Mapping):
        raise TypeError(
            f"scheduler_config must be a dict (e.g. json.load of scheduler_config.json, or pipe.scheduler.config), "
            f"got {type(scheduler_config).__name__}"
        )
    problems = []
    if scheduler_config.get("trained_betas") is not None:
        problems.append("trained_betas is set (explicit betas): only beta_start/beta_end/beta_schedule are supported")
    if scheduler_config.get("thresholding", False):
        problems.append("thresholding=True (dynamic thresholding) is not implemented; set it to False")
    if scheduler_config.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        problems.append(
            f"beta_schedule={scheduler_config['beta_schedule']!r} is not one of {', '.join(map(repr, BETA_SCHEDULES))}"
        )
    if scheduler_config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        problems.append(
            f"prediction_type={scheduler_config['prediction_type']!r} is not one of {', '.join(map(repr, PREDICTION_TYPES))}"
        )
    if problems:
        raise ValueError("this scheduler config cannot be honoured: " + "; ".join(problems))
    return {k: scheduler_config.get(k, default) for k, default in keys.items()}


def psnr(estimate: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, reduce: bool = True) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB: ``10 log10(range² / MSE)``.

    The images here live in [-1, 1], so the range is 2 (equivalently: map both to [0, 1] and use 1).
    With ``reduce=False`` it is computed per image (B,); otherwise from the MSE over the whole batch.
    """
    if estimate.shape != target.shape:
        raise ValueError(f"estimate and target must have the same shape, got {tuple(estimate.shape)} and {tuple(target.shape)}")
    err = (estimate - target).float() ** 2
    mse = err.mean() if reduce else err.flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))



def fixed_noise(shape, seed: int = 0) -> torch.Tensor:
    """Standard normal noise of ``shape`` from its own CPU generator (the same for the same seed, anywhere)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def denoise(model_fn, x0: torch.Tensor, t: int, noise: torch.Tensor, schedule: NoiseSchedule | None = None,
            clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``x0`` to step ``t`` with ``noise``, let ``model_fn(x_t, t) -> eps`` predict, return (x_t, x0_estimate).

    ``clamp=True`` clips the estimate to the image range [-1, 1] (an estimate outside it is certainly wrong).
    ε only: a ``schedule`` whose ``prediction_type`` is not ``"epsilon"`` raises ``ValueError``.
    """
    schedule = schedule if schedule is not None else NoiseSchedule()
    schedule.require_epsilon("denoise")
    t_batch = schedule.check_timesteps(t, batch_size=x0.shape[0])
    # (B, C, H, W)
    x_t = schedule.add_noise(x0, noise, t_batch)
    # (B, C, H, W)
    x0_hat = schedule.predict_x0(x_t, model_fn(x_t, t_batch), t_batch)
    return x_t, (x0_hat.clamp(-1, 1) if clamp else x0_hat)


@torch.no_grad()
def denoising_quality(model_fn, x0: torch.Tensor, timesteps, seed: int = 0, schedule: NoiseSchedule | None = None,
                      clamp: bool = True) -> dict[int, dict[str, float]]:
    """``{t: {"mse": ..., "psnr": ...}}`` of the clean-image estimate at each ``t``.

    The same noise (``fixed_noise(x0.shape, seed)``) is used at every t, so the curves differ only by t.
    MSE is on the [-1, 1] scale, PSNR uses range 2 (the same dB as [0, 1] images with range 1).
    ε only, like :func:`denoise`: another ``prediction_type`` raises ``ValueError``.
    """
    if schedule is not None:
        schedule.require_epsilon("denoising_quality")
    noise = fixed_noise(x0.shape, seed)
    out = {}
    for t in timesteps:
        _, x0_hat = denoise(model_fn, x0, int(t), noise, schedule=schedule, clamp=clamp)
        out[int(t)] = {"mse": float(F.mse_loss(x0_hat, x0)), "psnr": float(psnr(x0_hat, x0))}
    return out
