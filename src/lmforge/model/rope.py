"""Rotary position embeddings in the "rotate half" layout that Hugging Face Llama uses, so weights map one to one."""
from __future__ import annotations

import torch


def rope_tables(head_dim: int, max_len: int, theta: float, device: torch.device | str | None = None):
    """cos and sin of shape [max_len, head_dim], computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D] (shared positions) or [B, 1, T, D] (a position per row)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
