"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse

from lmforge.inference import SamplingParams


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a preset name (see `lmforge info --presets`) or a TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that train into a run directory (train, sft)."""
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in the same directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 200) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--device", default="cpu")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, stop=list(args.stop), stop_at_eos=not args.ignore_eos,
        seed=args.seed,
    )
