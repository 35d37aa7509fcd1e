"""DDPM and DDIM samplers on :class:`~unetlab.schedule.NoiseSchedule`, step for step as diffusers.

A sampler needs only ``model_fn(x_t, t) -> model_output``: a callable that takes the noisy batch
(B, C, H, W) and the timesteps (B,) (long tensor) and returns the model's raw output, which is eps, v or
x_0 according to ``prediction_type`` (the steps convert it, as diffusers' ``scheduler.step`` does). A
bare model is such a callable; classifier-free guidance (chapter 6) wraps one, see
:func:`unetlab.guidance.guided_eps`::

    model_fn = lambda x_t, t: guided_eps(unet, x_t, t, context, uncond_context, guidance_scale=7.5)
    x0 = DDIMSampler(NoiseSchedule(), num_inference_steps=50).sample(model_fn, (4, 4, 64, 64), generator=g)

The defaults follow SD 1.x's scheduler config: ``timestep_spacing="leading"``, ``steps_offset=1``,
``set_alpha_to_one=False``, ``clip_sample=False``, ε prediction; with 50 steps DDIM visits 981, 961, …, 21, 1.
Any other diffusers scheduler config (SD 2.x's v-prediction, zero terminal SNR with "trailing" spacing)
is one call away: ``DDIMSampler.from_config(json.load(open("scheduler_config.json")), 50)``.

Timestep spacings (``timestep_spacing``; Lin et al. 2024, Table 2), T train steps, N inference steps:

    "leading"   [N-1, ..., 1, 0] * (T // N) + steps_offset          e.g. 981, 961, ..., 1   (SD 1.x, 2.x)
    "trailing"  round(T, T - T/N, ..., T/N) - 1                      e.g. 999, 979, ..., 19  (zero-SNR models)
    "linspace"  round(linspace(0, T - 1, N)) reversed                e.g. 999, 979, ..., 0

``tests/test_samplers.py`` checks every combination of prediction type, spacing, zero terminal SNR and
DDIM eta against diffusers' ``DDIMScheduler`` / ``DDPMScheduler``, timestep by timestep and step by step.
"""
from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .schedule import DIFFUSERS_SCHEDULE_DEFAULTS, NoiseSchedule, _read_config, check_prediction_type, convert_model_output

__all__ = [
    "TIMESTEP_SPACINGS", "DDPMSampler", "DDIMSampler", "ddpm_step", "ddim_step", "leading_timesteps",
    "inference_timesteps",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: diffusers' ``timestep_spacing`` values
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _check_steps(num_train_timesteps: int, num_inference_steps) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, Integral):
        raise ValueError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}")
    return int(num_inference_steps)


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str = "leading", steps_offset: int = 1
) -> torch.Tensor:
    """The N timesteps a sampler visits, (N,) long, descending: diffusers' ``set_timesteps``.

    ``timestep_spacing``: ``"leading"`` (``steps_offset`` is added; only here, as in diffusers),
    ``"trailing"`` or ``"linspace"``; computed with the same numpy operations as diffusers'
    ``DDIMScheduler.set_timesteps`` / ``DDPMScheduler.set_timesteps``, so the values are identical.
    One difference: for some N (61, 103, 121, ...) diffusers' "trailing" float ``arange`` yields one extra
    step t = -1 after the N real ones; it is left out here (t = -1 is not a timestep).

    Raises ``ValueError`` for N outside [1, T], an unknown spacing, or leading timesteps beyond T - 1.
    """
    T = int(num_train_timesteps)
    N = _check_steps(T, num_inference_steps)
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, Integral) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an int >= 0, got {steps_offset!r}")
    if timestep_spacing == "linspace":
        # round(linspace(0, T - 1, N)), descending
        timesteps = np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        step_ratio = T // N
        # [N-1, ..., 0] * (T // N) + offset
        timesteps = (np.arange(0, N) * step_ratio).round()[::-1].copy().astype(np.int64)
        timesteps += steps_offset
        if int(timesteps[0]) > T - 1:
            raise ValueError(
                f"{N} steps with steps_offset={steps_offset} would start at t={int(timesteps[0])}, "
                f"outside [0, {T - 1}]; use fewer steps or steps_offset=0"
            )
    elif timestep_spacing == "trailing":
        step_ratio = T / N
        # round(T, T - T/N, ...) - 1: the first step is T - 1
        timesteps = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64)
        timesteps -= 1
        # diffusers' float arange can overshoot by one element (t = -1): keep the N real steps
        timesteps = timesteps[:N]
    else:
        raise ValueError(
            f"timestep_spacing must be one of {', '.join(map(repr, TIMESTEP_SPACINGS))}, got {timestep_spacing!r}"
        )
    return torch.from_numpy(timesteps)


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 1) -> torch.Tensor:
    """diffusers' "leading" spacing: ``[0, r, 2r, ...] * reversed + offset`` with ``r = T // N``."""
    return inference_timesteps(num_train_timesteps, num_inference_steps, "leading", steps_offset)


