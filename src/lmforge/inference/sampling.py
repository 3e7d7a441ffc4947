"""Next-token choice: repetition penalty, temperature, top-k, top-p (nucleus); temperature 0 is greedy."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; > 1 discourages tokens already in the context (CTRL)
    stop: list[str] = field(default_factory=list)  # stop strings (text level)
    stop_at_eos: bool = True
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        return self


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V]; context [B, T] token ids (-1 = padding)."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    ids = context.clamp(min=0)
    picked = logits.gather(1, ids)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    picked = torch.where(context >= 0, picked, logits.gather(1, ids))  # leave padding untouched
    return logits.scatter(1, ids, picked)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]."""
    logits = shape_logits(logits, params, context)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def shape_logits(logits: torch.Tensor, params: SamplingParams, context: torch.Tensor | None = None) -> torch.Tensor:
    """The logits the next token is drawn from: repetition penalty, then (unless greedy) temperature, top-k and
    top-p. Split from the draw so a batch can be shaped at once and each row drawn with its own generator."""
    logits = logits.float()
    if context is not None:
        logits = apply_repetition_penalty(logits, context, params.repetition_penalty)
    if params.temperature == 0:
        return logits
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return logits
