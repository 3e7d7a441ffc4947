"""Loss, perplexity and bits per byte on held-out tokens.

Bits per byte = (sum of the loss in nats over predicted tokens) / (ln 2 · the UTF-8 bytes those tokens stand for).
It does not depend on the tokenizer, so models with different vocabularies compare fairly. Special tokens (end of
text) stand for no bytes and are left out of the bpb sums (as nanochat does); `loss` averages over every token.
Targets of -100 (masked prompt tokens and padding in fine-tuning) are left out of every sum."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from lmforge.errors import DataError
from lmforge.utils.device import autocast


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: np.ndarray,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    tb = torch.as_tensor(token_bytes, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    bpb_nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    n_tokens = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            losses = model(x, y, reduction="none")
        losses = losses.double()
        valid = y != -100  # masked targets (fine-tuning prompts, padding) count for nothing
        b = tb[y.clamp(min=0)] * valid
        nats += losses.sum()
        bpb_nats += (losses * (b > 0)).sum()
        n_bytes += b.sum()
        n_tokens += int(valid.sum())
    model.train(was_training)
    if n_tokens == 0:
        raise DataError("the validation split is smaller than one evaluation window; use more data or a shorter seq_len")
    loss = nats.item() / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bpb": bpb_nats.item() / (math.log(2) * max(n_bytes.item(), 1)),
        "tokens": n_tokens,
        "bytes": int(n_bytes.item()),
    }
