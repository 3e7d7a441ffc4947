"""Sparse Mixture-of-Experts feed-forward layer: an fp32 softmax router, top-k experts per token, vectorized dispatch,
an optional capacity limit, the Switch load-balancing loss (generalized to top-k) and the ST-MoE router z-loss.

Routing. probs = softmax(router(x)) in fp32. Each token goes to its k most probable experts. For k > 1 the k weights are
renormalized to sum to 1 (Mixtral), so k = n_experts is exactly the dense probability-weighted mixture Σ_i p_i·E_i(x).
For k = 1 the weight is the raw probability p_max (Switch Transformer): renormalizing would make it 1 and cut the router
off from the language-model gradient.

Dispatch. The (token, expert) assignments are sorted by expert (a stable sort, so first choices and earlier tokens come
first), the tokens are gathered once with index_select, each expert runs once on its contiguous slice (a loop over
experts, never over tokens), and the weighted outputs are scatter-added back with index_add_. With a capacity factor
c > 0 each expert takes at most ceil(c · tokens · k / n_experts) assignments while training; the overflow is dropped
(the residual stream carries those tokens on unchanged). Evaluation and generation are always dropless, so a token's
output never depends on the other tokens in the batch.

Auxiliary losses (both computed in fp32 on every forward and kept on the module for the model to collect):
- load balancing: n_experts · Σ_i f_i · P_i, f_i = share of the k·tokens assignments that chose expert i (before any
  capacity drop), P_i = mean router probability of expert i. It is 1 for a perfectly balanced router and approaches
  n_experts when one expert takes every token.
- z-loss: mean over tokens of logsumexp(router logits)², which keeps the router logits small.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.mlp import build_mlp


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """probs [N, E] (fp32), expert_idx [N, k] the chosen experts -> n_experts · Σ f_i · P_i (1.0 when balanced)."""
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
    f = counts / expert_idx.numel()  # no gradient: the router learns through P
    return n_experts * torch.sum(f * probs.mean(dim=0))


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of logsumexp(logits)² (ST-MoE)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class MoE(nn.Module):
    """Drop-in replacement for the dense MLP of a block: x [..., D] -> [..., D]."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, expert_mlp: str = "swiglu",
                 capacity_factor: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"experts_per_token={top_k} must be between 1 and n_experts={n_experts}")
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(build_mlp(expert_mlp, dim, hidden) for _ in range(n_experts))
        # Set by every forward: the losses (with gradient) and per-expert assignment counts (no gradient).
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.expert_counts: torch.Tensor | None = None
        self.dropped: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> (logits [N, E], probs [N, E], weights [N, k], expert indices [N, k]), all fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        probs = logits.softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, idx

    def capacity(self, n_tokens: int) -> int:
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n = x.shape[0]
        logits, probs, weights, idx = self.route(x)
        self.aux_loss = load_balancing_loss(probs, idx, self.n_experts)
        self.z_loss = router_z_loss(logits)

        # Flatten the assignments choice-major (all first choices, then all second ...) so that under a capacity
        # limit a token's first choice wins over another token's second choice (GShard).
        flat_expert = idx.t().reshape(-1)
        flat_token = torch.arange(n, device=x.device).repeat(self.top_k)
        flat_weight = weights.t().reshape(-1)
        counts = torch.bincount(flat_expert, minlength=self.n_experts)
        self.expert_counts = counts.detach()
        order = torch.argsort(flat_expert, stable=True)
        if self.capacity_factor > 0 and self.training:
            cap = self.capacity(n)
            starts = torch.cumsum(counts, 0) - counts
            rank_in_expert = torch.arange(order.numel(), device=x.device) - starts[flat_expert[order]]
            order = order[rank_in_expert < cap]
            kept = counts.clamp(max=cap)
            self.dropped = (counts - kept).sum().detach()
            counts = kept
        else:
            self.dropped = torch.zeros((), dtype=torch.long, device=x.device)
        token = flat_token[order]
        routed = x.index_select(0, token)
        outputs = []
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):  # one host sync; every expert runs (maybe on 0 rows)
            outputs.append(expert(routed[start:start + count]))
            start += count
        y = torch.cat(outputs, dim=0).float() * flat_weight[order].unsqueeze(-1)
        out = torch.zeros(n, shape[-1], dtype=torch.float32, device=x.device).index_add_(0, token, y)
        return out.to(x.dtype).reshape(shape)


class MoEStats:
    """Running sums of the router losses and expert loads over training forwards, read (and reset) at log time, so a
    logged value averages every micro-batch since the last log. Sums stay on the device: no sync until read."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.aux: torch.Tensor | float = 0.0
        self.z: torch.Tensor | float = 0.0
        self.counts: dict[int, torch.Tensor] = {}
        self.dropped: torch.Tensor | float = 0.0

    def add(self, layers: list[tuple[int, MoE]]) -> None:
        self.n += 1
        self.aux = self.aux + sum(m.aux_loss.detach() for _, m in layers) / len(layers)
        self.z = self.z + sum(m.z_loss.detach() for _, m in layers) / len(layers)
        self.dropped = self.dropped + sum(m.dropped for _, m in layers)
        for i, m in layers:
            self.counts[i] = self.counts.get(i, 0) + m.expert_counts

    def read(self) -> dict:
        if not self.n:
            return {}
        load = {str(i): [round(v, 4) for v in (c / c.sum()).tolist()] for i, c in self.counts.items()}
        assigned = sum(float(c.sum()) for c in self.counts.values())
        out = {
            "moe_aux": float(self.aux) / self.n,
            "moe_z": float(self.z) / self.n,
            "moe_max_load": max(max(v) for v in load.values()),  # 1 / n_experts when perfectly balanced
            "moe_dropped": float(self.dropped) / max(assigned, 1.0),
            "moe_load": load,  # per MoE layer: each expert's share of the token assignments
        }
        self.reset()
        return out


def moe_layers(model: nn.Module) -> list[tuple[int, MoE]]:
    return [(i, layer.mlp) for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoE)]


def moe_loss(layers: list[tuple[int, MoE]], aux_weight: float, z_weight: float) -> torch.Tensor:
    """The weighted router losses of the last forward, averaged over the MoE layers (so the weights do not depend on
    how many layers are MoE)."""
    aux = sum(m.aux_loss for _, m in layers) / len(layers)
    z = sum(m.z_loss for _, m in layers) / len(layers)
    return aux_weight * aux + z_weight * z
