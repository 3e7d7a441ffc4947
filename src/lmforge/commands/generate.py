"""`lmforge generate RUN_OR_CKPT --prompt ...`: streaming KV-cache sampling; several prompts run as one batch."""
from __future__ import annotations

import argparse
import sys

from lmforge.commands.common import add_sampling_args, sampling_params


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a trained model")
    p.add_argument("run", help="run directory, checkpoint directory or packed ternary file (export --format ternary)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable: batched)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.checkpoint import load_model
    from lmforge.inference import Engine

    lm = load_model(args.run, args.device)
    engine = Engine(lm.model, lm.tokenizer)
    params = sampling_params(args)
    prompts = args.prompt or ["Once upon a time"]
    if len(prompts) == 1:
        sys.stdout.write(prompts[0])
        for delta in engine.stream(prompts[0], params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    for i, (prompt, out) in enumerate(zip(prompts, engine.complete_batch(prompts, params))):
        print(f"--- [{i}] ---\n{prompt}{out.text}")
    return 0
