"""`lmforge export RUN --format ternary --out model.ternary.safetensors`: the packed BitNet b1.58 file (2 bits per
weight, one fp32 scale per matrix, embeddings/norms, tokenizer and config in one file; layout in
lmforge/checkpoint/packed.py). `lmforge generate model.ternary.safetensors` runs it directly."""
from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.checkpoint import load_model
from lmforge.checkpoint.loading import find_tokenizer
from lmforge.checkpoint.packed import FLOAT_DTYPES, save_packed
from lmforge.errors import LmforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ternary-floats", choices=sorted(FLOAT_DTYPES), default="fp32",
                        help="ternary: dtype of the embedding and norms (fp32: logits identical to training; fp16: "
                             "smaller)")


def export(run: str, out: str, args: argparse.Namespace | None = None) -> Path:
    lm = load_model(run)
    if lm.config.model.quant != "ternary":
        raise LmforgeError(f"{run} was trained with model.quant = {lm.config.model.quant!r}; the ternary format needs "
                           f"a model trained with model.quant = \"ternary\" (e.g. the ternary-1m preset)")
    floats = getattr(args, "ternary_floats", "fp32") if args is not None else "fp32"
    return save_packed(lm.model, lm.config, find_tokenizer(lm.checkpoint, lm.run_dir), out, floats)
