"""Exact parameter counts and an architecture table, computed on the meta device (no memory is allocated)."""
from __future__ import annotations

from collections import OrderedDict

import torch

from lmforge.config import ModelConfig


def meta_model(cfg: ModelConfig) -> torch.nn.Module:
    from lmforge.model.transformer import Transformer

    with torch.device("meta"):
        return Transformer(cfg)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def parameter_breakdown(model: torch.nn.Module) -> "OrderedDict[str, int]":
    """Parameters by component: embedding, attention, mlp, norms, head (a tied head counts as 0 here)."""
    groups: "OrderedDict[str, int]" = OrderedDict(
        (k, 0) for k in ("embedding", "attention", "mlp", "norms", "lm_head")
    )
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("embed"):
            groups["embedding"] += p.numel()
        elif name.startswith("lm_head"):
            groups["lm_head"] += p.numel()
        elif ".attn." in name:
            groups["attention"] += p.numel()
        elif ".mlp." in name:
            groups["mlp"] += p.numel()
        else:
            groups["norms"] += p.numel()
    return groups


def architecture_table(cfg: ModelConfig) -> str:
    model = meta_model(cfg)
    total = count_parameters(model)
    rows = [
        ("vocab_size", f"{cfg.vocab_size:,}"),
        ("d_model", cfg.d_model),
        ("layers", cfg.n_layers),
        ("heads (query / kv)", f"{cfg.n_heads} / {cfg.kv_heads}"),
        ("head_dim", cfg.dim_head),
        ("mlp", f"{cfg.mlp} ({cfg.ffn_dim})"),
        ("norm", f"{cfg.norm} (eps {cfg.norm_eps:g})"),
        ("position", f"RoPE (theta {cfg.rope_theta:g})"),
        ("context", cfg.max_seq_len),
        ("embeddings", "tied" if cfg.tie_embeddings else "untied"),
    ]
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| component | parameters |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in parameter_breakdown(model).items()]
    lines += [f"| **total** | **{total:,}** |"]
    return "\n".join(lines)
