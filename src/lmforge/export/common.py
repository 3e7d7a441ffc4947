"""What every export format shares: the `--dtype` option and opening the run to export."""
from __future__ import annotations

import argparse

import torch

from lmforge.errors import LmforgeError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """One `--dtype` for all formats (each format checks which ones it supports); added once however many
    formats ask for it."""
    if "--dtype" in parser._option_string_actions:  # noqa: SLF001 - argparse has no public lookup
        return
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="weight precision of the export (hf: fp32/fp16/bf16; onnx: fp32/fp16)")


def export_dtype(args: argparse.Namespace | None, allowed: tuple[str, ...], fmt: str) -> torch.dtype:
    name = getattr(args, "dtype", None) or "fp32"
    if name not in allowed:
        raise LmforgeError(f"--dtype {name} is not supported for --format {fmt} (choose {', '.join(allowed)})")
    return DTYPES[name]
