"""Raw documents -> token shards: tokenized in parallel batches (inside the tokenizer library) with a progress bar,
an end-of-text token after every document, a deterministic train/val split by document, written atomically."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from lmforge.data.shards import FORMAT_VERSION, META, token_dtype
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer
from lmforge.utils.io import atomic_dir, atomic_write_json

BATCH_DOCS = 512


class _ShardWriter:
    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.files: list[str] = []
        self.tokens = self.docs = self.bytes = 0
        self._f = None
        self._in_shard = 0

    def write(self, ids: list[int], n_bytes: int) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        while len(arr):
            if self._f is None or self._in_shard >= self.shard_tokens:
                self._open_next()
            take = arr[: self.shard_tokens - self._in_shard]
            take.tofile(self._f)
            self._in_shard += len(take)
            arr = arr[len(take) :]
        self.tokens += len(ids)
        self.docs += 1
        self.bytes += n_bytes

    def _open_next(self) -> None:
        if self._f is not None:
            self._f.close()
        name = f"{self.split}_{len(self.files):05d}.bin"
        self.files.append(name)
        self._f = open(self.directory / name, "wb")
        self._in_shard = 0

    def close(self) -> dict:
        if self._f is not None:
            self._f.close()
        return {"files": self.files, "tokens": self.tokens, "docs": self.docs, "bytes": self.bytes}


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_dataset(
    docs: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.02,
    sources: list[str] | None = None,
    shard_tokens: int = 1 << 27,
    threads: int = 0,
    progress: bool = True,
) -> dict:
    """Tokenize `docs` into `out_dir` (replaced atomically). Every round(1/val_fraction)-th document goes to val."""
    out_dir = Path(out_dir)
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s>, ...) to separate documents")
    dtype = token_dtype(tokenizer.vocab_size)
    period = round(1 / val_fraction) if val_fraction > 0 else 0
    start = time.time()
    with atomic_dir(out_dir) as tmp:
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        bar = tqdm(desc=f"tokenizing -> {out_dir}", unit=" docs", disable=not progress, dynamic_ncols=True)
        index = 0
        for batch in _batches(docs, BATCH_DOCS):
            for doc, ids in zip(batch, tokenizer.encode_batch(batch, threads)):
                split = "val" if period and index % period == period - 1 else "train"
                writers[split].write(ids + [eos], len(doc.encode("utf-8")))
                index += 1
            total = writers["train"].tokens + writers["val"].tokens
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{total:,}", tok_per_s=f"{total / max(time.time() - start, 1e-9):,.0f}")
        bar.close()
        splits = {s: w.close() for s, w in writers.items()}
        if index == 0:
            raise DataError(f"no documents found in {', '.join(sources or ['the input'])}")
        if period and splits["val"]["docs"] == 0:
            raise DataError(f"only {index} document(s): too few for a validation split (set data.val_fraction = 0)")
        tokenizer.save(tmp / "tokenizer")
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "tokenizer": {"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size, "eos_id": eos},
            "sources": sources or [],
            "val_fraction": val_fraction,
            "splits": splits,
        }
        atomic_write_json(tmp / META, meta)
    return meta
