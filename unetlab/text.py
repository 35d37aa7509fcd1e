"""The small text side of the course's text-to-image model: a word-level tokenizer and a tiny transformer.

Stable Diffusion reads a caption with CLIP: a BPE tokenizer (49,408 tokens, 77 positions) and a
12-layer transformer (123 M parameters) trained on 400 M image–text pairs. The captions of
:mod:`unetlab.data` use 21 words, so the course trains its own, tiny encoder jointly with the UNet
(``unetlab.text2img``): nothing is downloaded, and it trains in minutes on a CPU.

``WordTokenizer``
    One token per word. The vocabulary is ``<pad>``, ``<unk>`` and every word of
    :func:`unetlab.data.vocabulary`. Every caption becomes exactly ``max_length`` ids (default 12),
    padded with ``<pad>``, like CLIP's fixed 77. Defined behaviour for awkward captions:

    * unknown word ("a red star"): becomes ``<unk>`` (``on_unknown="unk"``, the default) — the model
      has never seen it, so it carries no meaning; ``on_unknown="error"`` raises a ``ValueError``
      naming the words instead. ``tokenizer.unknown_words(caption)`` lists them.
    * empty caption ``""`` (or only spaces): all ``<pad>``. This *is* the unconditional input of
      classifier-free guidance: training replaces some captions by ``""`` (caption dropout).
    * over-long caption (more than ``max_length`` words): ``ValueError`` saying how many words fit
      (silently cutting a caption would drop words such as "left" without notice).
    * not a string: ``TypeError``.

    Words are lower-cased and split on white space; the punctuation ``, . ; : ! ?`` is dropped.

``TextEncoder``
    token embedding + learned position embedding → ``depth`` pre-norm transformer layers
    (self-attention over the caption, then an MLP) → final LayerNorm. Output ``context`` of shape
    ``(B, max_length, dim)``: one vector per token, which the UNet's cross-attention reads, just as
    SD reads CLIP's ``(B, 77, 768)``. No attention mask: like SD with CLIP, the pad positions are
    ordinary tokens.

    >>> tok = WordTokenizer()
    >>> ids = tok(["a small red circle at the top left", ""])      # (2, 12) long
    >>> context = TextEncoder(tok.vocab_size, tok.max_length, dim=64)(ids)   # (2, 12, 64)
"""
from __future__ import annotations

import re
from numbers import Integral
from typing import Sequence

import torch
import torch.nn as nn

from .data import vocabulary

__all__ = ["PAD", "UNK", "WordTokenizer", "TextEncoder", "TextEncoderLayer"]

PAD = "<pad>"
UNK = "<unk>"

_PUNCTUATION = re.compile(r"[,.;:!?]")


class WordTokenizer:
    """Caption ↔ token ids, one id per word, fixed length (see the module docstring)."""

    def __init__(self, words: Sequence[str] | None = None, max_length: int = 12):
        if isinstance(max_length, bool) or not isinstance(max_length, Integral) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        words = list(vocabulary() if words is None else words)
        if not words or not all(isinstance(w, str) and w and w == w.lower() and " " not in w for w in words):
            raise ValueError("words must be a non-empty list of lower-case words without spaces")
        if len(set(words)) != len(words) or PAD in words or UNK in words:
            raise ValueError(f"words must be unique and must not contain {PAD!r} or {UNK!r}")
        self.max_length = int(max_length)
        # id 0 is <pad>, id 1 is <unk>, then the words in the given order
        self.vocab: list[str] = [PAD, UNK, *words]
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id = self.ids[PAD]
        self.unk_id = self.ids[UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"

    def words(self, caption: str) -> list[str]:
        """The words of ``caption``: lower-cased, punctuation dropped, split on white space."""
        if not isinstance(caption, str):
            raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
        return _PUNCTUATION.sub(" ", caption.lower()).split()

    def unknown_words(self, caption: str) -> list[str]:
        """Words of ``caption`` that are not in the vocabulary (they would become ``<unk>``)."""
        return [w for w in self.words(caption) if w not in self.ids]

    def encode(self, caption: str, on_unknown: str = "unk") -> list[int]:
        """One caption -> ``max_length`` ids, padded with ``<pad>``."""
        if on_unknown not in ("unk", "error"):
            raise ValueError(f"on_unknown must be 'unk' or 'error', got {on_unknown!r}")
        words = self.words(caption)
        if len(words) > self.max_length:
            raise ValueError(
                f"caption has {len(words)} words but the tokenizer holds at most {self.max_length}: {caption!r}"
            )
        unknown = [w for w in words if w not in self.ids]
        if unknown and on_unknown == "error":
            raise ValueError(f"unknown word(s) {unknown} in {caption!r}; known words: {', '.join(self.vocab[2:])}")
        ids = [self.ids.get(w, self.unk_id) for w in words]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, captions: str | Sequence[str], on_unknown: str = "unk") -> torch.Tensor:
        """A caption or a list of captions -> ids ``(B, max_length)`` (long)."""
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, (list, tuple)):
            raise TypeError(f"captions must be a str or a list of str, got {type(captions).__name__}")
        if len(captions) == 0:
            raise ValueError("captions must hold at least one caption (use '' for the unconditional one)")
        return torch.tensor([self.encode(c, on_unknown=on_unknown) for c in captions], dtype=torch.long)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Ids -> words, pads left out (``<unk>`` stays visible)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and isinstance(ids[0], list):
            raise ValueError("decode takes the ids of one caption, shape (max_length,)")
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad} are outside the vocabulary [0, {self.vocab_size - 1}]")
        return " ".join(self.vocab[int(i)] for i in ids if int(i) != self.pad_id)

    def token_index(self, caption: str, word: str) -> int:
        """Position of ``word`` in the tokenized ``caption`` (first occurrence), e.g. to pick its attention map."""
        words = self.words(caption)
        if word not in words:
            raise ValueError(f"{word!r} does not occur in the caption {caption!r}")
        return words.index(word)


class TextEncoderLayer(nn.Module):
    """One pre-norm transformer layer: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, D)
        h = self.norm1(x)
        # (B, L, D): every token looks at every token of its caption
        x = x + self.attn(h, h, h, need_weights=False)[0]
        # (B, L, D)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` -> ``context`` ``(B, L, dim)`` (see the module docstring)."""

    def __init__(self, vocab_size: int, max_length: int = 12, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_length", max_length), ("dim", dim),
                            ("depth", depth), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < (0 if name == "depth" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.vocab_size, self.max_length, self.dim = int(vocab_size), int(max_length), int(dim)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.layers = nn.ModuleList([TextEncoderLayer(dim, heads) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError(
                f"ids must be a (B, {self.max_length}) long tensor from WordTokenizer, got "
                f"{type(ids).__name__ if not isinstance(ids, torch.Tensor) else (tuple(ids.shape), ids.dtype)}"
            )
        if ids.shape[1] != self.max_length:
            raise ValueError(f"ids must have {self.max_length} positions, got {ids.shape[1]}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size - 1}], got {int(ids.min())} … {int(ids.max())}")
        # (B, L, D) = token vector + position vector
        x = self.token_embedding(ids) + self.position_embedding
        for layer in self.layers:
            # (B, L, D)
            x = layer(x)
        # (B, L, D)
        return self.final_norm(x)
