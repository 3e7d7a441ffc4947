"""Training tokenizers on a corpus: byte-level BPE with Hugging Face `tokenizers`, unigram with SentencePiece."""
from __future__ import annotations

from typing import Iterable, Sequence

from lmforge.errors import LmforgeError
from lmforge.tokenizer.tokenizer import Tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ("<|endoftext|>",)) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): every byte is in the base alphabet, so any text round-trips exactly."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise LmforgeError(f"a byte-level BPE needs vocab_size >= {256 + len(special_tokens)}, got {vocab_size}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eos = special_tokens[0] if special_tokens else None
    return Tokenizer.from_hf(tok, special_tokens, eos)


def train_unigram(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ("<|endoftext|>",)
) -> Tokenizer:
    """SentencePiece unigram with identity normalization and whitespace kept, so text round-trips. With room for the
    256 byte pieces (vocab >= 384) unknown characters fall back to bytes; tiny vocabularies (the seed's 192) cover
    every character seen in training and map the rest to <unk>."""
    import io

    import sentencepiece as spm

    byte_fallback = vocab_size >= 384
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            user_defined_symbols=list(special_tokens),
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_by_whitespace=True,
            add_dummy_prefix=False,  # like byte-level BPE: no invented leading space, so byte counts are exact
            byte_fallback=byte_fallback,
            character_coverage=0.9995 if byte_fallback else 1.0,
            max_sentence_length=1 << 16,
            input_sentence_size=0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            hard_vocab_limit=True,
            minloglevel=2,
            num_threads=2,
        )
    except RuntimeError as e:
        raise LmforgeError(f"SentencePiece could not train a {vocab_size}-token unigram model: {e}") from None
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    eos = special_tokens[0] if special_tokens else None
    return Tokenizer(sp, "spm", special_tokens, eos)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str]) -> Tokenizer:
    if kind == "bpe":
        return train_bpe(texts, vocab_size, special_tokens)
    if kind == "unigram":
        return train_unigram(texts, vocab_size, special_tokens)
    raise LmforgeError(f"cannot train a tokenizer of kind '{kind}' (choose bpe or unigram)")
