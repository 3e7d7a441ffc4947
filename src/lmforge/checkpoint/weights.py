"""Model and optimizer state as safetensors (never pickle), with shape checks that name what does not match."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import CheckpointError


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied weights stored once (safetensors refuses shared storage)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    save_file(model_state(model), str(path), metadata=metadata or {})


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors weights into `model`, explaining any mismatch in names or shapes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    model = getattr(model, "_orig_mod", model)
    expected = model.state_dict()
    tied = {n for n, t in expected.items() if n not in state and any(
        t.data_ptr() == o.data_ptr() for m, o in expected.items() if m in state)}
    mismatched = [
        f"'{k}': checkpoint {list(v.shape)} vs config {list(expected[k].shape)}"
        for k, v in state.items() if k in expected and v.shape != expected[k].shape
    ]
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if mismatched:
            parts.append("shape mismatch for " + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else ""))
        if strict and missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if strict and unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{path} does not fit this model config: " + "; ".join(parts)
            + ". Was it trained with a different architecture?"
        )
    model.load_state_dict(state, strict=False)


def flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = t
    for idx, entry in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": rest["param_groups"]}
