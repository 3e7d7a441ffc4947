"""Helpers for the export tests: small run directories written through the real config / tokenizer / checkpoint code."""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.checkpoint import save_checkpoint
from lmforge.config import load_config, save_config
from lmforge.model import build_model


def make_run(root: Path, tok, overrides: list[str], seed: int = 0) -> Path:
    """A tiny run with random weights (norm weights random too, so a misplaced norm would show)."""
    cfg = load_config("tiny", [f'out_dir="{root}"', f"model.vocab_size={tok.vocab_size}", *overrides])
    model = build_model(cfg.model, "cpu", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    save_config(cfg, root / "config.toml")
    tok.save(root / "tokenizer")
    save_checkpoint(root, cfg, model, None, {"step": 1, "tokens": 0, "elapsed": 0.0})
    return root
