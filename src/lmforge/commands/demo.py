"""`lmforge demo`: the quick start. Trains the `demo` preset on TinyStories for a fixed CPU time budget, evaluates
bits per byte on the held-out stories, and prints a few sampled stories. Without --data it downloads TinyStories
from the Hugging Face hub."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small model on TinyStories on the CPU, evaluate it and sample from it")
    p.add_argument("--data", default=None, help="TinyStories text file or directory (default: download from the hub)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--samples", type=int, default=3)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.checkpoint import load_model
    from lmforge.config import load_config
    from lmforge.data.hub import download_tinystories
    from lmforge.inference import Engine, SamplingParams
    from lmforge.train import pretrain
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    data = args.data or str(download_tinystories("valid"))
    overrides = [f'data.sources=["{data}"]', f'out_dir="{args.out}"', *args.overrides]
    if args.minutes is not None:
        overrides.append(f"train.time_limit_min={args.minutes}")
    cfg = load_config("demo", overrides)
    result = pretrain(cfg, overwrite=True)
    e = result.final_eval
    print(f"\nvalidation ({cfg.tokenizer.kind} {cfg.model.vocab_size}-token tokenizer, held-out stories): "
          f"loss {e['loss']:.4f}, perplexity {e['perplexity']:.2f}, bits per byte {e['bpb']:.4f}\n")

    lm = load_model(args.out)
    engine = Engine(lm.model, lm.tokenizer)
    samples = []
    for i in range(args.samples):
        params = SamplingParams(max_new_tokens=min(300, lm.config.model.max_seq_len - 8), temperature=0.8,
                                top_k=50, seed=i)
        prompt = "Once upon a time"
        text = prompt + engine.complete(prompt, params).text
        samples.append(text)
        print(f"--- sample {i + 1} ---\n{text}\n")
    out = Path(args.out)
    atomic_write_json(out / "eval.json", {"step": result.step, "tokens": result.tokens, **e})
    atomic_write_text(out / "samples.txt", "\n\n---\n\n".join(samples) + "\n")
    print(f"run directory: {out} (checkpoint, tokenizer, metrics.jsonl, loss_curve.png, eval.json, samples.txt)")
    return 0
