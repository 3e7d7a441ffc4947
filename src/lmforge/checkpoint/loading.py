"""Open a trained model for evaluation or inference from a run directory or one of its checkpoint directories."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.checkpoint.manager import latest_checkpoint
from lmforge.checkpoint.weights import load_weights
from lmforge.config import Config, load_config
from lmforge.errors import CheckpointError
from lmforge.model import Transformer, build_model
from lmforge.tokenizer import Tokenizer, load_tokenizer


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: Config
    checkpoint: Path
    run_dir: Path


def resolve_checkpoint(run_or_ckpt: str | Path) -> tuple[Path, Path]:
    """-> (checkpoint dir, run dir). Accepts a run directory (its latest checkpoint) or a checkpoint directory."""
    p = Path(run_or_ckpt)
    if not p.exists():
        raise CheckpointError(f"no run or checkpoint at {p}")
    if (p / "model.safetensors").is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p
        return p, run_dir
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        raise CheckpointError(f"{p}: no checkpoints found (expected {p}/checkpoints/step_*/model.safetensors)")
    return ckpt, p


def find_tokenizer(ckpt: Path, run_dir: Path) -> Path:
    for candidate in (ckpt / "tokenizer", run_dir / "tokenizer"):
        if candidate.is_dir():
            return candidate
    raise CheckpointError(f"{run_dir}: no tokenizer directory next to the checkpoint")


def load_model(run_or_ckpt: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A run directory, a checkpoint directory, or a packed ternary file (`lmforge export --format ternary`)."""
    if Path(run_or_ckpt).is_file():
        from lmforge.checkpoint.packed import is_packed_file, load_packed

        if is_packed_file(run_or_ckpt):
            return load_packed(run_or_ckpt, device, dtype)
        raise CheckpointError(f"{run_or_ckpt}: a file, but not a packed ternary model; pass a run or checkpoint "
                              f"directory")
    ckpt, run_dir = resolve_checkpoint(run_or_ckpt)
    config_path = ckpt / "config.toml"
    if not config_path.is_file():
        config_path = run_dir / "config.toml"
    cfg = load_config(str(config_path))
    model = build_model(cfg.model, device, init=False)
    load_weights(model, ckpt / "model.safetensors")
    model.to(dtype=dtype).eval()
    return LoadedModel(model, load_tokenizer(find_tokenizer(ckpt, run_dir)), cfg, ckpt, run_dir)
