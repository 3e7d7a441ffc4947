"""MoE vs dense at the same active parameters, same steps, same data: validation bits per byte and training tokens/s
side by side (CPU by default). "train tok/s" is each run's own average; on a shared machine its load changes
between runs, so "interleaved tok/s" also times the three models round-robin on the same batch (median of 7 rounds).

    .venv/bin/python benchmarks/moe_vs_dense.py                 # ~a few CPU minutes
    .venv/bin/python benchmarks/moe_vs_dense.py --steps 400 --device cuda

Models (all: d_model 128, 4 layers, 4 heads, SwiGLU, context 128, a 1024-token BPE trained on the data):
- dense:           d_ff 512 in every layer
- moe-top1:        4 experts of d_ff 512 in every layer, top-1   -> same active parameters (+ a 128x4 router per layer)
- moe-top2-half:   4 experts of d_ff 256 in every layer, top-2   -> same active parameters, finer-grained experts
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import statistics
import time

import torch

from lmforge.config import load_config
from lmforge.model import active_parameters, count_parameters
from lmforge.model.params import meta_model
from lmforge.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinystories" / "tinystories-valid.txt"

BASE = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=4", "model.max_seq_len=128",
        "tokenizer.vocab_size=1024", "train.seq_len=128", "train.batch_size=8", "train.warmup_steps=20",
        "train.eval_every=0", "train.checkpoint_every=0", "train.eval_batches=0", "data.val_fraction=0.05"]
MODELS = {
    "dense": ["model.d_ff=512"],
    "moe-top1": ["model.d_ff=512", "model.n_experts=4", "model.experts_per_token=1", "model.moe_every=1"],
    "moe-top2-half": ["model.d_ff=256", "model.n_experts=4", "model.experts_per_token=2", "model.moe_every=1"],
}


def interleaved_throughput(cfgs: dict, device: str, rounds: int = 7, steps: int = 3) -> dict[str, float]:
    """Training tokens/s (forward + backward + AdamW step) measured round-robin, model A then B then C, several rounds,
    median per model: a shared machine's changing load then hits every model alike."""
    from lmforge.model import build_model

    models = {n: build_model(c.model, device, seed=0) for n, c in cfgs.items()}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    x = torch.randint(0, 1024, (8, 128), device=device)
    times: dict[str, list[float]] = {n: [] for n in models}
    for r in range(rounds + 1):
        for n, m in models.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                m(x, x).backward()
                opts[n].step()
                opts[n].zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:  # round 0 is warm-up
                times[n].append(time.perf_counter() - t)
    return {n: steps * x.numel() / statistics.median(ts) for n, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--out", default="", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        dataset = out / "data"
        rows = []
        cfgs = {}
        for name in args.models.split(","):
            sets = BASE + MODELS[name] + [f'name="{name}"', f'out_dir="{out / name}"', f'data.sources=["{args.data}"]',
                                          f"train.max_steps={args.steps}", f'train.device="{args.device}"',
                                          f"train.log_every={args.steps}",
                                          f'data.dataset="{dataset}"']  # the first model prepares it, the rest reuse it
            cfg = load_config("tiny", sets)
            result = pretrain(cfg, overwrite=True, progress=False)
            last = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()
                    if '"tok_per_s"' in line][-1]
            cfgs[name] = cfg
            model = meta_model(cfg.model)
            rows.append({"model": name, "total": count_parameters(model), "active": active_parameters(model),
                         "bpb": result.final_eval["bpb"], "loss": result.final_eval["loss"],
                         "tok_s": last["tokens"] / last["elapsed_s"], "max_load": last.get("moe_max_load")})
            print(f"{name}: val bpb {rows[-1]['bpb']:.4f}, {rows[-1]['tok_s']:,.0f} tok/s", flush=True)

        speed = interleaved_throughput(cfgs, args.device)
    base = rows[0]
    print(f"\n{args.steps} steps x {8 * 128} tokens, device {args.device}, data {Path(args.data).name}\n")
    print("| model | params (total) | params (active/token) | val loss | val bpb | bpb vs first | train tok/s "
          "| tok/s vs first | interleaved tok/s | vs first | max expert share (run average) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        load = f"{r['max_load']:.2f}" if r["max_load"] is not None else "-"
        print(f"| {r['model']} | {r['total']:,} | {r['active']:,} | {r['loss']:.4f} | {r['bpb']:.4f} | "
              f"{r['bpb'] / base['bpb']:.3f}x | {r['tok_s']:,.0f} | {r['tok_s'] / base['tok_s']:.2f}x | "
              f"{speed[r['model']]:,.0f} | {speed[r['model']] / speed[base['model']]:.2f}x | {load} |")


if __name__ == "__main__":
    main()
