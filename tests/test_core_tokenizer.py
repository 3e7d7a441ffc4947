"""Tokenizers: GPT-2 / GPT-NeoX loading gives the standard ids; every trained tokenizer round-trips TinyStories."""
from __future__ import annotations

import pytest

from lmforge.tokenizer import load_tokenizer, train_bpe, train_unigram

GPT2_SENTENCE = "Once upon a time, there was a little girl named Lily."
GPT2_IDS = [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 3706, 20037, 13]  # the standard GPT-2 encoding


def test_gpt2_from_vocab_and_merges_gives_standard_ids(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt2")
    assert tok.encode(GPT2_SENTENCE) == GPT2_IDS
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" <|endoftext|>") == [220, 50256]  # the special token is one id, never split
    assert tok.eos_id == 50256 and tok.vocab_size == 50257
    assert tok.decode(GPT2_IDS) == GPT2_SENTENCE


def test_gpt_neox_tokenizer_json(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    assert tok.encode("Once upon a time") == [10758, 2220, 247, 673]
    assert tok.eos_id == 0 and tok.vocab_size == 50277


@pytest.mark.parametrize("kind,vocab", [("bpe", 512), ("unigram", 512)])
def test_trained_tokenizers_round_trip_and_reload(tmp_path, stories, kind, vocab):
    train = train_bpe if kind == "bpe" else train_unigram
    tok = train(stories[:300], vocab)
    assert tok.vocab_size == vocab
    held_out = stories[300:]
    for text in held_out:
        assert tok.decode(tok.encode(text)) == text
    # bits-per-byte bookkeeping: the bytes per token add up to the text's UTF-8 length
    for text in held_out[:20]:
        assert int(tok.token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.fingerprint == tok.fingerprint and again.eos_id == tok.eos_id
    assert again.encode(held_out[0]) == tok.encode(held_out[0])


def test_seed_sized_192_unigram_round_trips_plain_stories(stories):
    """The ternary-1m recipe's 192-token unigram has no room for byte fallback: it covers every character seen in
    training, so stories made of those characters round-trip exactly."""
    tok = train_unigram(stories[:300], 192)
    assert tok.vocab_size == 192
    seen = set("".join(stories[:300]))
    plain = [s for s in stories[300:] if set(s) <= seen]
    assert len(plain) > 50
    for text in plain:
        assert tok.decode(tok.encode(text)) == text
    bytes_per_token = sum(len(s.encode()) for s in plain) / sum(len(tok.encode(s)) for s in plain)
    assert 1.7 < bytes_per_token < 2.2  # the seed card: ~1.97 bytes per token on TinyStories


def test_special_tokens_are_atomic_and_appended(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    ids = tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    assert ids == [50277, 50278] and tok.vocab_size == 50279
    assert tok.encode("<|im_start|>user")[0] == 50277


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmforgeError, match="no tokenizer here"):
        load_tokenizer(tmp_path / "empty")
