"""DDPM and DDIM samplers on :class:`~unetlab.schedule.NoiseSchedule`, step for step as diffusers.

A sampler needs only ``model_fn(x_t, t) -> eps``: a callable that takes the noisy batch (B, C, H, W)
and the timesteps (B,) (long tensor) and returns the predicted noise. A bare model is such a callable;
classifier-free guidance (chapter 6) is a small function that wraps one::

    def guided(x_t, t):
        eps_uncond, eps_text = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                     context=torch.cat([empty, text])).chunk(2)
        return eps_uncond + scale * (eps_text - eps_uncond)

    x0 = DDIMSampler(NoiseSchedule(), num_inference_steps=50).sample(guided, (4, 3, 32, 32), generator=g)

Timesteps follow SD's scheduler config: ``timestep_spacing="leading"``, ``steps_offset=1``,
``set_alpha_to_one=False``, ``clip_sample=False``. With 50 steps DDIM visits 981, 961, …, 21, 1.
``tests/test_samplers.py`` checks timesteps and single steps against diffusers' ``DDPMScheduler`` /
``DDIMScheduler`` built with those settings.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable

import torch
from tqdm import tqdm

from .schedule import NoiseSchedule

__all__ = ["DDPMSampler", "DDIMSampler", "ddpm_step", "ddim_step", "leading_timesteps"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 1) -> torch.Tensor:
    """diffusers' "leading" spacing: ``[0, r, 2r, ...] * reversed + offset`` with ``r = T // N``."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, Integral):
        raise ValueError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}")
    ratio = num_train_timesteps // num_inference_steps
    timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * ratio + steps_offset
    if int(timesteps[0]) > num_train_timesteps - 1:
        raise ValueError(
            f"{num_inference_steps} steps with steps_offset={steps_offset} would start at t={int(timesteps[0])}, "
            f"outside [0, {num_train_timesteps - 1}]; use fewer steps or steps_offset=0"
        )
    return timesteps


