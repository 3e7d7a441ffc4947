"""Grow (or shrink) the vocabulary of a built model, e.g. after adding ChatML's <|im_start|> / <|im_end|>.

New embedding rows start at the mean of the existing rows (and new output-head rows at the mean of the head's rows):
a new token then begins as an "average" token instead of a random direction, which keeps the first fine-tuning
steps stable (the approach of Hewitt, "Initializing new word embeddings", and HF's mean_resizing)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def _resized(old: torch.Tensor, new_rows: int) -> torch.Tensor:
    out = torch.empty((new_rows, old.shape[1]), dtype=old.dtype, device=old.device)
    keep = min(new_rows, old.shape[0])
    if old.device.type != "meta":
        out[:keep] = old[:keep]
        if new_rows > keep:
            out[keep:] = old.float().mean(dim=0, keepdim=True).to(old.dtype)
    return out


def resize_vocab(model: nn.Module, new_size: int) -> nn.Module:
    """Resize `model.embed` and `model.lm_head` to `new_size` rows in place, keep tying, update model.cfg.vocab_size.
    Works on the meta device too (shapes only)."""
    old_size = model.embed.weight.shape[0]
    if new_size <= 0:
        raise ValueError("new vocabulary size must be positive")
    if new_size == old_size:
        return model
    tied = model.lm_head.weight is model.embed.weight
    model.embed.weight = nn.Parameter(_resized(model.embed.weight, new_size))
    model.embed.num_embeddings = new_size
    if tied:
        model.lm_head.weight = model.embed.weight
    else:
        model.lm_head.weight = nn.Parameter(_resized(model.lm_head.weight, new_size))
    model.lm_head.out_features = new_size
    model.cfg.vocab_size = new_size
    return model
