"""The `lmforge` command: a thin front end; each subcommand lives in lmforge/commands/<name>.py and registers
itself with `add_parser(subparsers)`, setting `func` to the function that runs it."""
from __future__ import annotations

import argparse
import importlib
import sys

from lmforge.errors import LmforgeError

COMMANDS = ["info", "tokenizer", "data", "train", "eval", "generate", "export", "demo", "import_hf", "card", "sft", "chat", "smoke", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Train small language models from scratch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lmforge.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except LmforgeError as e:
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge ... | head`: the reader left, which is not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
