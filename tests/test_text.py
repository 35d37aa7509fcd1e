"""Tests for the word-level tokenizer and the small text encoder (unetlab.text)."""
import pytest
import torch

from unetlab.data import HELDOUT_SEED, make_shapes, vocabulary
from unetlab.text import PAD, UNK, TextEncoder, WordTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer()


def test_vocabulary_covers_every_caption(tok):
    assert tok.vocab[:2] == [PAD, UNK]
    assert tok.vocab_size == len(vocabulary()) + 2
    for c in make_shapes(200, seed=HELDOUT_SEED).captions:
        assert tok.unknown_words(c) == []
        ids = tok(c)
        assert ids.shape == (1, tok.max_length) and ids.dtype == torch.long
        assert tok.decode(ids[0]) == c


def test_encode_pads_to_fixed_length(tok):
    ids = tok.encode("a small red circle at the top left")
    assert len(ids) == tok.max_length
    assert ids[8:] == [tok.pad_id] * (tok.max_length - 8)
    assert ids[:2] == [tok.ids["a"], tok.ids["small"]]


def test_case_and_punctuation(tok):
    assert tok.encode("A Red circle, at the TOP.") == tok.encode("a red circle at the top")


def test_empty_caption_is_all_pad(tok):
    assert tok.encode("") == [tok.pad_id] * tok.max_length
    assert tok.encode("   ") == [tok.pad_id] * tok.max_length


def test_unknown_words_become_unk_or_raise(tok):
    ids = tok.encode("a red star")
    assert ids[2] == tok.unk_id and ids[1] == tok.ids["red"]
    assert tok.unknown_words("a red star on a hill") == ["star", "on", "hill"]
    with pytest.raises(ValueError, match="star"):
        tok.encode("a red star", on_unknown="error")
    with pytest.raises(ValueError, match="on_unknown"):
        tok.encode("a red circle", on_unknown="ignore")


def test_overlong_caption_raises(tok):
    long = " ".join(["a"] * (tok.max_length + 1))
    with pytest.raises(ValueError, match=f"at most {tok.max_length}"):
        tok.encode(long)
    assert len(tok.encode(" ".join(["a"] * tok.max_length))) == tok.max_length


def test_bad_types(tok):
    with pytest.raises(TypeError):
        tok.encode(3)
    with pytest.raises(TypeError):
        tok(None)
    with pytest.raises(ValueError):
        tok([])
    with pytest.raises(ValueError):
        WordTokenizer(max_length=0)
    with pytest.raises(ValueError):
        WordTokenizer(words=["a", "a"])
    with pytest.raises(ValueError):
        tok.decode([999])


def test_token_index(tok):
    assert tok.token_index("a small red circle at the top left", "circle") == 3
    with pytest.raises(ValueError, match="square"):
        tok.token_index("a small red circle", "square")


def test_encoder_shapes_and_dependence_on_words(tok):
    torch.manual_seed(0)
    enc = TextEncoder(tok.vocab_size, tok.max_length, dim=32, depth=2, heads=4).eval()
    ids = tok(["a small red circle at the top left", "a small blue circle at the top left", ""])
    out = enc(ids)
    assert out.shape == (3, tok.max_length, 32)
    assert torch.isfinite(out).all()
    # changing one word changes the context (the encoder mixes tokens, so every position may move)
    assert not torch.allclose(out[0], out[1])
    # same caption -> same context
    assert torch.equal(enc(ids[:1]), out[:1])


def test_encoder_rejects_bad_ids(tok):
    enc = TextEncoder(tok.vocab_size, tok.max_length, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="long"):
        enc(torch.zeros(1, tok.max_length))
    with pytest.raises(ValueError, match="positions"):
        enc(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="lie in"):
        enc(torch.full((1, tok.max_length), tok.vocab_size, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        TextEncoder(tok.vocab_size, dim=10, heads=4)
