"""`lmforge sft CONFIG --from RUN_OR_CKPT [--set k=v ...] [--resume]`: fine-tune a pretrained model into a chat
(ShareGPT -> ChatML) or instruction (Alpaca / Dolly) model, with the loss on the replies only."""
from __future__ import annotations

import argparse

from lmforge.commands.common import add_config_args, add_run_args


def add_parser(sub) -> None:
    p = sub.add_parser("sft", help="fine-tune a pretrained model on chat or instruction data")
    add_config_args(p)
    p.add_argument("--from", dest="init_from", default="", metavar="RUN_OR_CKPT",
                   help="the pretrained run directory or checkpoint (default: sft.init_from)")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.train.sft import sft

    cfg = load_config(args.config, args.overrides)
    result = sft(cfg, args.init_from, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result.final_eval:
        e = result.final_eval
        print(f"step {result.step}: held-out loss {e['loss']:.4f}, perplexity {e['perplexity']:.2f}")
    if result.stopped_early:
        print("stopped early: the held-out loss stopped improving")
    print(f"checkpoint: {result.checkpoint}")
    return 130 if result.interrupted else 0
