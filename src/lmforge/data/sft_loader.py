"""Batches of masked fine-tuning examples, padded to the longest row of the batch, with an exact, saveable position.

Like WindowLoader: each epoch visits every row once in a permutation drawn from (seed, epoch); the state is
(epoch, cursor). With packing, short examples are first packed greedily into rows of up to seq_len+1 tokens (the
loss mask travels with each example, so a packed row trains exactly the tokens its examples would)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lmforge.data.instruct import Example

IGNORE = -100


def pack_examples(examples: list[Example], capacity: int) -> list[Example]:
    """Concatenate consecutive examples into rows of at most `capacity` tokens (examples are never split)."""
    rows: list[Example] = []
    cur = Example([], [])
    for ex in examples:
        if cur.ids and len(cur.ids) + len(ex.ids) > capacity:
            rows.append(cur)
            cur = Example([], [])
        cur = Example(cur.ids + ex.ids, cur.trained + ex.trained)
    if cur.ids:
        rows.append(cur)
    return rows


def collate(rows: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (ids, trained) -> inputs [B, L-1] and targets [B, L-1] (-100 where not trained or padding)."""
    width = max(len(r.ids) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
        labels[i, : len(r.ids)] = np.where(r.trained, r.ids, IGNORE)
    x, y = torch.from_numpy(ids[:, :-1]), torch.from_numpy(labels[:, 1:])
    return x.contiguous(), y.contiguous()


class SFTLoader:
    def __init__(self, examples: list[Example], batch_size: int, seq_len: int, seed: int, pad_id: int,
                 packing: bool = False, rank: int = 0, world: int = 1) -> None:
        self.rows = pack_examples(examples, seq_len + 1) if packing else examples
        self.batch_size, self.seed, self.pad_id, self.rank, self.world = batch_size, seed, pad_id, rank, world
        if len(self.rows) < batch_size * world:
            raise ValueError(f"{len(self.rows)} training {'rows' if packing else 'examples'} are fewer than one "
                             f"batch of {batch_size * world}; use a smaller train.batch_size or more data")
        self.epoch = 0
        self.cursor = 0
        self._perm = self._permutation(0)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.rows) // (self.batch_size * self.world)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world
        if self.cursor + global_batch > len(self.rows):  # drop the remainder, start a new epoch
            self.epoch += 1
            self.cursor = 0
            self._perm = self._permutation(self.epoch)
        first = self.cursor + self.rank * self.batch_size
        picked = self._perm[first : first + self.batch_size]
        self.cursor += global_batch
        return collate([self.rows[int(i)] for i in picked], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rows", len(self.rows)) != len(self.rows):
            raise ValueError(f"the checkpoint's loader had {state['rows']} rows, this data has {len(self.rows)}: "
                             f"resume with the same sft data and settings")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


def sft_eval_batches(examples: list[Example], batch_size: int, pad_id: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out examples in order (sorted by length so padding stays small)."""
    ordered = sorted(examples, key=lambda e: len(e.ids))
    for i in range(0, len(ordered), batch_size):
        yield collate(ordered[i : i + batch_size], pad_id)
