"""A preallocated key/value cache for incremental decoding, kept apart from the model.

The model's attention calls `update(layer, k, v)` and the model calls `positions(T)` / `advance(T)`; rows may hold
different lengths (batched prompts of different sizes, continuous batching), in which case a boolean mask limits
each row to its own keys."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.lengths = [0] * batch_size  # tokens stored per row (Python ints: no device syncs in the decode loop)
        self.rows: list[int] | None = None  # when set, only these rows take part in the next forward

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None) -> "KVCache":
        cfg = model.cfg
        p = next(model.parameters())
        return cls(cfg.n_layers, batch_size, cfg.kv_heads, cfg.dim_head, max_len or cfg.max_seq_len, p.device,
                   p.dtype if p.is_floating_point() else torch.float32)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def _active(self) -> list[int]:
        return self.rows if self.rows is not None else list(range(self.batch_size))

    def positions(self, T: int) -> torch.Tensor:
        starts = torch.tensor([self.lengths[r] for r in self._active()], device=self.k.device)
        return starts[:, None] + torch.arange(T, device=self.k.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v ([B, H, T, D]) after each active row's current length; return all keys/values and a mask."""
        rows = self._active()
        T = k.shape[2]
        lens = [self.lengths[r] for r in rows]
        end = max(lens) + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full ({self.max_len} tokens)")
        uniform = all(n == lens[0] for n in lens)
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        if uniform and contiguous:
            sl = slice(rows[0], rows[0] + len(rows))
            self.k[layer, sl, :, lens[0]:end] = k
            self.v[layer, sl, :, lens[0]:end] = v
            keys, values = self.k[layer, sl, :, :end], self.v[layer, sl, :, :end]
            if T == 1:
                return keys, values, None
            # query i (at position L + i) sees keys 0 .. L + i
            mask = torch.ones(T, end, dtype=torch.bool, device=k.device).tril(diagonal=lens[0])
            return keys, values, mask
        idx = torch.tensor(rows, device=k.device)
        if T == 1:  # one decode step of many rows (continuous batching): a single scatter per tensor
            pos = torch.tensor(lens, device=k.device)
            self.k[layer, idx, :, pos] = k[:, :, 0]
            self.v[layer, idx, :, pos] = v[:, :, 0]
        else:
            for i, (r, n) in enumerate(zip(rows, lens)):
                self.k[layer, r, :, n:n + T] = k[i]
                self.v[layer, r, :, n:n + T] = v[i]
        if contiguous:  # a view, not a gathered copy
            sl = slice(rows[0], rows[0] + len(rows))
            keys, values = self.k[layer, sl, :, :end], self.v[layer, sl, :, :end]
        else:
            keys, values = self.k[layer, idx, :, :end], self.v[layer, idx, :, :end]
        q_pos = torch.tensor(lens, device=k.device)[:, None] + torch.arange(T, device=k.device)  # [B, T]
        mask = torch.arange(end, device=k.device)[None, None, :] <= q_pos[:, :, None]  # [B, T, end]
        return keys, values, mask.unsqueeze(1)

    def advance(self, T: int) -> None:
        for r in self._active():
            self.lengths[r] += T

    def reset(self, rows: list[int] | None = None) -> None:
        for r in rows if rows is not None else range(self.batch_size):
            self.lengths[r] = 0
