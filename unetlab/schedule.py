"""Stable Diffusion's noise schedule, forward noising and the noise-prediction training loss.

SD (1.x and 2.x) trains with 1000 timesteps and "scaled-linear" betas: the *square roots* of the betas
are spaced linearly from sqrt(0.00085) to sqrt(0.012). From the betas:

    alpha_t     = 1 - beta_t
    alpha_bar_t = alpha_0 * alpha_1 * ... * alpha_t             (``alphas_cumprod``)
    x_t         = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

At the last step alpha_bar_999 ≈ 0.0047, so x_999 still holds sqrt(0.0047) ≈ 7 % of the clean signal:
SD's schedule never reaches pure noise. Samplers start from pure noise anyway; for the small
pixel-space models of this course that mismatch does no visible harm (it matters more for very bright
or very dark images, see "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2023).

The numbers equal diffusers' ``DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
beta_end=0.012)`` (tested in ``tests/test_schedule.py``).
"""
from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F

__all__ = ["NoiseSchedule", "psnr", "fixed_noise", "denoise", "denoising_quality"]


class NoiseSchedule:
    """Betas, alphas and cumulative alphas of a DDPM-style schedule, plus the maths that uses them."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
    ):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, Integral) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start, self.beta_end, self.beta_schedule = float(beta_start), float(beta_end), beta_schedule
        if beta_schedule == "scaled_linear":
            # sqrt(beta) linear in t, then squared (as diffusers: float32 linspace, then **2)
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        else:
            raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', got {beta_schedule!r}")
        # alpha_t = 1 - beta_t: (T,)
        self.alphas = 1.0 - self.betas
        # alpha_bar_t = prod_{s<=t} alpha_s: (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, "
            f"beta_end={self.beta_end}, beta_schedule={self.beta_schedule!r})"
        )

    @property
    def config(self) -> dict:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
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

    # --- forward process and x0 estimate --------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (diffusers' ``add_noise``)."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
        t = self.check_timesteps(t, batch_size=x0.shape[0])
        # (B, 1, 1, 1)
        alpha_bar = self._gather(self.alphas_cumprod, t, x0)
        # (B, C, H, W)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """The clean-image estimate from a noise prediction: x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)."""
        if x_t.shape != eps.shape:
            raise ValueError(f"x_t and eps must have the same shape, got {tuple(x_t.shape)} and {tuple(eps.shape)}")
        t = self.check_timesteps(t, batch_size=x_t.shape[0])
        alpha_bar = self._gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps ``t``."""
        t = self.check_timesteps(t)
        a = self.alphas_cumprod[t]
        return a / (1 - a)

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
        **cond,
    ) -> torch.Tensor:
        """The noise-prediction loss: ``MSE(model(x_t, t, **cond), eps)`` with x_t = add_noise(x0, eps, t).

        ``t`` and ``noise`` are drawn (from ``generator``) when not given; ``cond`` (e.g. ``context=``)
        is passed through to the model. ``weight`` (broadcastable to ``x0``, >= 0) makes it a weighted
        mean ``Σ w·(ε̂ − ε)² / Σ w``: more weight where the errors matter most (``unetlab.text2img``
        weights the object's pixels).
        """
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
        # (B, C, H, W): the model's guess of the noise
        eps = model(x_t, t, **cond)
        if eps.shape != noise.shape:
            raise ValueError(f"the model returned shape {tuple(eps.shape)}, expected {tuple(noise.shape)} (the noise's shape)")
        if weight is None:
            return F.mse_loss(eps, noise)
        # (B, C, H, W): the weight broadcast to every value
        weight = torch.as_tensor(weight, dtype=eps.dtype, device=eps.device)
        try:
            weight = weight.expand_as(eps)
        except RuntimeError:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast to {tuple(eps.shape)}") from None
        if bool((weight < 0).any()) or not bool(weight.sum() > 0):
            raise ValueError("weight must be >= 0 everywhere and not all zero")
        return (weight * (eps - noise) ** 2).sum() / weight.sum()


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
    """
    schedule = schedule if schedule is not None else NoiseSchedule()
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
    """
    noise = fixed_noise(x0.shape, seed)
    out = {}
    for t in timesteps:
        _, x0_hat = denoise(model_fn, x0, int(t), noise, schedule=schedule, clamp=clamp)
        out[int(t)] = {"mse": float(F.mse_loss(x0_hat, x0)), "psnr": float(psnr(x0_hat, x0))}
    return out
