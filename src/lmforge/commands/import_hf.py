"""`lmforge import-hf DIR --out RUN`: a Hugging Face Llama checkpoint directory becomes an lmforge run that
`lmforge eval`, `generate` and fine-tuning use like one lmforge trained."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("import-hf", help="turn a Hugging Face Llama checkpoint directory into an lmforge run")
    p.add_argument("dir", help="directory with config.json, model.safetensors (or shards / .bin) and tokenizer files")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--name", default="", help="run name (default: the directory's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.export.hf import import_hf

    out = import_hf(args.dir, args.out, args.name)
    print(f"imported {args.dir} into {out} (checkpoint {out}/checkpoints/step_000000)")
    return 0
