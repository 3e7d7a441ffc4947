"""`lmforge export RUN --format FORMAT --out PATH`: ship a trained model. Each format is a module in lmforge/export/
with `add_arguments(parser)` (optional) and `export(run, out, args) -> Path`, listed in FORMATS."""
from __future__ import annotations

import argparse
import importlib

FORMATS: dict[str, str] = {"ternary": "ternary", "hf": "hf", "onnx": "onnx"}  # format name -> module under lmforge.export


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained model (" + ", ".join(FORMATS) + ")")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--out", required=True, help="output file or directory")
    for module in FORMATS.values():
        mod = importlib.import_module(f"lmforge.export.{module}")
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(f"lmforge.export.{FORMATS[args.format]}")
    out = mod.export(args.run, args.out, args)
    print(f"exported {args.run} as {args.format} to {out}")
    return 0
