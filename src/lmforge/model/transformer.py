"""The one decoder-only Transformer. Its parts (norm, attention layout, MLP, embedding tying) come from ModelConfig;
variants such as ternary BitLinear layers are layer swaps applied after construction, not forks of this class."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.model.attention import Attention
from lmforge.model.mlp import build_mlp
from lmforge.model.moe import MoE, MoEStats, moe_layers, moe_loss
from lmforge.model.norms import build_norm
from lmforge.model.rope import rope_tables


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        if cfg.is_moe_layer(layer_idx):
            self.mlp = MoE(cfg.d_model, cfg.expert_ffn_dim, cfg.n_experts, cfg.experts_per_token, cfg.expert_kind,
                           cfg.moe_capacity_factor)
        else:
            self.mlp = build_mlp(cfg.mlp, cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (it is filled from the tokenizer when training)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        cos, sin = rope_tables(cfg.dim_head, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.moe_stats = MoEStats() if cfg.n_experts else None

    def tie_weights(self) -> None:
        """Share the embedding with the output head when configured (again after moving off the meta device)."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) everywhere; the projections that write into the residual stream are scaled by
        1/sqrt(2·n_layers) (GPT-2) so the residual variance does not grow with depth."""
        gen = torch.Generator(device=self.embed.weight.device)
        gen.manual_seed(0 if seed is None else seed)
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual = name.endswith(("o_proj", "down_proj"))
                module.weight.normal_(0.0, residual_std if is_residual else std, generator=gen)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm) or hasattr(module, "weight") and module.weight.dim() == 1:
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        self.reset_rope()

    def reset_rope(self) -> None:
        """Recompute the RoPE tables on the model's device (after building on the meta device)."""
        cos, sin = rope_tables(self.cfg.dim_head, self.cfg.max_seq_len, self.cfg.rope_theta, self.embed.weight.device)
        self.rope_cos, self.rope_sin = cos, sin

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: Any = None,
        reduction: str = "mean",
        last_only: bool = False,
    ) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only), or the cross-entropy against targets
        (positions with target -100 are ignored; reduction 'none' gives per-token losses [B, T])."""
        B, T = idx.shape
        if cache is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than the context ({self.cfg.max_seq_len})")
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            pos = cache.positions(T)  # [B, T]
            cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.advance(T)
        moe = moe_layers(self) if self.moe_stats is not None else []
        if moe and self.training:
            self.moe_stats.add(moe)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction=reduction
        )
        if reduction == "none":
            return loss.view(B, T)
        if moe and self.training:  # each micro-batch's loss carries its own router losses
            loss = loss + moe_loss(moe, self.cfg.moe_aux_loss_weight, self.cfg.moe_z_loss_weight)
        return loss

    def moe_loss(self) -> torch.Tensor:
        """The weighted aux + z router losses of the last forward (0 for dense models), for training code that
        computes its own loss from logits."""
        moe = moe_layers(self)
        if not moe:
            return torch.zeros((), device=self.embed.weight.device)
        return moe_loss(moe, self.cfg.moe_aux_loss_weight, self.cfg.moe_z_loss_weight)

    def extra_metrics(self) -> dict[str, Any]:
        """Metrics to log beside the loss (MoE: router losses and expert load since the last call); {} if dense."""
        return self.moe_stats.read() if self.moe_stats is not None else {}


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", seed: int | None = 0,
                init: bool = True) -> Transformer:
    """Construct on the meta device (no memory), materialize on `device`, then initialize (skip `init` when the
    weights are about to be loaded from a checkpoint)."""
    with torch.device("meta"):
        model = Transformer(cfg)
        if cfg.quant == "ternary":
            from lmforge.model.bitlinear import convert_to_ternary

            convert_to_ternary(model)
    model = model.to_empty(device=device)
    model.tie_weights()
    if init:
        model.init_weights(seed)
    else:
        model.reset_rope()
    return model
