"""Training windows tokenized on the fly from a corpus too large to prepare (a streamed `hf:` dataset, a directory
of many files), shuffled in a bounded buffer, never materialized on disk.

How the buffer works, and why no window can come twice in an epoch: documents are read in order and tokenized
into a *chunk* of about `buffer_windows` windows (seq_len+1 tokens each, consecutive windows sharing one token, as
in WindowLoader); the chunk's windows are handed out in a random permutation drawn from (seed, epoch, chunk start),
each exactly once; then the next chunk is read from the next document on. Chunks cover disjoint document ranges,
so every window of an epoch is distinct by construction. (Seed 004's streaming buffer sampled from a buffer it
kept refilling, so the same windows came back again and again and training collapsed; here the buffer is emptied
before it is refilled.) The tokens left over at the end of a chunk (< seq_len) are dropped: at most 1/buffer of
the data.

Memory is one chunk: ~buffer_windows x seq_len tokens plus one tokenization batch of documents.

Resume is exact: the state is (epoch, index of the first document of the current chunk, position in the chunk).
Restoring re-reads documents up to that index without tokenizing them (for `hf:` sources that means streaming past
them again), re-tokenizes one chunk and re-draws the same permutation.

The order of documents is the corpus order (a stream cannot be permuted); only windows within a chunk are shuffled,
and each epoch reshuffles them. Shuffle a corpus whose order is very uneven (e.g. sorted by topic) beforehand, or use a
larger buffer.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer

ENCODE_BATCH = 64  # documents tokenized together (in the tokenizer library's threads)


def is_held_out(index: int, val_fraction: float, scan_docs: int) -> bool:
    """Validation documents of a stream: every round(1/val_fraction)-th of the first `scan_docs` (the same rule as
    prepared datasets, limited so that a validation set never needs the whole stream)."""
    if val_fraction <= 0 or index >= scan_docs:
        return False
    period = round(1 / val_fraction)
    return index % period == period - 1


def held_out_documents(docs: Iterable[str], val_fraction: float, scan_docs: int) -> Iterator[str]:
    for i, doc in enumerate(itertools.islice(docs, scan_docs)):
        if is_held_out(i, val_fraction, scan_docs):
            yield doc


class StreamingWindows:
    """A sequence of training windows drawn from documents tokenized on the fly (see the module docstring).

    `take(n, keep)` advances by n windows and returns the rows at positions `keep`: every data-parallel rank walks
    the same global sequence (so the state does not depend on the number of processes) and keeps its share."""

    def __init__(
        self,
        docs: Callable[[], Iterable[str]],
        tokenizer: Tokenizer,
        seq_len: int,
        buffer_windows: int,
        seed: int,
        skip: Callable[[int], bool] | None = None,
        threads: int = 0,
        name: str = "stream",
    ) -> None:
        if tokenizer.eos_id is None:
            raise DataError("the tokenizer has no end-of-text token to separate streamed documents")
        self.docs, self.tokenizer, self.seq_len = docs, tokenizer, seq_len
        self.buffer_windows, self.seed, self.skip, self.threads, self.name = buffer_windows, seed, skip, threads, name
        self.epoch = 0
        self.chunk_start = 0  # index of the first document of the current chunk
        self.pos = 0  # windows of the current chunk already handed out
        self.drawn = 0  # windows handed out in total (all epochs)
        self._windows: np.ndarray | None = None  # [n, seq_len + 1] of the current chunk
        self._perm: np.ndarray | None = None
        self._chunk_end = 0  # first document index after the current chunk
        self._exhausted = False  # the current chunk ended with the corpus
        self._iter: Iterator[tuple[int, str]] | None = None
        self._pending: deque[tuple[int, list[int]]] = deque()  # tokenized documents not yet in a chunk
        self._iter_next = 0  # the document index that _pending/_iter continue from

    # -- reading ------------------------------------------------------------------------------------------------------
    def _restart(self, start: int) -> None:
        """Documents from index `start` on; the ones before are read and skipped, not tokenized."""
        self._iter = itertools.islice(enumerate(self.docs()), start, None)
        self._pending.clear()
        self._iter_next = start

    def _next_doc(self) -> tuple[int, list[int]] | None:
        if not self._pending:
            batch = []
            for idx, text in self._iter:
                if self.skip is None or not self.skip(idx):
                    batch.append((idx, text))
                    if len(batch) == ENCODE_BATCH:
                        break
            if not batch:
                return None
            ids = self.tokenizer.encode_batch([t for _, t in batch], self.threads)
            eos = self.tokenizer.eos_id
            self._pending.extend((idx, list(i) + [eos]) for (idx, _), i in zip(batch, ids))
        return self._pending.popleft()

    def _fill(self) -> None:
        """Tokenize the chunk that starts at document `chunk_start` and draw its permutation."""
        if self._iter is None or self._iter_next != self.chunk_start:
            self._restart(self.chunk_start)
        need = self.buffer_windows * self.seq_len + 1
        parts: list[list[int]] = []
        n_tokens = 0
        end = self.chunk_start
        self._exhausted = False
        while n_tokens < need:
            item = self._next_doc()
            if item is None:
                self._exhausted = True
                break
            idx, ids = item
            parts.append(ids)
            n_tokens += len(ids)
            end = idx + 1
        self._iter_next = end if not self._exhausted else -1
        tokens = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=n_tokens)
        n = max(0, (n_tokens - 1) // self.seq_len)
        if n:
            view = np.lib.stride_tricks.sliding_window_view(tokens, self.seq_len + 1)[:: self.seq_len][:n]
            self._windows = np.ascontiguousarray(view)
        else:
            self._windows = np.zeros((0, self.seq_len + 1), dtype=np.int64)
        self._perm = np.random.default_rng([self.seed, self.epoch, self.chunk_start]).permutation(n)
        self._chunk_end = end

    def _advance_chunk(self) -> None:
        if self._exhausted:  # the corpus ended with this chunk: next epoch, same documents, new permutations
            if self.chunk_start == 0 and len(self._perm) == 0:
                raise DataError(f"{self.name}: the whole corpus is shorter than one window of {self.seq_len + 1} "
                                f"tokens")
            self.epoch += 1
            self.chunk_start = 0
        else:
            self.chunk_start = self._chunk_end
        self.pos = 0
        self._fill()

    def take(self, n: int, keep: Iterable[int] | None = None) -> list[np.ndarray]:
        keep = set(range(n)) if keep is None else set(keep)
        if self._windows is None:
            self._fill()
        out = []
        for j in range(n):
            while self.pos >= len(self._perm):
                self._advance_chunk()
            if j in keep:
                out.append(self._windows[self._perm[self.pos]])
            self.pos += 1
            self.drawn += 1
        return out

    # -- state --------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"kind": "stream", "epoch": self.epoch, "chunk_start": self.chunk_start, "pos": self.pos,
                "drawn": self.drawn, "buffer_windows": self.buffer_windows, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "stream":
            raise DataError(f"{self.name}: the saved data position is not a streaming one (data.streaming changed?)")
        if state["buffer_windows"] != self.buffer_windows or state["seq_len"] != self.seq_len:
            raise DataError(f"{self.name}: data.shuffle_buffer / seq_len differ from the checkpoint's "
                            f"({state['buffer_windows']}, {state['seq_len']}); the position cannot be restored")
        self.epoch, self.chunk_start, self.pos, self.drawn = (int(state[k]) for k in ("epoch", "chunk_start", "pos",
                                                                                       "drawn"))
        self._iter = None
        self._fill()
