"""Training throughput, lmforge vs Hugging Face transformers' LlamaForCausalLM, same config, same weights, same batch,
fp32 on this machine's CPU: forward + backward + AdamW step. Each measurement runs in its own process (so peak RSS
is its own), alternating frameworks, best of `--rounds`.

    .venv/bin/python benchmarks/train_vs_hf.py [--configs 1M 15M] [--steps 10] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import CONFIGS, hf_model, lmforge_model, peak_rss_mb, run_child, table

BATCH = {"1M": (16, 256), "15M": (8, 256)}


def child(framework: str, name: str, steps: int, compile_: bool) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    ours = lmforge_model(cfg)
    model = ours if framework == "lmforge" else hf_model(cfg, like=ours)
    if framework != "lmforge":
        del ours
    B, T = BATCH[name]
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if framework == "lmforge":
        fwd = torch.compile(model) if compile_ else model
        loss_fn = lambda: fwd(inputs, targets)  # noqa: E731
    else:
        loss_fn = lambda: model(input_ids=inputs, labels=x[:, :-1]).loss  # noqa: E731  (HF shifts labels itself)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - start
    print(json.dumps({"tok_s": steps * B * T / dt, "rss_mb": peak_rss_mb(), "loss": loss.item()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also measure lmforge with torch.compile")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.steps, args.child[2] == "1")
    variants = [("lmforge", "0"), ("transformers", "0")] + ([("lmforge", "1")] if args.compile else [])
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU", file=sys.stderr)
    for name in args.configs:
        best: dict[tuple[str, str], dict] = {}
        for _ in range(args.rounds):
            for fw, comp in variants:
                r = run_child(__file__, ["--child", fw, name, comp, "--steps", str(args.steps)])
                key = (fw, comp)
                if key not in best or r["tok_s"] > best[key]["tok_s"]:
                    best[key] = r
        ref = best[("transformers", "0")]
        params = sum(p.numel() for p in lmforge_model(CONFIGS[name]).parameters())
        for (fw, comp), r in best.items():
            label = fw + (" + compile" if comp == "1" else "")
            rows.append([name, f"{params / 1e6:.1f}M", "x".join(map(str, BATCH[name])), label, f"{r['tok_s']:,.0f}",
                         f"{r['tok_s'] / ref['tok_s']:.2f}x", f"{r['rss_mb']:,.0f}"])
    print(table(rows, ["config", "params", "batch", "framework", "train tok/s", "vs transformers", "peak RSS MB"]))


if __name__ == "__main__":
    main()
