"""`lmforge info CONFIG_OR_PRESET`: the architecture table and the exact parameter count, on the meta device."""
from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.commands.common import add_config_args
from lmforge.config import load_config


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="architecture and exact parameter count of a preset, config or run")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.model import architecture_table

    target = args.config
    if Path(target).is_dir() and (Path(target) / "config.toml").is_file():  # a run directory
        target = str(Path(target) / "config.toml")
    cfg = load_config(target, args.overrides)
    note = ""
    if cfg.model.vocab_size == 0:
        if cfg.tokenizer.kind in ("bpe", "unigram"):
            cfg.model.vocab_size = cfg.tokenizer.vocab_size
            note = f"(vocab_size taken from tokenizer.vocab_size = {cfg.tokenizer.vocab_size})\n"
        else:
            from lmforge.tokenizer import load_tokenizer

            cfg.model.vocab_size = load_tokenizer(cfg.tokenizer.path).vocab_size
            note = f"(vocab_size taken from the tokenizer at {cfg.tokenizer.path})\n"
    print(f"# {cfg.name}\n{note}")
    print(architecture_table(cfg.model))
    return 0
