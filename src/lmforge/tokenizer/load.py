"""Loading tokenizers from disk: lmforge's own directories, GPT-2's vocab.json + merges.txt, any HF tokenizer.json,
SentencePiece .model files, and (for users online) a Hugging Face hub repository id."""
from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer.tokenizer import HF_FILE, META_FILE, SPM_FILE, Tokenizer


def load_gpt2(vocab: str | Path, merges: str | Path) -> Tokenizer:
    """GPT-2's byte-level BPE from its two files; <|endoftext|> (50256) is its one special token."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    for f in (vocab, merges):
        if not Path(f).is_file():
            raise LmforgeError(f"GPT-2 tokenizer file not found: {f}")
    tok = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return Tokenizer.from_hf(tok, ["<|endoftext|>"], "<|endoftext|>")


def load_tokenizer_json(path: str | Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise LmforgeError(f"{path}: not a valid tokenizer.json ({e})") from None
    return Tokenizer.from_hf(tok)


def load_sentencepiece(path: str | Path, special_tokens=(), eos_token: str | None = None) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:
        raise LmforgeError(f"{path}: not a valid SentencePiece model ({e})") from None
    return Tokenizer(sp, "spm", special_tokens, eos_token)


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if not p.exists():
        if "/" in str(path) and not str(path).startswith((".", "/")):
            return load_from_hub(str(path))
        raise LmforgeError(f"tokenizer not found: {p}")
    if p.is_file():
        if p.suffix == ".json":
            return load_tokenizer_json(p)
        if p.suffix == ".model":
            return load_sentencepiece(p)
        raise LmforgeError(f"{p}: expected tokenizer.json or a SentencePiece .model file")
    meta = json.loads((p / META_FILE).read_text()) if (p / META_FILE).is_file() else {}
    if (p / HF_FILE).is_file():
        tok = load_tokenizer_json(p / HF_FILE)
        if meta:
            tok = Tokenizer.from_hf(tok._tok, meta.get("special_tokens", []), meta.get("eos_token"))
        return tok
    if (p / SPM_FILE).is_file():
        return load_sentencepiece(p / SPM_FILE, meta.get("special_tokens", []), meta.get("eos_token"))
    if (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        return load_gpt2(p / "vocab.json", p / "merges.txt")
    raise LmforgeError(
        f"{p}: no tokenizer here (looked for {HF_FILE}, {SPM_FILE}, or vocab.json + merges.txt)"
    )


def load_from_hub(repo_id: str) -> Tokenizer:
    """Download tokenizer.json from a Hugging Face hub repository (cached by huggingface_hub)."""
    from huggingface_hub import hf_hub_download

    try:
        return load_tokenizer_json(hf_hub_download(repo_id, HF_FILE))
    except Exception as e:
        raise LmforgeError(f"could not fetch {HF_FILE} from the Hugging Face hub repo '{repo_id}': {e}") from None
