"""Training throughput and model FLOPs utilization (MFU) of the seed presets on this machine's GPU.

For each preset: the preset's own model, micro-batch and sequence length (or --batch-size / --seq-len), random tokens,
forward + backward + AdamW step, as the trainer runs them: bf16 autocast, fused AdamW, torch.compile, attention through
PyTorch SDPA (flash / cuDNN / memory-efficient kernels only: the math fallback is disabled on CUDA, so a run that
would not get a fused kernel fails loudly instead of being slow). Warm-up steps (compilation) are not timed.

    FLOPs per token = 6 * N_active + 12 * n_layers * n_heads * head_dim * seq_len
    N_active = parameters used in matmuls per token: everything except the input embedding table (a lookup), with
               MoE expert weights counted for the experts_per_token experts a token visits (k / n_experts of them).
    The attention term is the PaLM / nanoGPT / torchtitan convention (QK^T and AV, forward + backward, not halved
    for causal masking), so the numbers compare with theirs.
    MFU = achieved FLOP/s / the GPU's dense bf16 peak (table below, or --peak-tflops).

    .venv/bin/python benchmarks/mfu.py                           # all seed presets on the GPU
    .venv/bin/python benchmarks/mfu.py --presets gqa-1b --activation-checkpointing
    .venv/bin/python benchmarks/mfu.py --device cpu --tiny       # CPU smoke run: shrunken models, no MFU
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmforge.config import Config, load_config  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402

PRESETS = ["llama-190m", "gqa-1b", "moe-1.4b", "ternary-1m"]
# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name().
# Longest match wins ("H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
}


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return name, PEAK_BF16_TFLOPS[key]
    return name, None


def flops_per_token(model: torch.nn.Module, cfg: Config, seq_len: int) -> tuple[int, int, int]:
    """(total parameters, N_active, FLOPs per token) per the formula in the module docstring."""
    m = cfg.model
    total = active = 0
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # a tied lm_head still does its matmul: count it in N_active, not twice in total
            active += p.numel()
            continue
        seen.add(id(p))
        total += p.numel()
        if name.startswith("embed."):
            continue
        share = m.experts_per_token / m.n_experts if ".experts." in name and m.n_experts else 1.0
        active += int(p.numel() * share)
    attention = 12 * m.n_layers * m.n_heads * m.dim_head * seq_len
    return total, active, 6 * active + attention


def tiny_config(cfg: Config) -> Config:
    """The preset's family (MoE, ternary, GQA ratio, MLP kind) at a CPU size."""
    m = dataclasses.replace(cfg.model, vocab_size=512, d_model=64, n_layers=2, head_dim=16, d_ff=128,
                            n_heads=4, n_kv_heads=min(4, max(1, 4 * cfg.model.kv_heads // cfg.model.n_heads)),
                            max_seq_len=64)
    return dataclasses.replace(cfg, model=m)


def measure(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    from lmforge.model import build_model
    from lmforge.train.distributed import apply_activation_checkpointing
    from lmforge.train.optim import build_optimizer
    from lmforge.utils.device import autocast, resolve_dtype, synchronize

    cfg = load_config(preset)
    if not cfg.model.vocab_size:
        cfg.model.vocab_size = cfg.tokenizer.vocab_size if cfg.tokenizer.kind in ("bpe", "unigram") else 50257
    if args.tiny:
        cfg = tiny_config(cfg)
    batch = args.batch_size or (2 if args.tiny else cfg.train.batch_size)
    seq = args.seq_len or (cfg.model.max_seq_len if args.tiny else cfg.train.seq_len or cfg.model.max_seq_len)
    dtype = torch.float32 if device.type == "cpu" else resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    model = build_model(cfg.model, device, seed=0)
    total, active, fpt = flops_per_token(model, cfg, seq)
    if args.activation_checkpointing:
        apply_activation_checkpointing(model)
    opt = build_optimizer(model, cfg.train, device)  # fused AdamW on CUDA
    fwd = torch.compile(model) if args.compile else model
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=gen).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                               SDPBackend.EFFICIENT_ATTENTION])
        torch.cuda.reset_peak_memory_stats(device)
    else:
        kernels = contextlib.nullcontext()

    def step() -> torch.Tensor:
        with autocast(device, dtype):
            loss = fwd(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with kernels:
        for _ in range(args.warmup):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        synchronize(device)
        elapsed = time.perf_counter() - start
    tok_s = batch * seq * args.steps / elapsed
    gpu_name, peak = peak_tflops(device)
    if args.peak_tflops:
        peak = args.peak_tflops
    tflops = fpt * tok_s / 1e12
    if device.type == "cuda":
        mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mem_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS of this process
    return {"preset": preset + (" (tiny)" if args.tiny else ""), "device": gpu_name, "params": total,
            "active": active, "batch": batch, "seq": seq, "dtype": str(dtype).removeprefix("torch."),
            "compile": args.compile, "act_ckpt": args.activation_checkpointing, "tok_s": tok_s, "tflops": tflops,
            "mfu": tflops / peak if peak else None, "peak_mem_gb": mem_gb, "final_loss": float(loss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized versions of the presets (a smoke run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=0, help="0: the preset's train.batch_size")
    ap.add_argument("--seq-len", type=int, default=0, help="0: the preset's train.seq_len")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile (default: on for CUDA, off on the CPU)")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for preset in args.presets:
        try:
            load_config(preset)
        except ConfigError as e:
            print(f"skipping {preset}: {e}", flush=True)
            continue
        try:
            rows.append(measure(preset, args, device))
        except torch.OutOfMemoryError:
            print(f"{preset}: out of GPU memory (try --activation-checkpointing or a smaller --batch-size)")
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if rows:
            r = rows[-1]
            print(f"  {r['preset']}: {r['tok_s']:,.0f} tok/s", flush=True)
    name = rows[0]["device"] if rows else args.device
    print(f"\ndevice: {name}; FLOPs/token = 6*N_active + 12*L*H*d_head*T; "
          f"compile={args.compile}, activation checkpointing={args.activation_checkpointing}")
    head = f"{'preset':<22}{'params':>14}{'N_active':>14}{'batch x seq':>13}{'dtype':>7}{'tok/s':>12}" \
           f"{'TFLOP/s':>10}{'MFU':>8}{'peak mem GB':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['preset']:<22}{r['params']:>14,}{r['active']:>14,}{r['batch']:>7} x {r['seq']:<4}"
              f"{r['dtype']:>7}{r['tok_s']:>12,.0f}{r['tflops']:>10.3g}{mfu:>8}{r['peak_mem_gb']:>13.2f}")
    if device.type == "cpu":
        print("(CPU: no MFU, and the memory column is the process's peak RSS)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
