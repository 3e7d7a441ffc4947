"""Training checkpoints: one directory per step under <run>/checkpoints/, written into a temporary directory and
renamed into place, so a crash (even SIGKILL) mid-save leaves the previous checkpoints intact. The last K are kept.

    step_000100/
      model.safetensors       weights (+ the resolved config in the metadata)
      optimizer.safetensors   AdamW moments and step counts
      rng.safetensors         torch CPU / CUDA generator states
      trainer_state.json      step, tokens, elapsed time, data-loader position, optimizer hyper-parameters
      config.toml             the resolved config
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.checkpoint.weights import flatten_optimizer, save_weights, unflatten_optimizer
from lmforge.config import Config
from lmforge.errors import CheckpointError
from lmforge.utils.io import atomic_dir

STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{i}"] = s
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    run_dir: Path,
    config: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    keep: int = 0,
) -> Path:
    step = int(trainer_state["step"])
    target = checkpoint_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        save_weights(model, tmp / "model.safetensors", {"format": "lmforge", "config": json.dumps(config.to_dict())})
        state = dict(trainer_state)
        if optimizer is not None:
            tensors, rest = flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state["optimizer"] = rest
        save_file(_rng_state(), str(tmp / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        (tmp / "config.toml").write_text(config.to_toml())
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_trainer_state(ckpt: Path, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore optimizer and RNG states from `ckpt`; returns the trainer state (step, loader position, ...)."""
    path = ckpt / "trainer_state.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: not a training checkpoint (no trainer_state.json)")
    state = json.loads(path.read_text())
    if optimizer is not None:
        if "optimizer" not in state or not (ckpt / "optimizer.safetensors").is_file():
            raise CheckpointError(f"{ckpt}: has no optimizer state to resume from")
        try:
            optimizer.load_state_dict(unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")),
                                                          state["optimizer"]))
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt}: optimizer state does not fit this model ({e})") from None
    if (ckpt / "rng.safetensors").is_file():
        _set_rng_state(load_file(str(ckpt / "rng.safetensors")))
    return state
