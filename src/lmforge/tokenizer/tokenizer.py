"""One face over the two tokenizer libraries lmforge uses: Hugging Face `tokenizers` (byte-level BPE, GPT-2, any
tokenizer.json) and SentencePiece (unigram). A saved tokenizer is a directory: `tokenizer.json` or `tokenizer.model`,
plus `lmforge_tokenizer.json` with what lmforge needs to know (backend, end-of-text token, special tokens)."""
from __future__ import annotations

import hashlib
import shutil
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_dir, atomic_write_json

META_FILE = "lmforge_tokenizer.json"
HF_FILE = "tokenizer.json"
SPM_FILE = "tokenizer.model"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE tokens are strings over it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class Tokenizer:
    """encode / decode / special tokens / save / load, whichever library is underneath."""

    def __init__(self, backend: object, kind: str, special_tokens: Sequence[str] = (), eos_token: str | None = None):
        self._tok = backend
        self.kind = kind  # "hf" or "spm"
        self.special_tokens = list(special_tokens)
        if eos_token is None:
            eos_token = next((t for t in EOS_CANDIDATES if self.token_to_id(t) is not None), None)
        self.eos_token = eos_token

    # -- construction -------------------------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, tok: "tokenizers.Tokenizer", special_tokens: Sequence[str] = (), eos_token: str | None = None):  # noqa: F821
        specials = list(special_tokens) or [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
        return cls(tok, "hf", specials, eos_token)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """A saved lmforge tokenizer directory, a directory with tokenizer.json / tokenizer.model /
        vocab.json + merges.txt, or one of those files."""
        from lmforge.tokenizer.load import load_tokenizer

        return load_tokenizer(path)

    # -- encoding -----------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.kind == "hf":
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.encode(text)

    def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
        """Encodes in parallel inside the library (Rust threads for `tokenizers`, C++ threads for SentencePiece)."""
        if self.kind == "hf":
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return self._tok.encode(texts, num_threads=threads or -1)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self._tok.decode(ids, skip_special_tokens=skip_special)
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._tok.decode(ids)

    # -- vocabulary ---------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True) if self.kind == "hf" else self._tok.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        if self.kind == "hf":
            return self._tok.token_to_id(token)
        i = self._tok.piece_to_id(token)
        return None if i == self._tok.unk_id() and token != self._tok.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i) if self.kind == "hf" else self._tok.id_to_piece(i)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def special_ids(self) -> set[int]:
        ids = {self.token_to_id(t) for t in self.special_tokens}
        return {i for i in ids if i is not None}

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add tokens (e.g. ChatML's <|im_start|>, <|im_end|>) that are never split; returns their ids."""
        if self.kind != "hf":
            raise LmforgeError("special tokens can be added after training only to a `tokenizers` tokenizer; "
                               "give SentencePiece tokenizers their special tokens when training them")
        self._tok.add_special_tokens(list(tokens))
        self.special_tokens += [t for t in tokens if t not in self.special_tokens]
        self.__dict__.pop("token_bytes", None)
        return [self.token_to_id(t) for t in tokens]

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens): the denominator of bits per byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = self.special_ids
        if self.kind == "hf":
            byte_level = type(self._tok.decoder).__name__ == "ByteLevel"
            to_byte = {c: b for b, c in _bytes_to_unicode().items()}
            for i in range(self.vocab_size):
                if i in specials:
                    continue
                tok = self._tok.id_to_token(i)
                if tok is None:
                    continue
                if byte_level and all(c in to_byte for c in tok):
                    out[i] = len(tok)
                else:
                    out[i] = len(self._tok.decode([i]).encode("utf-8"))
        else:
            sp = self._tok
            for i in range(self.vocab_size):
                if i in specials or sp.is_control(i) or sp.is_unknown(i):
                    continue
                out[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("▁", " ").encode("utf-8"))
        return out

    # -- persistence --------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            if self.kind == "hf":
                self._tok.save(str(tmp / HF_FILE))
            else:
                (tmp / SPM_FILE).write_bytes(self._tok.serialized_model_proto())
            atomic_write_json(tmp / META_FILE, self.meta())
        return directory

    def meta(self) -> dict:
        return {"backend": self.kind, "eos_token": self.eos_token, "special_tokens": self.special_tokens,
                "vocab_size": self.vocab_size, "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        """A hash of the exact vocabulary and merges/pieces, so token shards can be matched to their tokenizer."""
        blob = self._tok.to_str().encode() if self.kind == "hf" else self._tok.serialized_model_proto()
        return hashlib.sha256(blob).hexdigest()[:16]


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
