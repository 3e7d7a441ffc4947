"""BitNet b1.58 ternary layers: `BitLinear`, the converter that swaps them in, and exact 2-bit packing.

What a BitLinear computes (training and inference alike), for input x [..., in] and latent weight W [out, in]:

    x_q = clamp(round(x · 127 / max|x|), -128, 127) · max|x| / 127     8-bit absmax, per token (max|x| >= 1e-5)
    s   = mean|W|  (whole matrix, >= 1e-5)
    W_q = clamp(round(W / s), -1, 1) · s                    ternary {-1, 0, +1} times one fp32 scale per matrix
    y   = x_q @ W_qᵀ (+ bias)

Choices, and why:
- Norm placement: BitLinear has no norm of its own. The block's pre-norms (attn_norm, mlp_norm: RMSNorm with gains,
  eps = model.norm_eps = 1e-5) already normalize what q/k/v/gate/up see, and absmax quantization is scale-invariant,
  so o_proj / down_proj need no normalization to stay in range. So a ternary model has exactly the parameters of the
  dense model of the same shape (`ternary-1m` = 998,784). The reference code's placement (an RMSNorm inside every
  BitLinear, here parameter-free) was measured and is worse at this scale: val bpb 2.310 vs 2.194 without it
  (ternary-tiny, 600 steps, the setup of benchmarks/ternary_vs_fp.py); BitNet's learnable SubLN norms would add
  parameters the seed's count does not have.
- eps: the absmax and mean|W| denominators are clamped at 1e-5 so an all-zero token or matrix quantizes to zeros
  instead of NaN.
- Straight-through estimator: the forward uses the quantized values, the backward treats both quantizers as identity
  (a custom autograd Function), so the full-precision latent weights receive the gradient of the quantized matrix.
- Embeddings, norms and the LM head stay full precision (BitNet quantizes only the projections).
- Quantization math runs in fp32 even under autocast, so bf16/fp16 training quantizes the same way; the matmul itself
  follows autocast. Everything is plain tensor ops, so torch.compile fuses it.

A frozen BitLinear (`freeze_ternary`) holds the ternary codes themselves in `weight` and the scale in a buffer; that is
what a packed `.ternary` file loads into, and it computes the same function as the training-time layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANT_EPS = 1e-5
ACT_MAX = 127.0  # 8-bit signed activations


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """mean|W| over the whole matrix (fp32), clamped away from zero."""
    return w.float().abs().mean().clamp(min=QUANT_EPS)


def ternary_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (codes in {-1, 0, +1} as int8, fp32 scale) with W ≈ codes · scale."""
    scale = weight_scale(w)
    codes = (w.float() / scale).round().clamp(-1, 1).to(torch.int8)
    return codes, scale


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """The dequantized ternary weight codes · mean|W|, in fp32."""
    scale = weight_scale(w)
    return (w.float() / scale).round().clamp(-1, 1) * scale


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit absmax fake quantization per token (last dimension), in fp32."""
    x = x.float()
    scale = ACT_MAX / x.abs().amax(dim=-1, keepdim=True).clamp(min=QUANT_EPS)
    return (x * scale).round().clamp(-ACT_MAX - 1, ACT_MAX) / scale


class _WeightSTE(torch.autograd.Function):
    """Forward: the ternary quantizer; backward: identity (the straight-through estimator). One autograd node instead
    of the `v + (q(v) - v).detach()` idiom's three, which matters on CPUs where these small layers are bandwidth-bound."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return quantize_weight(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _ActSTE(torch.autograd.Function):
    """Forward: 8-bit absmax activation quantization; backward: identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return quantize_activations(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def ste_weight(w: torch.Tensor) -> torch.Tensor:
    """Ternary-quantized weight forward, gradient straight through to the latent weight."""
    return _WeightSTE.apply(w)


def ste_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit quantized activations forward, gradient straight through to x."""
    return _ActSTE.apply(x)


class BitLinear(nn.Linear):
    """nn.Linear with BitNet b1.58 ternary weights and 8-bit activations (see the module docstring). Same parameters
    as nn.Linear, so checkpoints of ternary and dense models share one layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        xq = ste_activations(x.float())
        if self.frozen:  # weight holds the codes {-1, 0, +1}. codes·scale is formed exactly as in training, so the
            # matmul sees bit-identical operands (an activation rounding flip would otherwise amplify 1e-7 differences)
            w = (self.weight.float() * self.ternary_scale.float()).to(out_dtype)
            y = F.linear(xq.to(out_dtype), w)
        else:
            y = F.linear(xq.to(out_dtype), ste_weight(self.weight.float()).to(out_dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(out_dtype)

    @torch.no_grad()
    def freeze_ternary(self, codes: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
        """Replace the latent weight by its ternary codes (given, or quantized from the current weight) and keep the
        scale as a buffer: an inference-only layer computing exactly what the packed file stores."""
        if codes is None or scale is None:
            codes, scale = ternary_codes(self.weight)
        self.weight = nn.Parameter(codes.to(self.weight.device, self.weight.dtype), requires_grad=False)
        self.register_buffer("ternary_scale", scale.reshape(()).to(self.weight.device, torch.float32),
                             persistent=False)
        self.frozen = True

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ternary{' (frozen)' if self.frozen else ''}"


def convert_to_ternary(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear inside the attention and MLP blocks (model.layers[i].attn / .mlp) for a BitLinear sharing
    the same weight tensor; embeddings, norms and lm_head are left alone. Works on the meta device (before
    materializing) and on trained dense models (ternary fine-tuning). Returns the model, changed in place."""
    for layer in model.layers:
        for block in (layer.attn, layer.mlp):
            for parent in list(block.modules()):
                for name, child in list(parent.named_children()):
                    if type(child) is not nn.Linear or "router" in name:  # an MoE router stays full precision
                        continue
                    bit = BitLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                    device=child.weight.device, dtype=child.weight.dtype)
                    bit.weight = child.weight
                    if child.bias is not None:
                        bit.bias = child.bias
                    setattr(parent, name, bit)
    return model


def bitlinear_modules(model: nn.Module) -> dict[str, BitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


# ----------------------------------------------------------------------------------------------------------------------
# 2-bit packing: code c in {-1, 0, +1} is stored as c + 1 in {0, 1, 2}; four codes per byte, the first in the low bits.


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """int codes {-1, 0, +1} of any shape -> uint8 [ceil(n / 4)] (row-major order, zero-padded at the end)."""
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("pack_ternary: codes must be in {-1, 0, +1}")
    u = (flat + 1).to(torch.uint8)
    pad = (-u.numel()) % 4
    if pad:
        u = torch.cat([u, torch.ones(pad, dtype=torch.uint8)])  # padding holds code 0
    u = u.view(-1, 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """uint8 from `pack_ternary` -> int8 codes {-1, 0, +1} of `shape`."""
    n = 1
    for d in shape:
        n *= int(d)
    if packed.dtype != torch.uint8 or packed.numel() != -(-n // 4):
        raise ValueError(f"unpack_ternary: expected {-(-n // 4)} uint8 bytes for shape {tuple(shape)}, "
                         f"got {packed.numel()} {packed.dtype}")
    p = packed.reshape(-1, 1)
    u = torch.cat([(p >> s) & 3 for s in (0, 2, 4, 6)], dim=1).reshape(-1)[:n]
    if (u > 2).any():
        raise ValueError("unpack_ternary: invalid 2-bit code 3 in packed data")
    return (u.to(torch.int8) - 1).reshape(tuple(shape))
