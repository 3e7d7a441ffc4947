"""Token shards on disk: flat uint16/uint32 arrays (`train_00000.bin`, ...) plus `meta.json`, memory-mapped to read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmforge.errors import DataError

META = "meta.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def read_meta(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / META
    if not path.is_file():
        raise DataError(f"{dataset_dir}: not a prepared dataset (no {META}); run `lmforge data prepare` first")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: dataset format {meta.get('format_version')} is not {FORMAT_VERSION}; prepare it again")
    return meta


class TokenShards:
    """One split of a prepared dataset, read as a single virtual array across its shard files."""

    def __init__(self, dataset_dir: str | Path, split: str) -> None:
        self.dir = Path(dataset_dir)
        meta = read_meta(self.dir)
        if split not in meta["splits"]:
            raise DataError(f"{self.dir}: no '{split}' split")
        info = meta["splits"][split]
        dtype = np.dtype(meta["dtype"])
        self.arrays = [np.memmap(self.dir / f, dtype=dtype, mode="r") for f in info["files"]]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.n_tokens = int(self.offsets[-1])
        self.meta = meta
        self.split = split
        if self.n_tokens == 0:
            raise DataError(f"{self.dir}: the '{split}' split has no tokens")

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length), crossing shard boundaries when needed."""
        if len(self.arrays) == 1:
            return np.asarray(self.arrays[0][start : start + length])
        out = []
        i = int(np.searchsorted(self.offsets, start, side="right") - 1)
        while length > 0 and i < len(self.arrays):
            local = start - int(self.offsets[i])
            piece = self.arrays[i][local : local + length]
            out.append(np.asarray(piece))
            length -= len(piece)
            start += len(piece)
            i += 1
        return np.concatenate(out)
