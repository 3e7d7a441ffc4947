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


def active_parameters(model: torch.nn.Module) -> int:
    """Parameters one token passes through: the total less, in every MoE layer, the experts it does not use
    (n_experts - experts_per_token of them). Equals the total for a dense model."""
    from lmforge.model.moe import moe_layers

    inactive = 0
    for _, moe in moe_layers(model):
        per_expert = sum(p.numel() for p in moe.experts[0].parameters())
        inactive += (moe.n_experts - moe.top_k) * per_expert
    return count_parameters(model) - inactive


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
        ("linear layers", "ternary BitLinear (BitNet b1.58)" if cfg.quant == "ternary" else "full precision"),
    ]
    if cfg.n_experts:
        moe_idx = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        cap = f"capacity factor {cfg.moe_capacity_factor:g}" if cfg.moe_capacity_factor else "dropless"
        rows += [
            ("experts", f"{cfg.n_experts} x {cfg.expert_kind} ({cfg.expert_ffn_dim}), top-{cfg.experts_per_token}, {cap}"),
            ("MoE layers", f"{len(moe_idx)} of {cfg.n_layers}: {', '.join(map(str, moe_idx))}"),
            ("router losses", f"aux {cfg.moe_aux_loss_weight:g}, z {cfg.moe_z_loss_weight:g}"),
        ]
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| component | parameters |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in parameter_breakdown(model).items()]
    lines += [f"| **total** | **{total:,}** |"]
    if cfg.n_experts:
        lines += [f"| **active per token** | **{active_parameters(model):,}** |"]
    return "\n".join(lines)
