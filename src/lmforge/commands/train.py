"""`lmforge train CONFIG [--set k=v ...] [--resume]`: pretraining from a config file or preset."""
from __future__ import annotations

import argparse

from lmforge.commands.common import add_config_args, add_run_args


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="pretrain a model from a config")
    add_config_args(p)
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.train import pretrain

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result.final_eval:
        e = result.final_eval
        print(f"step {result.step}: val loss {e['loss']:.4f}, perplexity {e['perplexity']:.2f}, bpb {e['bpb']:.4f}")
    print(f"checkpoint: {result.checkpoint}")
    return 130 if result.interrupted else 0
