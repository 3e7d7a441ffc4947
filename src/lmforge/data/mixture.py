"""Weighted data mixtures: several sources, each prepared (or streamed) with the run's one tokenizer, sampled per
training window with fixed probabilities (like the seed 004 recipe: 0.40 web-edu / 0.25 textbooks / 0.35 code).

Sampling: for global batch b, the source of each of its batch_size x world windows is drawn from
numpy's Generator seeded with (seed, b), so the sequence of sources depends on nothing but the seed and the batch
index. Each source hands out its own windows in order (a fresh permutation per epoch of that source; a source that
runs out simply starts its next epoch: small sources are repeated, as with `interleave_datasets`' "all_exhausted").
The state is the batch index plus one counter per source, so resuming is exact and does not replay anything, and it
does not depend on the number of data-parallel processes. Tokens drawn per source are reported as metrics.

`MixtureLoader` has WindowLoader's interface (next_batch / state_dict / load_state_dict). With `data.streaming` each
source is a StreamingWindows instead of prepared shards; a streaming run without a mixture is a one-source mixture.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lmforge.config import Config, MixtureSource
from lmforge.data.build import build_tokenizer
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import META, TokenShards, read_meta
from lmforge.data.sources import iter_corpus
from lmforge.data.streaming import StreamingWindows, held_out_documents, is_held_out
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

STREAM_VAL_SCAN_DOCS = 10_000  # streaming: validation documents are held out among the first this many documents


class WindowSource(Protocol):
    def take(self, n: int, keep: list[int] | None = None) -> list[np.ndarray]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ShardWindows:
    """The windows of one prepared split in a fresh permutation per epoch, handed out by a single counter."""

    def __init__(self, data: TokenShards, seq_len: int, seed: int) -> None:
        self.data, self.seq_len, self.seed = data, seq_len, seed
        self.n_windows = (len(data) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(f"{data.dir}: '{data.split}' has {len(data):,} tokens: fewer than one window of "
                            f"{seq_len + 1}")
        self.drawn = 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _window(self, g: int) -> int:
        epoch, pos = divmod(g, self.n_windows)
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
        return int(self._perm[pos])

    def take(self, n: int, keep: list[int] | None = None) -> list[np.ndarray]:
        keep = range(n) if keep is None else keep
        rows = [self.data.read(self._window(self.drawn + j) * self.seq_len, self.seq_len + 1) for j in keep]
        self.drawn += n
        return rows

    def state_dict(self) -> dict:
        return {"kind": "shards", "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shards":
            raise DataError(f"{self.data.dir}: the saved data position is a streaming one (data.streaming changed?)")
        self.drawn = int(state["drawn"])


class MixtureLoader:
    def __init__(self, names: list[str], sources: list[WindowSource], weights: list[float], batch_size: int,
                 seq_len: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if not (len(names) == len(sources) == len(weights)) or not names:
            raise ValueError("one name, source and weight per mixture component")
        self.names, self.sources, self.batch_size, self.seq_len = names, sources, batch_size, seq_len
        self.seed, self.rank, self.world = seed, rank, world
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.batches = 0  # global batches drawn (each is batch_size x world windows)
        self.windows = [0] * len(names)  # windows drawn per source, over all ranks

    def _choices(self, batch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x6D6978, batch])  # 'mix': its own stream, apart from the sources'
        return rng.choice(len(self.names), size=self.batch_size * self.world, p=self.probs)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        choice = self._choices(self.batches)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        rows: list[np.ndarray | None] = [None] * self.batch_size
        for s, source in enumerate(self.sources):
            where = np.flatnonzero(choice == s)  # positions in the global batch that this source fills, in order
            keep = [j for j, p in enumerate(where) if lo <= p < hi]
            for j, row in zip(keep, source.take(len(where), keep)):
                rows[int(where[j]) - lo] = row
            self.windows[s] += len(where)
        self.batches += 1
        t = torch.from_numpy(np.stack(rows).astype(np.int64))
        return t[:, :-1], t[:, 1:]

    def metrics(self) -> dict[str, int]:
        """Tokens drawn per source so far (all ranks), logged with every training record."""
        return {f"tokens_{name}": n * self.seq_len for name, n in zip(self.names, self.windows)}

    def state_dict(self) -> dict:
        return {"kind": "mixture", "seed": self.seed, "seq_len": self.seq_len, "batches": self.batches,
                "names": self.names, "windows": list(self.windows),
                "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "mixture" or state.get("names") != self.names:
            raise DataError(f"the checkpoint's data position is for sources {state.get('names')}, this config has "
                            f"{self.names}; a mixture cannot be resumed with different sources")
        self.batches, self.windows = int(state["batches"]), [int(n) for n in state["windows"]]
        for source, s in zip(self.sources, state["sources"]):
            source.load_state_dict(s)


# ----------------------------------------------------------------------------------------------------------------------
# From a config


def mixture_parts(cfg: Config) -> list[MixtureSource]:
    """The [[data.mixture]] entries, or data.sources as a single source (a streaming run without a mixture)."""
    if cfg.data.mixture:
        return list(cfg.data.mixture)
    if not cfg.data.sources:
        raise DataError("no data sources given (data.sources or [[data.mixture]])")
    return [MixtureSource(name="data", sources=list(cfg.data.sources), weight=1.0)]


def part_documents(cfg: Config, part: MixtureSource):
    return iter_corpus(part.sources, cfg.data.separator, part.text_field or cfg.data.text_field, cfg.data.max_docs)


@dataclass
class MixtureData:
    root: Path
    tokenizer: Tokenizer
    parts: list[MixtureSource]

    def val_split(self, part: MixtureSource, streaming: bool) -> TokenShards:
        return TokenShards(self.root / (f"{part.name}-val" if streaming else part.name), "val")


def _mixture_tokenizer(cfg: Config, parts: list[MixtureSource], progress: bool) -> Tokenizer:
    if cfg.tokenizer.kind in ("gpt2", "file"):
        return build_tokenizer(cfg.tokenizer, cfg.data, progress)
    # A trained tokenizer sees every source, each in proportion to its weight when train_max_docs caps the count.
    total = sum(p.weight for p in parts)
    streams = []
    for p in parts:
        docs = part_documents(cfg, p)
        if cfg.tokenizer.train_max_docs:
            docs = itertools.islice(docs, max(1, math.ceil(cfg.tokenizer.train_max_docs * p.weight / total)))
        streams.append(docs)
    if progress:
        print(f"training a {cfg.tokenizer.vocab_size}-token {cfg.tokenizer.kind} tokenizer on "
              f"{', '.join(p.name for p in parts)}")
    return train_tokenizer(cfg.tokenizer.kind, itertools.chain(*streams), cfg.tokenizer.vocab_size,
                           cfg.tokenizer.special_tokens)


def _check_prepared(directory: Path, tokenizer: Tokenizer) -> bool:
    if not (directory / META).is_file():
        return False
    meta = read_meta(directory)
    if meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
        raise DataError(f"{directory} was prepared with another tokenizer; delete it or choose another data.dataset")
    return True


def prepare_mixture(cfg: Config, progress: bool = True) -> MixtureData:
    """The tokenizer (trained on / loaded for every source) under <dataset>/tokenizer, then one prepared dataset per
    source (<dataset>/<name>), or for streaming only its held-out validation documents (<dataset>/<name>-val).
    What is already there (with the same tokenizer) is reused."""
    parts = mixture_parts(cfg)
    root = Path(cfg.data.dataset) if cfg.data.dataset else cfg.run_dir / "data"
    if (root / "tokenizer").is_dir():
        tokenizer = load_tokenizer(root / "tokenizer")
    else:
        _mixture_tokenizer(cfg, parts, progress).save(root / "tokenizer")
        tokenizer = load_tokenizer(root / "tokenizer")
    for part in parts:
        if cfg.data.streaming:
            target = root / f"{part.name}-val"
            if not _check_prepared(target, tokenizer):
                if cfg.data.val_fraction <= 0:
                    raise DataError("data.streaming needs data.val_fraction > 0 for its held-out documents")
                docs = held_out_documents(part_documents(cfg, part), cfg.data.val_fraction, STREAM_VAL_SCAN_DOCS)
                prepare_dataset(docs, tokenizer, target, 1.0, part.sources, threads=cfg.data.workers,
                                progress=progress)
        elif not _check_prepared(root / part.name, tokenizer):
            prepare_dataset(part_documents(cfg, part), tokenizer, root / part.name, cfg.data.val_fraction,
                            part.sources, threads=cfg.data.workers, progress=progress)
    return MixtureData(root, tokenizer, parts)


def build_mixture_loader(cfg: Config, data: MixtureData, batch_size: int, seq_len: int, rank: int = 0,
                         world: int = 1) -> MixtureLoader:
    sources: list[WindowSource] = []
    for i, part in enumerate(data.parts):
        seed = cfg.train.seed * 1000 + i  # each source its own permutations
        if cfg.data.streaming:
            skip = lambda idx: is_held_out(idx, cfg.data.val_fraction, STREAM_VAL_SCAN_DOCS)  # noqa: E731
            sources.append(StreamingWindows(lambda p=part: part_documents(cfg, p), data.tokenizer, seq_len,
                                            cfg.data.shuffle_buffer, seed, skip, cfg.data.workers, part.name))
        else:
            sources.append(ShardWindows(TokenShards(data.root / part.name, "train"), seq_len, seed))
    return MixtureLoader([p.name for p in data.parts], sources, [p.weight for p in data.parts], batch_size,
                         seq_len, cfg.train.seed, rank, world)
