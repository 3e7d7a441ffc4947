"""Batches of training windows with a position that can be saved and restored exactly.

Windows are the non-overlapping seq_len+1 slices of the token stream; each epoch visits all of them once in a fresh
permutation drawn from (seed, epoch). The state is just (epoch, cursor), so resuming needs no replay, and the global
batch is split across data-parallel ranks without overlap."""
from __future__ import annotations

import numpy as np
import torch

from lmforge.data.shards import TokenShards


class WindowLoader:
    def __init__(self, data: TokenShards, batch_size: int, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        self.data, self.batch_size, self.seq_len, self.seed = data, batch_size, seq_len, seed
        self.rank, self.world = rank, world
        self.n_windows = (len(data) - 1) // seq_len
        if self.n_windows < batch_size * world:
            raise ValueError(
                f"{data.dir} '{data.split}' has {len(data):,} tokens: fewer than one batch of "
                f"{batch_size * world} x {seq_len + 1}; use a smaller batch or seq_len, or more data"
            )
        self.epoch = 0
        self.cursor = 0  # windows of this epoch already handed out, over all ranks
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world
        if self.cursor + global_batch > self.n_windows:  # drop the epoch's remainder, start a new permutation
            self.epoch += 1
            self.cursor = 0
            self._perm = self._permutation(self.epoch)
        first = self.cursor + self.rank * self.batch_size
        windows = self._perm[first : first + self.batch_size]
        self.cursor += global_batch
        rows = np.stack([self.data.read(int(w) * self.seq_len, self.seq_len + 1) for w in windows]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


def eval_batches(data: TokenShards, batch_size: int, seq_len: int, max_batches: int = 0):
    """The validation split in order, as non-overlapping windows; max_batches=0 means all of it."""
    n_windows = (len(data) - 1) // seq_len
    starts = list(range(0, n_windows * seq_len, seq_len))
    n_batches = -(-len(starts) // batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        chunk = starts[b * batch_size : (b + 1) * batch_size]
        rows = np.stack([data.read(s, seq_len + 1) for s in chunk]).astype(np.int64)
        t = torch.from_numpy(rows)
        yield t[:, :-1], t[:, 1:]