def _alpha_bar(schedule: NoiseSchedule, t: int, final: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t, or ``final`` for t < 0 (the step past the end of the chain)."""
    return schedule.alphas_cumprod[t] if t >= 0 else final


def _check_step_inputs(schedule: NoiseSchedule, eps: torch.Tensor, t, x_t: torch.Tensor) -> int:
    if not isinstance(eps, torch.Tensor) or not isinstance(x_t, torch.Tensor):
        raise TypeError("eps and x_t must be tensors")
    if eps.shape != x_t.shape:
        raise ValueError(f"eps and x_t must have the same shape, got {tuple(eps.shape)} and {tuple(x_t.shape)}")
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"a sampler step takes one timestep for the whole batch, got shape {tuple(t.shape)}")
        t = t.reshape(())
    return int(schedule.check_timesteps(t)[0])


def ddpm_step(
    schedule: NoiseSchedule,
    eps: torch.Tensor,
    t,
    x_t: torch.Tensor,
    prev_t: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM ancestral step x_t -> x_prev (``variance_type="fixed_small"``); returns (x_prev, x0_estimate)."""
    t = _check_step_inputs(schedule, eps, t, x_t)
    one = torch.tensor(1.0)
    a_t = schedule.alphas_cumprod[t]
    a_prev = _alpha_bar(schedule, prev_t, one)
    # alpha and beta of this (possibly multi-step) jump: alpha_t / alpha_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    # x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    # posterior mean: sqrt(a_prev) beta / (1 - a_t) * x0 + sqrt(cur_alpha) (1 - a_prev) / (1 - a_t) * x_t
    mean = (a_prev.sqrt() * cur_beta / (1 - a_t)) * x0 + (cur_alpha.sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
    if t > 0:
        # posterior variance (1 - a_prev) / (1 - a_t) * beta, clamped as diffusers does
        variance = ((1 - a_prev) / (1 - a_t) * cur_beta).clamp(min=1e-20)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        mean = mean + variance.sqrt() * noise
    return mean, x0


def ddim_step(
    schedule: NoiseSchedule,
    eps: torch.Tensor,
    t,
    x_t: torch.Tensor,
    prev_t: int,
    eta: float = 0.0,
    final_alpha_cumprod: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_prev (eta=0: deterministic); returns (x_prev, x0_estimate)."""
    t = _check_step_inputs(schedule, eps, t, x_t)
    if final_alpha_cumprod is None:
        # set_alpha_to_one=False: past the end, use alpha_bar_0
        final_alpha_cumprod = schedule.alphas_cumprod[0]
    a_t = schedule.alphas_cumprod[t]
    a_prev = _alpha_bar(schedule, prev_t, final_alpha_cumprod)
    # x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    # sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps  (+ sigma z)
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        x_prev = x_prev + std * noise
    return x_prev, x0


class _Sampler:
    """Shared loop: start from noise, call ``model_fn`` at each timestep, step."""

    def __init__(self, schedule: NoiseSchedule | None, timesteps: torch.Tensor):
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        self.timesteps = timesteps

    def prev_timestep(self, t: int) -> int:
        """The timestep after ``t`` in this sampler's sequence, -1 after the last."""
        where = (self.timesteps == int(t)).nonzero()
        if where.numel() == 0:
            raise ValueError(f"t={int(t)} is not one of this sampler's timesteps")
        i = int(where[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, eps, t, x_t, generator=None, noise=None):  # pragma: no cover - overridden
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

        Returns the final sample (B, C, H, W), or with ``return_trajectory=True`` a tuple
        ``(sample, [(t, x_t, x0_estimate), ...])`` with one entry per step (on the CPU).
        Noise is drawn on the CPU from ``generator`` so results do not depend on the device.
        """
        if not callable(model_fn):
            raise TypeError("model_fn must be a callable (x_t, t) -> eps")
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
            # (B, C, H, W)
            eps = model_fn(x, t_batch)
            noise = None
            if self._needs_noise(t):
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x, x0 = self.step(eps, t, x, noise=noise)
            if return_trajectory:
                trajectory.append((t, x.detach().cpu(), x0.detach().cpu()))
        return (x, trajectory) if return_trajectory else x

    def _needs_noise(self, t: int) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling (diffusers' ``DDPMScheduler``, ``variance_type="fixed_small"``).

    ``num_inference_steps=None`` walks all 1000 steps 999 … 0; a number N uses diffusers' "leading"
    spacing with ``steps_offset`` (SD's config: 1).
    """

    def __init__(self, schedule: NoiseSchedule | None = None, num_inference_steps: int | None = None, steps_offset: int = 1):
        schedule = schedule if schedule is not None else NoiseSchedule()
        T = schedule.num_train_timesteps
        if num_inference_steps is None:
            timesteps = torch.arange(T - 1, -1, -1, dtype=torch.long)
        else:
            timesteps = leading_timesteps(T, num_inference_steps, steps_offset)
        super().__init__(schedule, timesteps)
        self.num_inference_steps = num_inference_steps

    def _needs_noise(self, t: int) -> bool:
        return t > 0

    def step(self, eps, t, x_t, generator=None, noise=None):
        """x_t -> (x_prev, x0_estimate)."""
        return ddpm_step(self.schedule, eps, t, x_t, self.prev_timestep(t), generator=generator, noise=noise)


class DDIMSampler(_Sampler):
    """DDIM sampling (diffusers' ``DDIMScheduler`` with SD's config); ``eta=0`` is deterministic."""

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        steps_offset: int = 1,
        set_alpha_to_one: bool = False,
    ):
        schedule = schedule if schedule is not None else NoiseSchedule()
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        super().__init__(schedule, leading_timesteps(schedule.num_train_timesteps, num_inference_steps, steps_offset))
        self.num_inference_steps = num_inference_steps
        self.eta = float(eta)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else schedule.alphas_cumprod[0]

    def prev_timestep(self, t: int) -> int:
        # diffusers' DDIM: t - T // N (may be < 0 for the last step)
        return int(t) - self.schedule.num_train_timesteps // self.num_inference_steps

    def _needs_noise(self, t: int) -> bool:
        return self.eta > 0

    def step(self, eps, t, x_t, generator=None, noise=None):
        """x_t -> (x_prev, x0_estimate)."""
        return ddim_step(
            self.schedule, eps, t, x_t, self.prev_timestep(t), eta=self.eta,
            final_alpha_cumprod=self.final_alpha_cumprod, generator=generator, noise=noise,
        )