def _check_step_inputs(schedule: NoiseSchedule, model_output: torch.Tensor, t, x_t: torch.Tensor) -> int:
    if not isinstance(model_output, torch.Tensor) or not isinstance(x_t, torch.Tensor):
        raise TypeError("model_output and x_t must be tensors")
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model_output and x_t must have the same shape, got {tuple(model_output.shape)} and {tuple(x_t.shape)}"
        )
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"a sampler step takes one timestep for the whole batch, got shape {tuple(t.shape)}")
        t = t.reshape(())
    return int(schedule.check_timesteps(t)[0])


def _check_prev(schedule: NoiseSchedule, t: int, prev_t) -> int:
    if isinstance(prev_t, torch.Tensor):
        prev_t = int(prev_t)
    if isinstance(prev_t, bool) or not isinstance(prev_t, Integral) or not prev_t < t:
        raise ValueError(f"prev_t must be an int below t={t} (negative: past the last step), got {prev_t!r}")
    return int(prev_t)


def _clip(x0: torch.Tensor, clip_sample: bool, clip_sample_range: float) -> torch.Tensor:
    # diffusers' clip_sample: x0 clamped to [-range, range]
    return x0.clamp(-clip_sample_range, clip_sample_range) if clip_sample else x0


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t,
    x_t: torch.Tensor,
    prev_t: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    prediction_type: str | None = None,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM ancestral step x_t -> x_prev; returns ``(x_prev, x0_estimate)``, both shaped like ``x_t``.

    diffusers' ``DDPMScheduler.step`` with ``variance_type="fixed_small"``: ``model_output`` (B, C, H, W) is
    eps, v or x_0 per ``prediction_type`` (None: the schedule's); ``t`` one int timestep for the batch,
    ``prev_t`` the next one in the chain (< 0 after the last; alpha_bar_prev = 1 there). Noise is added
    when t > 0: ``noise`` if given, else drawn from ``generator``. Ho et al. 2020, eqs. (6)-(7).
    """
    t = _check_step_inputs(schedule, model_output, t, x_t)
    prev_t = _check_prev(schedule, t, prev_t)
    kind = schedule._prediction_type(prediction_type)
    one = torch.tensor(1.0)
    # alpha_bar_t, alpha_bar_prev: 0-d
    a_t = schedule.alphas_cumprod[t]
    a_prev = schedule.alphas_cumprod[prev_t] if prev_t >= 0 else one
    beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
    # alpha and beta of this (possibly multi-step) jump: alpha_t / alpha_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    # (B, C, H, W): x0 from eps, v or x0
    x0, _ = convert_model_output(model_output, x_t, a_t, kind)
    x0 = _clip(x0, clip_sample, clip_sample_range)
    # posterior mean: sqrt(a_prev) beta / (1 - a_t) * x0 + sqrt(cur_alpha) (1 - a_prev) / (1 - a_t) * x_t
    x0_coeff = (a_prev ** (0.5) * cur_beta) / beta_prod_t
    x_t_coeff = cur_alpha ** (0.5) * beta_prod_prev / beta_prod_t
    mean = x0_coeff * x0 + x_t_coeff * x_t
    if t > 0:
        # posterior variance (1 - a_prev) / (1 - a_t) * beta, clamped as diffusers does
        variance = ((1 - a_prev) / (1 - a_t) * cur_beta).clamp(min=1e-20)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        mean = mean + variance**0.5 * noise
    return mean, x0


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t,
    x_t: torch.Tensor,
    prev_t: int,
    eta: float = 0.0,
    final_alpha_cumprod: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    prediction_type: str | None = None,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_prev (eta = 0: deterministic); returns ``(x_prev, x0_estimate)``.

    diffusers' ``DDIMScheduler.step`` (Song et al. 2021, eq. 12): ``model_output`` (B, C, H, W) is eps, v or x_0
    per ``prediction_type`` (None: the schedule's); ``prev_t`` < 0 uses ``final_alpha_cumprod`` (default
    alpha_bar_0, SD's ``set_alpha_to_one=False``). With eta > 0, sigma * noise is added (``noise`` if given,
    else drawn from ``generator``); ``clip_sample`` clamps x_0 to ±``clip_sample_range`` (the eps used
    for the direction stays the model's, as diffusers' default ``use_clipped_model_output=False``).
    """
    t = _check_step_inputs(schedule, model_output, t, x_t)
    prev_t = _check_prev(schedule, t, prev_t)
    kind = schedule._prediction_type(prediction_type)
    if final_alpha_cumprod is None:
        # set_alpha_to_one=False: past the end, use alpha_bar_0
        final_alpha_cumprod = schedule.alphas_cumprod[0]
    # alpha_bar_t, alpha_bar_prev: 0-d
    a_t = schedule.alphas_cumprod[t]
    a_prev = schedule.alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
    # (B, C, H, W) each
    x0, eps = convert_model_output(model_output, x_t, a_t, kind)
    x0 = _clip(x0, clip_sample, clip_sample_range)
    # sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance ** (0.5)
    # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps  (+ sigma z)
    direction = (1 - a_prev - std**2) ** (0.5) * eps
    x_prev = a_prev ** (0.5) * x0 + direction
    if eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        x_prev = x_prev + std * noise
    return x_prev, x0


# sampler-config keys a sampler reads, with diffusers' defaults (DDIMScheduler / DDPMScheduler)
_DDIM_KEYS = {
    "steps_offset": 0, "set_alpha_to_one": True, "timestep_spacing": "leading",
    "clip_sample": True, "clip_sample_range": 1.0,
}
_DDPM_KEYS = {"steps_offset": 0, "timestep_spacing": "leading", "clip_sample": True, "clip_sample_range": 1.0}


class _Sampler:
    """Shared loop: start from noise, call ``model_fn`` at each timestep, step."""

    _KEYS: dict = {}
    _EXTRA_OVERRIDES: tuple = ()

    def __init__(self, schedule: NoiseSchedule | None, timesteps: torch.Tensor, prediction_type: str | None,
                 clip_sample: bool, clip_sample_range: float):
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(self.schedule).__name__}")
        #: what model_fn returns: eps, v or x0
        self.prediction_type = (
            self.schedule.prediction_type if prediction_type is None else check_prediction_type(prediction_type)
        )
        if not isinstance(clip_sample, bool):
            raise ValueError(f"clip_sample must be True or False, got {clip_sample!r}")
        if isinstance(clip_sample_range, bool) or not isinstance(clip_sample_range, Real) or not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be a number > 0, got {clip_sample_range!r}")
        self.clip_sample, self.clip_sample_range = clip_sample, float(clip_sample_range)
        self.timesteps = timesteps
        self._check_terminal_snr()

    def _check_terminal_snr(self) -> None:
        """ε at a timestep with alpha_bar = 0 cannot give x0: refuse before any model call."""
        if self.prediction_type != "epsilon":
            return
        zero = [int(t) for t in self.timesteps if float(self.schedule.alphas_cumprod[int(t)]) == 0.0]
        if zero:
            raise ValueError(
                f"{type(self).__name__} would visit t={zero[0]}, where this schedule's alpha_bar is 0 (zero terminal "
                "SNR, rescale_betas_zero_snr=True), with prediction_type='epsilon': x0 = (x_t - eps) / 0 is undefined "
                "there (diffusers returns NaN). Use a v-prediction model (prediction_type='v_prediction'), as Lin et "
                "al. 2024 do, or timestep_spacing='leading', which does not visit the last step"
            )

    @classmethod
    def from_config(cls, scheduler_config: Mapping, num_inference_steps=None, **overrides):
        """A sampler from a diffusers ``scheduler_config.json`` dict, as ``DDIMScheduler.from_config`` would build it.

        Reads the schedule keys (:meth:`NoiseSchedule.from_config`) and ``steps_offset``, ``timestep_spacing``,
        ``clip_sample``, ``clip_sample_range`` (and ``set_alpha_to_one`` for DDIM); a missing key takes
        diffusers' default, other keys are ignored; values that cannot be honoured (``trained_betas``,
        ``thresholding=True``, an unknown ``beta_schedule`` / ``prediction_type`` / ``timestep_spacing``, a DDPM
        ``variance_type`` other than ``"fixed_small"``) raise ``ValueError``. ``overrides`` replace config values
        (same names; DDIM also takes ``eta``); an unknown override raises ``TypeError``.
        """
        allowed = set(DIFFUSERS_SCHEDULE_DEFAULTS) | set(cls._KEYS) | set(cls._EXTRA_OVERRIDES)
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_config got unknown overrides {unknown}; accepted: {sorted(allowed)}")
        if not isinstance(scheduler_config, Mapping):
            raise TypeError(
                f"scheduler_config must be a dict (e.g. json.load of scheduler_config.json, or pipe.scheduler.config), "
                f"got {type(scheduler_config).__name__}"
            )
        merged = {**scheduler_config, **overrides}
        cls._check_config(merged)
        extra = {k: merged[k] for k in cls._EXTRA_OVERRIDES if k in merged}
        schedule = NoiseSchedule.from_config(merged)
        settings = _read_config(merged, cls._KEYS)
        if num_inference_steps is not None:
            # None: the class's default (DDIM 50, DDPM every train step)
            settings["num_inference_steps"] = num_inference_steps
        return cls(schedule, **settings, **extra)

    @classmethod
    def _check_config(cls, cfg: Mapping) -> None:
        if cfg.get("timestep_spacing", "leading") not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"this scheduler config cannot be honoured: timestep_spacing={cfg['timestep_spacing']!r} is not one of "
                f"{', '.join(map(repr, TIMESTEP_SPACINGS))}"
            )

    def _sampler_config(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def config(self) -> dict:
        """A diffusers scheduler config for this sampler (``DDIMScheduler.from_config(s.config)`` rebuilds it)."""
        return {**self.schedule.config, "prediction_type": self.prediction_type, **self._sampler_config()}

    def prev_timestep(self, t: int) -> int:
        """The timestep after ``t`` in this sampler's sequence, -1 after the last."""
        where = (self.timesteps == int(t)).nonzero()
        if where.numel() == 0:
            raise ValueError(f"t={int(t)} is not one of this sampler's timesteps")
        i = int(where[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, model_output, t, x_t, generator=None, noise=None):  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device=None,
        progress: bool = True,
        return_trajectory: bool = False,
    ):
        """Run the chain from x_T ~ N(0, I) (or the given ``x_T``) to an image.

        ``model_fn(x_t, t)`` gets (B, C, H, W) and (B,) long and returns the raw output (eps, v or x_0 per
        :attr:`prediction_type`). Returns the final sample (B, C, H, W), or with ``return_trajectory=True`` a
        tuple ``(sample, [(t, x_prev, x0_estimate), ...])`` with one entry per step (on the CPU).
        Noise is drawn on the CPU from ``generator`` so results do not depend on the device.
        """
        if not callable(model_fn):
            raise TypeError("model_fn must be a callable (x_t, t) -> model output")
        if x_T is None:
            shape = tuple(shape)
            if len(shape) < 2 or any((not isinstance(s, Integral)) or s < 1 for s in shape):
                raise ValueError(f"shape must be (B, C, H, W) with positive sizes, got {shape}")
            x_T = torch.randn(shape, generator=generator)
        x = x_T.to(device) if device is not None else x_T
        trajectory = []
        for t in tqdm(self.timesteps.tolist(), disable=not progress, desc=type(self).__name__, leave=False):
            # (B,) long: the same timestep for every image
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            # (B, C, H, W): eps, v or x0
            model_output = model_fn(x, t_batch)
            noise = None
            if self._needs_noise(t):
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x, x0 = self.step(model_output, t, x, noise=noise)
            if return_trajectory:
                trajectory.append((t, x.detach().cpu(), x0.detach().cpu()))
        return (x, trajectory) if return_trajectory else x

    def _needs_noise(self, t: int) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling: diffusers' ``DDPMScheduler`` (``variance_type="fixed_small"``).

    ``num_inference_steps=None`` walks all T steps T-1 … 0; a number N uses ``timestep_spacing``
    (:func:`inference_timesteps`; ``steps_offset`` applies to "leading" only, SD's config: 1).
    ``prediction_type`` (None: the schedule's) says what ``model_fn`` returns. ``clip_sample`` clamps the
    x_0 estimate to ±``clip_sample_range`` (diffusers' default is True; SD's configs say False).
    """

    _KEYS = _DDPM_KEYS

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        num_inference_steps: int | None = None,
        steps_offset: int = 1,
        prediction_type: str | None = None,
        timestep_spacing: str = "leading",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ):
        schedule = schedule if schedule is not None else NoiseSchedule()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        T = schedule.num_train_timesteps
        if num_inference_steps is None:
            if timestep_spacing not in TIMESTEP_SPACINGS:
                raise ValueError(
                    f"timestep_spacing must be one of {', '.join(map(repr, TIMESTEP_SPACINGS))}, got {timestep_spacing!r}"
                )
            timesteps = torch.arange(T - 1, -1, -1, dtype=torch.long)
        else:
            timesteps = inference_timesteps(T, num_inference_steps, timestep_spacing, steps_offset)
        self.num_inference_steps = num_inference_steps
        self.steps_offset, self.timestep_spacing = steps_offset, timestep_spacing
        super().__init__(schedule, timesteps, prediction_type, clip_sample, clip_sample_range)

    @classmethod
    def _check_config(cls, cfg: Mapping) -> None:
        super()._check_config(cfg)
        if cfg.get("variance_type", "fixed_small") not in ("fixed_small", None):
            raise ValueError(
                f"this scheduler config cannot be honoured: variance_type={cfg['variance_type']!r}; only "
                "'fixed_small' (DDPM's posterior variance, diffusers' default) is implemented"
            )

    def _sampler_config(self) -> dict:
        return {"steps_offset": self.steps_offset, "timestep_spacing": self.timestep_spacing,
                "clip_sample": self.clip_sample, "clip_sample_range": self.clip_sample_range,
                "variance_type": "fixed_small"}

    def _needs_noise(self, t: int) -> bool:
        return t > 0

    def step(self, model_output, t, x_t, generator=None, noise=None):
        """x_t -> ``(x_prev, x0_estimate)`` (:func:`ddpm_step` with this sampler's settings)."""
        return ddpm_step(
            self.schedule, model_output, t, x_t, self.prev_timestep(t), generator=generator, noise=noise,
            prediction_type=self.prediction_type, clip_sample=self.clip_sample, clip_sample_range=self.clip_sample_range,
        )


class DDIMSampler(_Sampler):
    """DDIM sampling: diffusers' ``DDIMScheduler``; ``eta=0`` is deterministic, ``eta=1`` DDPM-like.

    The defaults are SD 1.x's config (``steps_offset=1``, ``set_alpha_to_one=False``, ``"leading"``,
    ``clip_sample=False``). ``prediction_type`` (None: the schedule's) says what ``model_fn`` returns.
    As in diffusers, the step after t is always t - T // N (below 0 at the end: ``final_alpha_cumprod``,
    1 with ``set_alpha_to_one=True``, else alpha_bar_0), whatever the spacing.
    """

    _KEYS = _DDIM_KEYS
    _EXTRA_OVERRIDES = ("eta",)

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        steps_offset: int = 1,
        set_alpha_to_one: bool = False,
        prediction_type: str | None = None,
        timestep_spacing: str = "leading",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ):
        schedule = schedule if schedule is not None else NoiseSchedule()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if isinstance(eta, bool) or not isinstance(eta, Real) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if not isinstance(set_alpha_to_one, bool):
            raise ValueError(f"set_alpha_to_one must be True or False, got {set_alpha_to_one!r}")
        timesteps = inference_timesteps(schedule.num_train_timesteps, num_inference_steps, timestep_spacing, steps_offset)
        self.num_inference_steps = num_inference_steps
        self.eta = float(eta)
        self.steps_offset, self.timestep_spacing, self.set_alpha_to_one = steps_offset, timestep_spacing, set_alpha_to_one
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else schedule.alphas_cumprod[0]
        super().__init__(schedule, timesteps, prediction_type, clip_sample, clip_sample_range)

    def _sampler_config(self) -> dict:
        return {"steps_offset": self.steps_offset, "timestep_spacing": self.timestep_spacing,
                "set_alpha_to_one": self.set_alpha_to_one, "clip_sample": self.clip_sample,
                "clip_sample_range": self.clip_sample_range}

    def prev_timestep(self, t: int) -> int:
        # diffusers' DDIM: t - T // N (may be < 0 for the last step)
        return int(t) - self.schedule.num_train_timesteps // self.num_inference_steps

    def _needs_noise(self, t: int) -> bool:
        return self.eta > 0

    def step(self, model_output, t, x_t, generator=None, noise=None):
        """x_t -> ``(x_prev, x0_estimate)`` (:func:`ddim_step` with this sampler's settings)."""
        return ddim_step(
            self.schedule, model_output, t, x_t, self.prev_timestep(t), eta=self.eta,
            final_alpha_cumprod=self.final_alpha_cumprod, generator=generator, noise=noise,
            prediction_type=self.prediction_type, clip_sample=self.clip_sample, clip_sample_range=self.clip_sample_range,
        )
