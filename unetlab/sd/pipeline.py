"""The real Stable Diffusion components for the course: find them, load them, read their sizes.

Chapters 2, 5 and 6 switch to the real model when weights are found. Everything the chapters need
— tokenizer, text encoder, UNet (as :class:`unetlab.SDUNet`), VAE, scheduler settings, and every
size — comes from one call, on whatever device is here:

    >>> sd = load_sd_components()              # or load_sd_components("/path/to/pipeline")
    >>> context = sd.encode_prompt(["", "a red fox"])        # (2, token_length, text_width)
    >>> latents = torch.randn(sd.latent_shape(1))            # (1, latent_channels, h, w)
    >>> images = sd.decode(latents)                          # (1, 3, H, W) in [-1, 1]

Which weights (first match wins)
    1. ``weights=`` passed to :func:`load_sd_components` / :func:`find_sd_weights`;
    2. the environment variable ``UNETLAB_SD_WEIGHTS``: a diffusers pipeline folder, a hub id already
       in the Hugging Face cache (``stable-diffusion-v1-5/stable-diffusion-v1-5``, or a short name
       ``sd15`` / ``sd21``), or an original single-file checkpoint (``.safetensors`` / ``.ckpt``).
       Pointing at nothing is an error (:class:`WeightsNotFoundError`), never a silent fallback;
    3. the Hugging Face cache: the first complete pipeline among :data:`unetlab.sd.load.HUB_IDS`'
       SD 1.5 and SD 2.1 ids. None found: :func:`find_sd_weights` returns ``None`` and the chapters
       print what they would have done.

Which device and dtype
    ``device=``, else ``UNETLAB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``; checked that it is
    there), else CUDA, then MPS (Apple GPU), then CPU. dtype: float16 on a GPU, float32 on the CPU
    (``dtype=`` overrides). Every component is loaded in float32 and cast afterwards.

An original single file
    holds the UNet (``model.diffusion_model.*``), usually the VAE (``first_stage_model.*``) and the
    text encoder (``cond_stage_model.*``), but never a tokenizer, a scheduler config or the VAE/CLIP
    configs diffusers would download to convert them. So the UNet is loaded from the file, and the
    rest comes from a *base* pipeline of the same family: ``base=`` (a folder or hub id), else the
    cached pipeline whose text width equals the UNet's context width (SD 1.x: 768, SD 2.x: 1024).
    When the file has its own VAE or SD 1.x CLIP text encoder, those weights are converted with
    diffusers' converters into the base's architecture, offline, and replace the base's.

API
---
``load_sd_components(weights=None, device=None, dtype=None, *, base=None, cache_dir=None) -> SDComponents``
``find_sd_weights(weights=None, *, cache_dir=None) -> Path | None``
``select_device(device=None) -> torch.device``;  ``select_dtype(device, dtype=None) -> torch.dtype``
``SDComponents``: ``tokenizer``, ``text_encoder``, ``unet``, ``vae``, ``scheduler_config`` (dict),
    ``latent_channels``, ``vae_scale_factor``, ``vae_scaling_factor``, ``text_width``,
    ``token_length``, ``prediction_type``, ``sample_size``, ``source``, ``kind``, ``device``, ``dtype``;
    ``encode_prompt``, ``latent_shape``, ``decode``, ``sampler``, ``time_unet_call``, ``estimate``,
    ``describe``.
``no_weights_message() -> str``: the note the chapters print when no weights are found.
``WeightsNotFoundError`` (a ``FileNotFoundError``), ``ComponentError`` (a ``ValueError``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetlab.sd.load import HUB_IDS, WEIGHTS_NAME, _NAME_ALIASES, _SINGLE_FILE_SUFFIXES, default_device, load_sd_unet

__all__ = [
    "ENV_WEIGHTS",
    "ENV_DEVICE",
    "COMPONENTS",
    "WeightsNotFoundError",
    "ComponentError",
    "SDComponents",
    "load_sd_components",
    "find_sd_weights",
    "select_device",
    "select_dtype",
    "no_weights_message",
]

ENV_WEIGHTS = "UNETLAB_SD_WEIGHTS"
ENV_DEVICE = "UNETLAB_DEVICE"
# folder -> the config file that must be in it
COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "vocab.json",
    "scheduler": "scheduler_config.json",
}
# the families load_sd_components can run (one CLIP text encoder), in cache-search order
_SEARCH = ("sd15", "sd21")
_DOWNLOAD_HINT = (
    'hf download {repo} --include "unet/*" "vae/*" "text_encoder/*" "tokenizer/*" "scheduler/*" "model_index.json"'
)


class WeightsNotFoundError(FileNotFoundError):
    """``weights=`` / ``UNETLAB_SD_WEIGHTS`` names nothing that exists here."""


class ComponentError(ValueError):
    """A pipeline that cannot run: a component missing, or components that do not fit together."""


# ---- device and dtype ----------------------------------------------------------------------
def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$UNETLAB_DEVICE``, else CUDA, then MPS, then CPU.

    Raises ``ValueError`` for a name that is not ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, or for a
    device this machine does not have (e.g. ``UNETLAB_DEVICE=cuda`` on a CPU-only torch).
    """
    origin = "device="
    if device is None:
        device = os.environ.get(ENV_DEVICE) or None
        origin = f"{ENV_DEVICE}="
    if device is None:
        return torch.device(default_device())
    text = str(device).strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise ValueError(f"{origin}{device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{origin}{device!r} but torch.cuda.is_available() is False here (torch {torch.__version__}: "
                "a CPU-only build, or no NVIDIA driver). Unset it, or choose 'cpu'/'mps'."
            )
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{origin}{device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{origin}{device!r} but MPS (Apple GPU) is not available here. Unset it, or choose 'cpu'.")
    return torch.device(text)


def select_dtype(device: str | torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else float16 on a GPU (CUDA, MPS) and float32 on the CPU."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (torch.float16, …), got {dtype!r}")
        return dtype
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


# ---- finding the weights -------------------------------------------------------------------
def _is_hub_like(text: str) -> bool:
    key = _NAME_ALIASES.get(text.lower(), text.lower())
    return key in HUB_IDS or (text.count("/") == 1 and not text.startswith((".", "/", "~"))
                              and not text.endswith(_SINGLE_FILE_SUFFIXES))


def _cached_pipeline(name: str, cache_dir=None) -> Path | None:
    """The snapshot folder of ``name`` (hub id or short name) in the HF cache, or None. Offline."""
    from huggingface_hub import try_to_load_from_cache

    key = _NAME_ALIASES.get(name.lower(), name.lower())
    for repo in HUB_IDS.get(key, [name]):
        for marker in ("model_index.json", "unet/config.json"):
            try:
                hit = try_to_load_from_cache(repo, marker, cache_dir=cache_dir)
            except Exception:  # a malformed repo id: nothing cached under it
                hit = None
            if isinstance(hit, str):
                return Path(hit).parent if marker == "model_index.json" else Path(hit).parent.parent
    return None


def _missing_components(root: Path) -> list[str]:
    return [f"{name}/{marker}" for name, marker in COMPONENTS.items() if not (root / name / marker).is_file()]


def find_sd_weights(weights: str | os.PathLike | None = None, *, cache_dir=None) -> Path | None:
    """Where the real weights are: a pipeline folder or a single file; ``None`` if none are found.

    ``weights`` (else ``$UNETLAB_SD_WEIGHTS``): a pipeline folder, a hub id / short name in the HF
    cache, or a single-file checkpoint; naming something that is not there raises
    :class:`WeightsNotFoundError`. Without either, the HF cache is searched for a complete SD 1.5,
    then SD 2.1 pipeline. Never touches the network.
    """
    origin = "weights="
    if weights is None:
        weights = os.environ.get(ENV_WEIGHTS) or None
        origin = f"{ENV_WEIGHTS}="
    if weights is None:
        for name in _SEARCH:
            root = _cached_pipeline(name, cache_dir)
            if root is not None and not _missing_components(root):
                return root
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a path or a hub id (str), got {type(weights).__name__}")
    path = Path(weights).expanduser()
    if path.exists():
        return path.resolve()
    text = str(weights)
    if _is_hub_like(text):
        root = _cached_pipeline(text, cache_dir)
        if root is not None:
            return root
        key = _NAME_ALIASES.get(text.lower(), text.lower())
        repo = HUB_IDS.get(key, [text])[0]
        raise WeightsNotFoundError(
            f"{origin}{text!r}: no such file or folder, and the hub id is not in the Hugging Face cache "
            "(nothing is downloaded here). Download it once, online:\n    " + _DOWNLOAD_HINT.format(repo=repo)
        )
    raise WeightsNotFoundError(
        f"{origin}{text!r}: no such file or folder. Expected a diffusers pipeline folder (with unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/), a hub id already in the Hugging Face cache, or an original "
        f"single-file checkpoint ({', '.join(_SINGLE_FILE_SUFFIXES)})."
        + (f" Unset {ENV_WEIGHTS} to search the cache instead." if origin.startswith(ENV_WEIGHTS) else "")
    )


def no_weights_message() -> str:
    """The bilingual note a chapter prints when :func:`find_sd_weights` finds nothing."""
    return (
        "没有找到 Stable Diffusion 的权重，这一格只打印说明。设置环境变量 UNETLAB_SD_WEIGHTS（pipeline 文件夹、\n"
        "缓存里的 hub id 或单文件检查点）或把 SD 1.5 下载进 Hugging Face 缓存后重新运行（见 README）。\n"
        "No Stable Diffusion weights found, so this cell only prints this note. Set UNETLAB_SD_WEIGHTS (a pipeline\n"
        "folder, a hub id in the cache, or a single-file checkpoint) or put SD 1.5 into the Hugging Face cache,\n"
        "then run it again (see the README)."
    )


# ---- the components ----------------------------------------------------------------------------
@dataclass
class SDComponents:
    """Everything a text-to-image loop needs, with the sizes read from the components' configs.

    ``unet`` is an :class:`unetlab.SDUNet`; ``vae`` diffusers' ``AutoencoderKL``; ``text_encoder`` and
    ``tokenizer`` transformers' ``CLIPTextModel`` / ``CLIPTokenizer``; ``scheduler_config`` the dict
    of ``scheduler/scheduler_config.json``. All models are in eval mode on ``device`` in ``dtype``.
    """

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict
    source: Path
    kind: str  # "pipeline" or "single file"
    device: torch.device
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)

    # sizes, every one read from a config
    @property
    def latent_channels(self) -> int:
        """Channels of a latent (VAE ``latent_channels``; SD: 4)."""
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent position along each side: ``2 ** (len(vae block_out_channels) - 1)`` (SD: 8)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scaling_factor(self) -> float:
        """Latents are ``scaling_factor · VAE mean`` (SD 1.x/2.x: 0.18215)."""
        return float(self.vae.config.scaling_factor)

    @property
    def text_width(self) -> int:
        """Width of the context the text encoder gives the UNet (SD 1.x: 768, SD 2.x: 1024)."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def token_length(self) -> int:
        """Tokens per prompt after padding (``tokenizer.model_max_length``; CLIP: 77)."""
        return int(self.tokenizer.model_max_length)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (scheduler config)."""
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def sample_size(self) -> int:
        """The latent side the UNet was trained at (``unet/config.json`` ``sample_size``; SD 1.5: 64)."""
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        """The default image side in pixels: ``sample_size · vae_scale_factor`` (SD 1.5: 512)."""
        return self.sample_size * self.vae_scale_factor

    # ---- the steps of a text-to-image loop --------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """``context`` for the UNet: ``(B, token_length, text_width)`` in ``dtype`` on ``device``.

        Each prompt is padded (and truncated) to ``token_length`` tokens, as diffusers'
        ``StableDiffusionPipeline`` does; the text encoder's last hidden state is the context.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.token_length, truncation=True,
                             return_tensors="pt").input_ids
        # (B, token_length) -> (B, token_length, text_width)
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    def latent_shape(self, batch: int = 1, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """``(batch, latent_channels, height / f, width / f)`` with ``f = vae_scale_factor``.

        ``height``/``width`` are image sizes in pixels (default :attr:`image_size`); each must be a
        multiple of ``f · 2 ** (UNet levels - 1)`` so that every UNet level halves evenly.
        """
        height = self.image_size if height is None else int(height)
        width = self.image_size if width is None else int(width)
        multiple = self.vae_scale_factor * self.unet.config.downsample_factor
        for name, value in (("height", height), ("width", width)):
            if value < multiple or value % multiple:
                raise ValueError(f"{name}={value}: must be a positive multiple of {multiple} "
                                 f"(VAE factor {self.vae_scale_factor} × UNet downsampling {self.unet.config.downsample_factor})")
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return (int(batch), self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, latent_channels, h, w)`` -> images ``(B, 3, h·f, w·f)``, float32, in [-1, 1], on the CPU.

        Undoes the latent scaling first: ``VAE.decode(latents / scaling_factor)`` (plus the shift of
        VAEs that have a ``shift_factor``).
        """
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape (B, {self.latent_channels}, h, w), got {got}")
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        # z / scaling_factor (+ shift) -> VAE decoder -> (B, 3, H, W)
        z = latents.to(self.device, self.dtype) / self.vae_scaling_factor + shift
        return self.vae.decode(z).sample.float().clamp(-1, 1).cpu()

    def sampler(self, num_inference_steps: int = 25, **overrides):
        """The DDIM sampler this pipeline's scheduler config describes (prediction type included).

        ``DDIMSampler.from_config(scheduler_config, num_inference_steps, **overrides)``: prediction type
        (ε, v, x₀), timestep spacing, steps offset, ``set_alpha_to_one``, zero-terminal-SNR rescaling.
        Its ``model_fn`` returns the raw UNet output, whatever the prediction type.
        """
        from unetlab.samplers import DDIMSampler

        return DDIMSampler.from_config(self.scheduler_config, num_inference_steps, **overrides)

    # ---- how long will it take ---------------------------------------------------------------
    @torch.no_grad()
    def time_unet_call(self, batch: int = 2, height: int | None = None, width: int | None = None) -> float:
        """Seconds one UNet forward takes here at this batch and image size (one warm-up call, one timed)."""
        shape = self.latent_shape(batch, height, width)
        sample = torch.zeros(shape, device=self.device, dtype=self.dtype)
        context = torch.zeros(batch, self.token_length, self.text_width, device=self.device, dtype=self.dtype)
        timings = []
        for _ in range(2):
            _synchronize(self.device)
            start = time.perf_counter()
            self.unet(sample, 500, context)
            _synchronize(self.device)
            timings.append(time.perf_counter() - start)
        return timings[-1]

    def estimate(self, unet_calls: int, batch: int = 2, height: int | None = None, width: int | None = None) -> str:
        """One line: about how long ``unet_calls`` UNet forwards will take here (from one timed call)."""
        seconds = self.time_unet_call(batch, height, width)
        total = seconds * unet_calls
        return (f"{unet_calls} UNet calls × {seconds:.3g} s (batch {batch}, {self.device.type}, "
                f"{str(self.dtype).replace('torch.', '')}) ≈ {_duration(total)}")

    def describe(self) -> str:
        """What was loaded, from where, and every size read from the configs (a few lines)."""
        n_unet = sum(p.numel() for p in self.unet.parameters())
        n_vae = sum(p.numel() for p in self.vae.parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        lines = [
            f"weights: {self.source} ({self.kind})",
            f"device: {self.device}, dtype: {str(self.dtype).replace('torch.', '')}",
            f"UNet (SDUNet): {n_unet:,} parameters, {self.unet.config.in_channels} → {self.unet.config.out_channels} "
            f"channels, context width {self.unet.config.cross_attention_dim}",
            f"VAE: {n_vae:,} parameters, {self.latent_channels} latent channels, scale factor {self.vae_scale_factor}, "
            f"scaling factor {self.vae_scaling_factor:g}",
            f"text encoder: {n_text:,} parameters, width {self.text_width}, {self.token_length} tokens",
            f"scheduler: prediction type {self.prediction_type}, "
            f"timestep spacing {self.scheduler_config.get('timestep_spacing', 'leading')}",
            f"default image {self.image_size}×{self.image_size} = latent {self.latent_shape(1)}",
        ]
        return "\n".join(lines + self.notes)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2g} s"
    return f"{seconds / 60:.1f} min"


# ---- loading -------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ComponentError(f"{path}: not valid JSON ({exc})") from None


@contextlib.contextmanager
def _quiet():
    """No progress bars or info lines from transformers/diffusers while loading (they would flood a notebook)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    t_level, d_level = tlog.get_verbosity(), dlog.get_verbosity()
    t_bar = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(t_level)
        dlog.set_verbosity(d_level)
        if t_bar:
            tlog.enable_progress_bar()


def _variant(folder: Path, stem: str) -> str | None:
    """None when ``stem.safetensors`` (or a sharded index / .bin) is there, else the one variant present (``fp16`` …)."""
    if any((folder / f"{stem}{s}").is_file() for s in (".safetensors", ".safetensors.index.json", ".bin")):
        return None
    found = sorted({p.name[len(stem) + 1:].split(".")[0] for p in folder.glob(f"{stem}.*.safetensors*")})
    return found[0] if found else None


def _check_pipeline_folder(root: Path) -> None:
    """One error for every missing component; a clear one for pipelines this course cannot run."""
    index = root / "model_index.json"
    model_index = _read_json(index) if index.is_file() else {}
    cls = model_index.get("_class_name", "")
    if "XL" in cls or "text_encoder_2" in model_index or (root / "text_encoder_2").is_dir():
        raise ComponentError(
            f"{root}: an SDXL pipeline ({cls or 'text_encoder_2/ present'}). load_sd_components runs pipelines with one "
            "CLIP text encoder (SD 1.x, SD 2.x); SDXL's two text encoders and added conditioning are not supported "
            "here. Load its UNet alone with unetlab.load_sd_unet(folder) (chapter 2 traces SDXL on the meta device)."
        )
    missing = _missing_components(root)
    if missing:
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        looks_like_unet = (root / "config.json").is_file() and (root.name == "unet" or not have)
        hint = (f"\n{root} looks like a UNet folder on its own; point at the pipeline folder above it "
                "(the one holding unet/, vae/, text_encoder/ …)." if looks_like_unet else "")
        raise ComponentError(
            f"{root}: this pipeline folder is missing {len(missing)} component file(s):\n"
            + "\n".join(f"    {m}" for m in missing)
            + f"\n(found folders: {', '.join(have) or 'none'}). A text-to-image loop needs all five: unet, vae, "
            "text_encoder, tokenizer, scheduler. Download the missing ones, e.g.\n    "
            + _DOWNLOAD_HINT.format(repo=HUB_IDS["sd15"][0]) + "\nor pass a complete folder." + hint
        )


def _load_text_parts(root: Path, device, dtype, notes: list[str]):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    folder = root / "text_encoder"
    variant = _variant(folder, "model")
    if variant:
        notes.append(f"text encoder: only the {variant} variant is on disk; loaded that")
    # float32 first, then cast: no torch_dtype= (deprecated in transformers 5)
    text_encoder = CLIPTextModel.from_pretrained(str(folder), variant=variant)
    return tokenizer, text_encoder


def _load_vae(root: Path, notes: list[str]):
    from diffusers import AutoencoderKL

    folder = root / "vae"
    variant = _variant(folder, WEIGHTS_NAME)
    if variant:
        notes.append(f"VAE: only the {variant} variant is on disk; loaded that")
    vae = AutoencoderKL.from_pretrained(str(folder), variant=variant)
    return vae.float()


def _check_fit(unet_config, text_config, vae_config, tokenizer_max: int | None, where: str) -> None:
    """Components that do not belong together: all problems in one ComponentError."""
    problems = []
    width = int(text_config.get("hidden_size", -1))
    if width != unet_config.cross_attention_dim:
        problems.append(
            f"the text encoder gives context {width} wide (text_encoder/config.json hidden_size) but the UNet "
            f"expects cross_attention_dim={unet_config.cross_attention_dim}; they come from different models "
            "(SD 1.x: CLIP ViT-L, 768; SD 2.x: OpenCLIP ViT-H, 1024; SDXL: 2048)"
        )
    latent = int(vae_config.get("latent_channels", 4))
    if unet_config.out_channels != latent:
        problems.append(
            f"the VAE's latents have {latent} channels but the UNet predicts {unet_config.out_channels} "
            "(out_channels): a VAE from a different model?"
        )
    positions = text_config.get("max_position_embeddings")
    if tokenizer_max is not None and positions is not None and tokenizer_max > int(positions):
        problems.append(
            f"the tokenizer pads to {tokenizer_max} tokens but the text encoder has {positions} positions "
            "(max_position_embeddings)"
        )
    if problems:
        raise ComponentError(f"{where}: the components do not fit together:\n" + "\n".join(f"  - {p}" for p in problems))


def _unet_config_of(root: Path):
    from unetlab.configs import UNetConfig

    return UNetConfig.from_diffusers(_read_json(root / "unet" / "config.json"), name=root.name)


def _tokenizer_max(root: Path) -> int | None:
    config = root / "tokenizer" / "tokenizer_config.json"
    value = _read_json(config).get("model_max_length") if config.is_file() else None
    return int(value) if isinstance(value, (int, float)) and value < 1e6 else None


def load_sd_components(
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    base: str | os.PathLike | None = None,
    prediction_type: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SDComponents:
    """Load tokenizer, text encoder, UNet (``SDUNet``), VAE and scheduler config; see the module doc.

    ``weights``: pipeline folder, cached hub id or single file (default: ``$UNETLAB_SD_WEIGHTS``, then
    the HF cache). ``device``/``dtype``: default ``$UNETLAB_DEVICE`` or the best device; fp16 on a GPU,
    fp32 on the CPU. ``base``: for a single file, the pipeline that supplies the tokenizer, scheduler
    and component configs (default: the cached pipeline of the same family). ``prediction_type``:
    overrides the scheduler config's (``"epsilon"``, ``"v_prediction"``, ``"sample"``); for a single file
    the default is what diffusers infers from the file (:func:`unetlab.sd.load.infer_prediction_type`).

    Raises :class:`WeightsNotFoundError` when nothing is found (or what is named does not exist),
    :class:`ComponentError` for a folder missing a component, components that do not fit together
    (e.g. a text width unlike the UNet's) or an SDXL pipeline; ``ValueError`` for a bad device.
    """
    device = select_device(device)
    dtype = select_dtype(device, dtype)
    path = find_sd_weights(weights, cache_dir=cache_dir)
    if path is None:
        raise WeightsNotFoundError(
            f"no Stable Diffusion weights found: {ENV_WEIGHTS} is not set and the Hugging Face cache holds no complete "
            f"pipeline of {', '.join(HUB_IDS[n][0] for n in _SEARCH)}. Set {ENV_WEIGHTS} to a pipeline folder or a "
            "single file, or download one once, online:\n    " + _DOWNLOAD_HINT.format(repo=HUB_IDS["sd15"][0])
        )
    notes: list[str] = []
    with _quiet():
        if path.is_file():
            return _load_single_file(path, device, dtype, base, cache_dir, prediction_type)
        _check_pipeline_folder(path)
        unet_config = _unet_config_of(path)
        _check_fit(unet_config, _read_json(path / "text_encoder" / "config.json"),
                   _read_json(path / "vae" / "config.json"), _tokenizer_max(path), str(path))
        tokenizer, text_encoder = _load_text_parts(path, device, dtype, notes)
        vae = _load_vae(path, notes)
        unet_variant = _variant(path / "unet", WEIGHTS_NAME)
        unet = load_sd_unet(path / "unet", device=device, dtype=dtype, variant=unet_variant)
        scheduler_config = _with_prediction_type(_read_json(path / "scheduler" / "scheduler_config.json"),
                                                 prediction_type, notes)
        # cast after loading (inside _quiet: diffusers warns about casting a VAE with .to())
        text_encoder, vae = text_encoder.to(device, dtype).eval(), vae.to(device, dtype).eval()
    return SDComponents(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler_config=scheduler_config,
        source=path, kind="pipeline", device=device, dtype=dtype, notes=notes,
    )


# ---- a single file ---------------------------------------------------------------------------------
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer."


def _read_prefixed(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names start with one of ``prefixes`` (safetensors: only those are read)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    from unetlab.sd.load import read_state_dict

    return {k: v for k, v in read_state_dict(path).items() if k.startswith(prefixes)}


def _with_prediction_type(config: dict, prediction_type: str | None, notes: list[str]) -> dict:
    if prediction_type is None:
        return config
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
    if config.get("prediction_type", "epsilon") != prediction_type:
        notes.append(f"prediction type: {prediction_type} (the scheduler config says {config.get('prediction_type', 'epsilon')})")
    return dict(config, prediction_type=prediction_type)


def _load_single_file(path: Path, device, dtype, base, cache_dir, prediction_type) -> SDComponents:
    notes = [
        "single file: the UNet comes from the file; the tokenizer and scheduler config (never inside a single file) "
        "come from the base pipeline"
    ]
    if base is not None:
        root = _base_pipeline(path, None, base, cache_dir)
        unet = _unet_with_base_config(path, root, device, dtype)
    else:
        # architecture (channels, widths, heads, projections) inferred from the tensors; EMA copy as diffusers picks it
        unet = load_sd_unet(path, device=device, dtype=dtype)
        root = _base_pipeline(path, unet.config.cross_attention_dim, None, cache_dir)
    _check_pipeline_folder(root)
    _check_fit(unet.config, _read_json(root / "text_encoder" / "config.json"),
               _read_json(root / "vae" / "config.json"), _tokenizer_max(root), f"{path} with base {root}")
    tokenizer, text_encoder = _load_text_parts(root, device, dtype, notes)
    vae = _load_vae(root, notes)
    extra = _read_prefixed(path, (_VAE_PREFIX, _CLIP_PREFIX))
    _replace_from_file(path, extra, vae, text_encoder, notes)
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json")
    if prediction_type is None:
        # what diffusers infers for a single file (SD 2.x 768 models: v), not necessarily the base's
        from unetlab.sd.load import infer_prediction_type

        prediction_type = infer_prediction_type(path)
    scheduler_config = _with_prediction_type(scheduler_config, prediction_type, notes)
    notes.append(f"base pipeline: {root}")
    return SDComponents(
        tokenizer=tokenizer, text_encoder=text_encoder.to(device, dtype).eval(), unet=unet,
        vae=vae.to(device, dtype).eval(), scheduler_config=scheduler_config, source=path, kind="single file",
        device=device, dtype=dtype, notes=notes,
    )


def _unet_with_base_config(path: Path, root: Path, device, dtype):
    """The file's UNet in the base's architecture when the tensors agree with it (head counts and norm groups
    are not stored in the weights); otherwise the architecture inferred from the tensors (e.g. an inpainting
    file on a text-to-image base)."""
    from unetlab.sd.load import CheckpointError

    if (root / "unet" / "config.json").is_file():
        try:
            return load_sd_unet(path, config=_unet_config_of(root), device=device, dtype=dtype)
        except CheckpointError:
            pass
    return load_sd_unet(path, device=device, dtype=dtype)


def _base_pipeline(path: Path, width: int | None, base, cache_dir) -> Path:
    if base is not None:
        found = find_sd_weights(base, cache_dir=cache_dir)
        if found is None or found.is_file():
            raise ComponentError(f"base={base!r}: expected a diffusers pipeline folder or a cached hub id")
        return found
    family = {768: "sd15", 1024: "sd21"}.get(width)
    if family is not None:
        root = _cached_pipeline(family, cache_dir)
        if root is not None and not _missing_components(root):
            return root
    repo = HUB_IDS[family][0] if family else "<the pipeline this checkpoint was fine-tuned from>"
    raise ComponentError(
        f"{path}: a single-file checkpoint holds the UNet (context width {width}) but never a tokenizer or a scheduler "
        "config, and diffusers needs configs it would download to convert its VAE and text encoder. Give a base "
        "pipeline of the same family: load_sd_components(file, base=folder_or_hub_id), or put it in the Hugging Face "
        "cache once, online:\n    " + _DOWNLOAD_HINT.format(repo=repo)
    )


def _replace_from_file(path: Path, extra: dict, vae, text_encoder, notes: list[str]) -> None:
    """Put the file's own VAE / SD 1.x CLIP weights into the base's architectures (diffusers' converters)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint

    if any(k.startswith(_VAE_PREFIX) for k in extra):
        converted = convert_ldm_vae_checkpoint(extra, dict(vae.config))
        _load_strict(vae, converted, path, "VAE")
        notes.append("VAE: weights from the file (converted from LDM names)")
    else:
        notes.append("VAE: the file has none; the base pipeline's")
    if any(k.startswith(_CLIP_PREFIX) for k in extra):
        converted = convert_ldm_clip_checkpoint({k: v for k, v in extra.items() if k.startswith(_CLIP_PREFIX)})
        _load_strict(text_encoder, converted, path, "text encoder", ignore=("position_ids",))
        notes.append("text encoder: weights from the file (CLIP, converted from LDM names)")
    else:
        notes.append("text encoder: the file has no SD 1.x CLIP weights; the base pipeline's")


def _load_strict(model, state_dict: dict, path: Path, what: str, ignore: tuple[str, ...] = ()) -> None:
    expected = model.state_dict()
    # SD 1.x files name CLIP's tensors text_model.embeddings…; transformers 5's CLIPTextModel has no text_model.
    state_dict = {
        k[len("text_model."):] if k not in expected and k[len("text_model."):] in expected and k.startswith("text_model.")
        else k: v
        for k, v in state_dict.items()
    }
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(ignore)}
    missing = [k for k in expected if k not in state_dict and not k.endswith(ignore)]
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state_dict.items()
             if k in expected and v.shape != expected[k].shape]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or wrong or unexpected:
        raise ComponentError(
            f"{path}: its {what} does not fit the base pipeline's {what} config: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape (first: {(missing + unexpected + wrong)[:3]}). "
            "Is the base pipeline of the same family as the file?"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=False)
