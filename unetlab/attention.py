"""Attention in the UNet: study note 003's simple version and Stable Diffusion's transformer blocks.

Study note 003 §19.4 (chapter 1, chapter 5)
    ``SelfAttention(channels)``      single-head spatial self-attention on a ``(B, C, H, W)`` map
    ``AttnResBlock(channels, time_emb_dim)``  study note 003's ``ResBlock`` followed by ``SelfAttention``

Stable Diffusion (parameter names equal diffusers', so diffusers' weights load with ``strict=True``)
    ``Attention(query_dim, cross_attention_dim=None, heads=8, dim_head=64)``
        multi-head attention; self-attention when ``context`` is None, cross-attention otherwise.
        Parameters ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out.0`` (with bias).
    ``GEGLU(dim_in, dim_out)``           ``proj`` then ``hidden * gelu(gate)``
    ``FeedForward(dim)``                 ``net.0`` (GEGLU, ×4 wide), ``net.1`` dropout, ``net.2`` linear
    ``BasicTransformerBlock``            norm1 → attn1 (self) → norm2 → attn2 (cross) → norm3 → ff,
                                         each with a residual connection
    ``Transformer2DModel``               SD's "spatial transformer": GroupNorm → proj_in → blocks →
                                         proj_out, plus the input (residual)

Two ways to compute attention, equal up to float rounding
    * SDPA (default): ``torch.nn.functional.scaled_dot_product_attention``, fused, memory-light.
    * explicit: ``softmax(q kᵀ · scale) v`` written out, so the probabilities exist as a tensor.
    Choose per module with ``attn.use_sdpa = False``, for the whole class with
    ``Attention.use_sdpa = False``, or temporarily with ``with attention_backend("explicit"): ...``.

Hook on the attention probabilities (used by ``unetlab.capture.capture_attention``)
    ``handle = attn.register_probs_hook(hook, wants=None)``; ``handle.remove()`` takes it off again.
    A call where at least one hook wants the probabilities takes the explicit path and calls
    ``hook(attn, probs)`` with ``probs`` of shape ``(B, heads, N_query, N_key)`` — for a
    cross-attention in SD 1.5 at a 64×64 latent's first block: ``(B, 8, 4096, 77)``.
    ``wants(attn, batch, num_queries, num_keys) -> bool`` decides per call, before anything is
    computed; a call no hook wants keeps SDPA and never builds the probabilities (SD 1.5's
    self-attention at 64×64, batch 2: 2 × 8 × 4096² floats = 1 GiB saved per layer and call).
    Without ``wants`` a hook wants every call.
    ``probs`` rows sum to 1 and are in the dtype of ``v``. A hook that returns None leaves
    the output unchanged (the explicit path equals SDPA); a hook may return a tensor of the
    same shape to replace the probabilities (attention editing). Don't modify ``probs`` in place.

IP-Adapter's decoupled cross-attention (Ye et al. 2023, arXiv:2308.06721; diffusers'
``IPAdapterAttnProcessor2_0``), an option of a cross-attention ``Attention``
    ``attn.enable_ip_adapter(scale=1.0)`` adds ``to_k_ip`` and ``to_v_ip`` (``cross_attention_dim ->
    heads·dim_head``, no bias; they start as copies of ``to_k`` / ``to_v``, as IP-Adapter's training
    does). Then ``attn(x, (context, ip_tokens))`` computes
    ``softmax(q kᵀ·s) v + ip_scale · softmax(q k_ipᵀ·s) v_ip``: the same queries attend separately to
    the text tokens and to the image tokens ``ip_tokens`` ``(B, n_image_tokens, cross_attention_dim)``,
    and the two results are added before ``to_out``. ``attn.ip_scale`` (default 1.0) weighs the image;
    0 gives back the text-only output exactly. Probability hooks see the text probabilities only.
    Where the image tokens come from: ``unetlab.sd.ip_adapter`` (a CLIP image encoder's embedding,
    projected by ``ImageProjection``).

Half precision: the explicit path takes the softmax in float32 (and ``q kᵀ`` too when
``upcast_attention``, as SD 2.1 asks); SDPA's kernels accumulate in float32 themselves, and
``upcast_attention`` does not change the SDPA path — as in diffusers' default processor.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from unetlab.simple_unet import ResBlock

__all__ = [
    "SelfAttention",
    "AttnResBlock",
    "Attention",
    "attention_backend",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "Transformer2DModel",
]


# ============================================================================================
# Study note 003 §19.4: the textbook version
# ============================================================================================
class SelfAttention(nn.Module):
    """空间自注意力 | Spatial self-attention (study note 003 §19.4, one head, 1x1-conv projections)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 8:
            raise ValueError(f"SelfAttention uses GroupNorm(8, channels): channels must be a multiple of 8, got {channels}")
        self.channels = channels
        self.norm = nn.GroupNorm(8, channels)
        # one 1x1 conv makes q, k and v at once: C -> 3C channels
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SelfAttention expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        B, C, H, W = x.shape
        # (B, C, H, W)
        h = self.norm(x)
        # (B, 3C, H, W)
        qkv = self.qkv(h)
        # three × (B, C, H, W)
        q, k, v = qkv.chunk(3, dim=1)
        # (B, C, H, W) -> (B, C, HW) -> (B, HW, C): every pixel becomes a token
        q = q.reshape(B, C, H * W).transpose(1, 2)
        k = k.reshape(B, C, H * W).transpose(1, 2)
        v = v.reshape(B, C, H * W).transpose(1, 2)
        # (B, HW, HW) = q kᵀ / √C
        scores = torch.matmul(q, k.transpose(-2, -1)) / (C**0.5)
        # (B, HW, HW), each row sums to 1
        weights = torch.softmax(scores, dim=-1)
        # (B, HW, C)
        attn = torch.matmul(weights, v)
        # (B, HW, C) -> (B, C, H, W)
        attn = attn.transpose(1, 2).reshape(B, C, H, W)
        # (B, C, H, W): residual connection
        return x + self.out(attn)


