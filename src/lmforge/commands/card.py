"""`lmforge card RUN [--out README.md]`: a model card with tables, the training-curve PNG and seeded samples, written
only from the run's own config, metrics and files."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("card", help="write a README.md model card for a run (tables, curve plot, samples)")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--out", default="", help="card path (default <run>/README.md; the PNG goes next to it)")
    p.add_argument("--prompt", action="append", default=None, help="sample prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-samples", action="store_true", help="leave out the sample outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.export.card import DEFAULT_PROMPTS, SampleSettings, write_card

    settings = SampleSettings(tuple(args.prompt or DEFAULT_PROMPTS), args.max_new_tokens, args.temperature,
                              args.top_k, args.seed)
    out = write_card(args.run, args.out or None, settings, samples=not args.no_samples)
    print(f"wrote {out}")
    return 0