class AttnResBlock(nn.Module):
    """带注意力的残差块 | Residual block with attention (study note 003 §19.4)."""

    def __init__(self, channels: int, time_emb_dim: int):
        super().__init__()
        # chapter 1's ResBlock: GroupNorm → ReLU → conv, plus the time shift, plus a residual
        self.res = ResBlock(channels, channels, time_emb_dim)
        self.attn = SelfAttention(channels)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W)
        h = self.res(x, time_emb)
        # (B, C, H, W)
        return self.attn(h)


# ============================================================================================
# Stable Diffusion
# ============================================================================================
ProbsHook = Callable[["Attention", torch.Tensor], "torch.Tensor | None"]
# wants(attn, batch, num_queries, num_keys) -> bool: does the hook want this call's probabilities?
ProbsWants = Callable[["Attention", int, int, int], bool]


class _WantingHook:
    """A probability hook with its ``wants`` predicate (what ``register_probs_hook(wants=)`` stores)."""

    def __init__(self, hook: ProbsHook, wants: ProbsWants):
        self.hook = hook
        self.wants = wants

    def __call__(self, attn: "Attention", probs: torch.Tensor) -> "torch.Tensor | None":
        return self.hook(attn, probs)


class Attention(nn.Module):
    """Multi-head attention, diffusers' ``Attention`` as SD uses it.

    ``forward(x, context=None)``: ``x`` is ``(B, N, query_dim)``; ``context`` is
    ``(B, M, cross_attention_dim)`` for cross-attention or None for self-attention (then
    keys and values come from ``x``). Returns ``(B, N, query_dim)``. After ``enable_ip_adapter()``,
    ``context`` may also be the pair ``(context, ip_tokens)`` (IP-Adapter, see the module docstring).

    ``use_sdpa`` (class attribute, default True; may be set per instance) picks the fused
    SDPA path; a probability hook that wants the call forces the explicit path (see the module
    docstring and ``register_probs_hook``).
    """

    use_sdpa: bool = True

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.inner_dim = inner_dim
        # 1/√d: keeps q·k near unit variance however wide a head is
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention

        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(self.cross_attention_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(self.cross_attention_dim, inner_dim, bias=bias)
        # to_out.0 = output projection, to_out.1 = dropout (diffusers' layout)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim), nn.Dropout(dropout)])
        self._probs_hooks: OrderedDict[int, ProbsHook] = OrderedDict()
        # IP-Adapter (off until enable_ip_adapter): image keys/values and their weight
        self.to_k_ip: nn.Linear | None = None
        self.to_v_ip: nn.Linear | None = None
        self.ip_scale: float = 1.0

    def extra_repr(self) -> str:
        kind = "cross" if self.is_cross_attention else "self"
        return f"{kind}, heads={self.heads}, dim_head={self.dim_head}"

    def register_probs_hook(self, hook: ProbsHook, *, wants: ProbsWants | None = None) -> RemovableHandle:
        """Call ``hook(self, probs)`` on the forwards it wants; ``probs``: ``(B, heads, N_query, N_key)``.

        ``wants(self, batch, num_queries, num_keys) -> bool`` (optional; ints, asked before the
        attention is computed) selects the calls: when no hook of this module wants a call, it
        runs SDPA and ``probs`` is never built. ``wants`` may raise to refuse a call (e.g. a batch
        selection that does not fit ``batch``). Without ``wants`` every call is wanted.
        Returns a handle; ``handle.remove()`` takes the hook off. Raises ``TypeError`` when
        ``hook`` or ``wants`` is not callable.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if wants is not None and not callable(wants):
            raise TypeError(f"wants must be None or callable (attn, batch, num_queries, num_keys) -> bool, got {type(wants).__name__}")
        handle = RemovableHandle(self._probs_hooks)
        self._probs_hooks[handle.id] = hook if wants is None else _WantingHook(hook, wants)
        return handle

    def _hooks_for(self, batch: int, num_queries: int, num_keys: int) -> list[ProbsHook]:
        """The probability hooks that want this call (empty: nobody needs the probabilities)."""
        return [
            hook
            for hook in self._probs_hooks.values()
            if not isinstance(hook, _WantingHook) or hook.wants(self, batch, num_queries, num_keys)
        ]

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # (B, N, heads·d) -> (B, N, heads, d) -> (B, heads, N, d)
        B, N, _ = t.shape
        return t.view(B, N, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(f"Attention expects x of shape (B, N, {self.query_dim}), got {tuple(x.shape)}")
        ip_tokens = None
        if isinstance(context, tuple):
            # IP-Adapter: (text context, image tokens), as diffusers passes encoder_hidden_states
            context, ip_tokens = self._split_ip_context(x, context)
        if context is None:
            context = x
        if context.ndim != 3 or context.shape[-1] != self.cross_attention_dim or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"Attention expects context of shape ({x.shape[0]}, M, {self.cross_attention_dim}), "
                f"got {tuple(context.shape)}"
            )
        B, N, _ = x.shape
        # (B, heads, N, d)
        q = self._split_heads(self.to_q(x))
        # (B, heads, M, d): M = N for self-attention, 77 text tokens for SD's cross-attention
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))

        # the probability hooks that want this call; none: the probabilities need not exist
        hooks = self._hooks_for(B, N, k.shape[-2]) if self._probs_hooks else []
        if self.use_sdpa and not hooks:
            # (B, heads, N, d), fused softmax(q kᵀ · scale) v
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            # (B, heads, N, d)
            out = self._explicit_attention(q, k, v, hooks)

        # (B, heads, N, d) -> (B, N, heads·d)
        out = out.transpose(1, 2).reshape(B, N, self.inner_dim)
        if ip_tokens is not None and self.ip_scale != 0:
            # (B, N, heads·d) + ip_scale · (the same queries attending to the image tokens), as diffusers adds it
            out = out + self.ip_scale * self._ip_attention(q, ip_tokens)
        # (B, N, query_dim)
        out = self.to_out[0](out)
        return self.to_out[1](out)

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hooks: list[ProbsHook] | None = None
    ) -> torch.Tensor:
        """``softmax(q kᵀ · scale) v`` written out; ``hooks`` (default: every registered one) see
        the probabilities ``(B, heads, N, M)`` and may replace them."""
        if hooks is None:
            hooks = list(self._probs_hooks.values())
        if self.upcast_attention:
            q, k = q.float(), k.float()
        # (B, heads, N, M) = q kᵀ · scale
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        # (B, heads, N, M); softmax in float32 even for fp16/bf16 models, then back to v's dtype
        probs = scores.float().softmax(dim=-1).to(v.dtype)
        # free the scores now: the hooks below may copy probs, and three (B, heads, N, M) at once is the peak
        del scores
        for hook in hooks:
            replaced = hook(self, probs)
            if replaced is not None:
                if not isinstance(replaced, torch.Tensor) or replaced.shape != probs.shape:
                    raise ValueError(
                        f"a probs hook must return None or a tensor of shape {tuple(probs.shape)}, "
                        f"got {getattr(replaced, 'shape', type(replaced).__name__)}"
                    )
                probs = replaced.to(v.dtype)
        # (B, heads, N, d)
        return torch.matmul(probs, v)


    # ---- IP-Adapter ------------------------------------------------------------------------------
    def enable_ip_adapter(self, scale: float = 1.0, copy_text_projections: bool = True) -> None:
        """Add IP-Adapter's ``to_k_ip`` / ``to_v_ip`` (``cross_attention_dim -> heads·dim_head``, no bias).

        ``copy_text_projections``: start them as copies of ``to_k`` / ``to_v`` (IP-Adapter's training
        initialisation); otherwise PyTorch's default init. Only for cross-attention (``ValueError`` otherwise).
        """
        if not self.is_cross_attention:
            raise ValueError("IP-Adapter adds image keys/values to cross-attention; this Attention is self-attention")
        w = self.to_k.weight
        self.to_k_ip = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=False, device=w.device, dtype=w.dtype)
        self.to_v_ip = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=False, device=w.device, dtype=w.dtype)
        if copy_text_projections and not w.is_meta:
            with torch.no_grad():
                self.to_k_ip.weight.copy_(self.to_k.weight)
                self.to_v_ip.weight.copy_(self.to_v.weight)
        self.ip_scale = float(scale)

    def _split_ip_context(self, x: torch.Tensor, pair: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if len(pair) != 2:
            raise ValueError(f"a tuple context must be (context, ip_tokens), got {len(pair)} items")
        if self.to_k_ip is None:
            raise ValueError(
                "got (context, ip_tokens) but this Attention has no IP-Adapter projections; "
                "call attn.enable_ip_adapter() (or unetlab.sd.ip_adapter.enable_ip_adapter(unet)) first"
            )
        context, ip_tokens = pair
        if (not isinstance(ip_tokens, torch.Tensor) or ip_tokens.ndim != 3
                or ip_tokens.shape[-1] != self.cross_attention_dim or ip_tokens.shape[0] != x.shape[0]):
            got = tuple(ip_tokens.shape) if isinstance(ip_tokens, torch.Tensor) else type(ip_tokens).__name__
            raise ValueError(f"ip_tokens must have shape ({x.shape[0]}, n_image_tokens, {self.cross_attention_dim}), got {got}")
        return context, ip_tokens

    def _ip_attention(self, q: torch.Tensor, ip_tokens: torch.Tensor) -> torch.Tensor:
        """The queries ``q`` ``(B, heads, N, d)`` attending to the image tokens: ``(B, N, heads·d)``."""
        # (B, heads, M_ip, d): M_ip = 4 image tokens for the plain IP-Adapter
        k = self._split_heads(self.to_k_ip(ip_tokens))
        v = self._split_heads(self.to_v_ip(ip_tokens))
        if self.use_sdpa:
            # (B, heads, N, d)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            # (B, heads, N, M_ip), softmax over the image tokens in float32
            probs = (torch.matmul(q, k.transpose(-2, -1)) * self.scale).float().softmax(dim=-1).to(v.dtype)
            # (B, heads, N, d)
            out = torch.matmul(probs, v)
        # (B, N, heads·d)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.inner_dim)


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily switch every ``Attention`` to ``"sdpa"`` or ``"explicit"`` (class default).

    Instances that set ``use_sdpa`` themselves keep their own choice.
    """
    if name not in ("sdpa", "explicit"):
        raise ValueError(f"attention backend must be 'sdpa' or 'explicit', got {name!r}")
    before = Attention.use_sdpa
    Attention.use_sdpa = name == "sdpa"
    try:
        yield
    finally:
        Attention.use_sdpa = before


class GEGLU(nn.Module):
    """Gated GELU: ``proj`` makes 2×dim_out features; half of them gate the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two × (B, N, dim_out)
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        # (B, N, dim_out)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's MLP: GEGLU to ``mult × dim``, dropout, linear back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * mult
        # net.0.proj: dim -> 2·inner (GEGLU), net.1: dropout, net.2: inner -> dim
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, dim) -> (B, N, inner) -> (B, N, dim)
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """norm1 → attn1 (self) → norm2 → attn2 (cross, on ``context``) → norm3 → ff; pre-norm residuals."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int,
        dropout: float = 0.0,
        upcast_attention: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(dim, None, num_attention_heads, attention_head_dim, dropout, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = Attention(
            dim, cross_attention_dim, num_attention_heads, attention_head_dim, dropout, upcast_attention=upcast_attention
        )
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # (B, HW, dim): pixels attend to pixels
        x = x + self.attn1(self.norm1(x))
        # (B, HW, dim): pixels attend to the text tokens in context (B, 77, cross_attention_dim)
        x = x + self.attn2(self.norm2(x), context)
        # (B, HW, dim): per-token MLP
        x = x + self.ff(self.norm3(x))
        return x


class Transformer2DModel(nn.Module):
    """SD's spatial transformer: a feature map becomes ``H·W`` tokens, runs through
    ``num_layers`` BasicTransformerBlocks, and is added back to its input.

    ``use_linear_projection``: proj_in/proj_out are ``nn.Linear`` on tokens (SD 2.x, XL) or
    1x1 ``nn.Conv2d`` on the map (SD 1.x) — the same arithmetic, different weight shapes.
    """

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        cross_attention_dim: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.inner_dim = inner_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    cross_attention_dim,
                    dropout=dropout,
                    upcast_attention=upcast_attention,
                )
                for _ in range(num_layers)
            ]
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        residual = x
        # (B, C, H, W)
        h = self.norm(x)
        if not self.use_linear_projection:
            # (B, inner, H, W)
            h = self.proj_in(h)
            # (B, HW, inner): one token per pixel
            h = h.permute(0, 2, 3, 1).reshape(B, H * W, self.inner_dim)
        else:
            # (B, HW, C)
            h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)
            # (B, HW, inner)
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            # (B, HW, inner)
            h = block(h, context)
        if not self.use_linear_projection:
            # (B, inner, H, W)
            h = h.reshape(B, H, W, self.inner_dim).permute(0, 3, 1, 2).contiguous()
            # (B, C, H, W)
            h = self.proj_out(h)
        else:
            # (B, HW, C)
            h = self.proj_out(h)
            # (B, C, H, W)
            h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        # (B, C, H, W)
        return h + residual
