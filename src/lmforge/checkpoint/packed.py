"""The packed ternary model file: one self-contained safetensors file that `load_model` (and so `lmforge generate`)
runs directly.

Layout (format "lmforge-ternary", version 1):
- tensors
  - `ternary.codes`   uint8: every BitLinear weight's codes, 2 bits each, 4 per byte (code c in {-1, 0, +1} stored
                       as c + 1, first weight in the low bits, row-major); each matrix starts on a fresh byte
                       (ceil(out·in / 4) bytes), matrices concatenated in the order of the `ternary` metadata list
  - `ternary.scales`  float32 [n_matrices]: each matrix's mean|W| scale, same order
  - every other weight (embedding, norms, an untied lm_head) under its state-dict name, in float32 (exact) or float16
  - `tokenizer/<file>`       uint8: the bytes of each tokenizer file (tokenizer.model / tokenizer.json, meta.json)
- metadata (string -> string)
  - `format` = "lmforge-ternary", `format_version` = "1"
  - `config`: the run's resolved config as TOML
  - `ternary`: JSON [[layer name, out_features, in_features], ...]
One tensor for all codes (not one per matrix) keeps the JSON header small: `ternary-1m` packs into ~354 KB.
No pickle anywhere: safetensors holds raw little-endian tensors behind a JSON header.
"""
from __future__ import annotations

import json
import tempfile
import tomllib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmforge.config import Config, config_from_dict
from lmforge.errors import CheckpointError
from lmforge.model import build_model
from lmforge.model.bitlinear import bitlinear_modules, pack_ternary, ternary_codes, unpack_ternary
from lmforge.utils.io import atomic_path

FORMAT = "lmforge-ternary"
VERSION = "1"
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def is_packed_file(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file at all
        return False


def save_packed(model: torch.nn.Module, config: Config, tokenizer_dir: str | Path, path: str | Path,
                float_dtype: str = "fp32") -> Path:
    """Write `model` (with BitLinear layers) as a packed ternary file, atomically."""
    if float_dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"float dtype '{float_dtype}' is not one of {', '.join(FLOAT_DTYPES)}")
    model = getattr(model, "_orig_mod", model)
    bits = bitlinear_modules(model)
    if not bits:
        raise CheckpointError("the model has no BitLinear layers: train it with model.quant = \"ternary\" first")
    tensors: dict[str, torch.Tensor] = {}
    layout, chunks, scales = [], [], []
    for name, layer in bits.items():
        if layer.frozen:
            codes, scale = layer.weight.detach().to(torch.int8), layer.ternary_scale
        else:
            codes, scale = ternary_codes(layer.weight.detach())
        chunks.append(pack_ternary(codes.cpu()))
        scales.append(scale.detach().float().reshape(1).cpu())
        layout.append([name, *layer.weight.shape])
    tensors["ternary.codes"] = torch.cat(chunks)
    tensors["ternary.scales"] = torch.cat(scales)
    packed_weights = {f"{name}.weight" for name in bits}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if name in packed_weights or t.data_ptr() in seen:  # tied weights once
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().to(FLOAT_DTYPES[float_dtype]).contiguous().cpu()
    for f in sorted(Path(tokenizer_dir).iterdir()):
        if f.is_file():
            tensors[f"tokenizer/{f.name}"] = torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8)
    metadata = {"format": FORMAT, "format_version": VERSION, "config": config.to_toml(),
                "ternary": json.dumps(layout)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_packed(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """-> LoadedModel whose BitLinear layers are frozen to the unpacked ternary codes and scales."""
    from lmforge.checkpoint.loading import LoadedModel
    from lmforge.tokenizer import load_tokenizer

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a packed ternary file (metadata format = {meta.get('format')!r})")
    if meta.get("format_version") != VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')!r}; this lmforge reads {VERSION}")
    try:
        cfg = config_from_dict(tomllib.loads(meta["config"]), f"{path} (embedded config)")
        layout = json.loads(meta["ternary"])
        shapes = {name: (int(out), int(inp)) for name, out, inp in layout}
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
        raise CheckpointError(f"{path}: damaged metadata: {e}") from None
    tensors = load_file(str(path))
    try:
        all_codes, all_scales = tensors.pop("ternary.codes"), tensors.pop("ternary.scales")
    except KeyError as e:
        raise CheckpointError(f"{path}: missing tensor {e}") from None
    if all_scales.numel() != len(layout) or all_codes.numel() != sum(-(-o * i // 4) for o, i in shapes.values()):
        raise CheckpointError(f"{path}: ternary.codes / ternary.scales do not match the {len(layout)} matrices listed")

    model = build_model(cfg.model, device, init=False)
    bits = bitlinear_modules(model)
    if set(bits) != set(shapes):
        raise CheckpointError(f"{path}: packed layers {sorted(set(shapes) ^ set(bits))[:4]} do not match the config")
    offset = 0
    for k, (name, out, inp) in enumerate(layout):
        layer = bits[name]
        if (out, inp) != tuple(layer.weight.shape):
            raise CheckpointError(f"{path}: layer {name} has shape {[out, inp]}, the config says "
                                  f"{list(layer.weight.shape)}")
        n = -(-out * inp // 4)
        try:
            codes = unpack_ternary(all_codes[offset:offset + n], (out, inp))
        except ValueError as e:
            raise CheckpointError(f"{path}: layer {name}: {e}") from None
        offset += n
        layer.freeze_ternary(codes, all_scales[k].float())
    tok_files = {k.removeprefix("tokenizer/"): tensors.pop(k) for k in list(tensors) if k.startswith("tokenizer/")}
    if not tok_files:
        raise CheckpointError(f"{path}: no tokenizer embedded")
    rest = {k: v.float() for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.removesuffix(".weight") not in bits
               and not (k == "lm_head.weight" and cfg.model.tie_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing[:4]}, unexpected tensors {unexpected[:4]}")
    model.tie_weights()
    model.to(dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tok_files.items():
            (Path(tmp) / name).write_bytes(data.numpy().tobytes())
        tokenizer = load_tokenizer(tmp)
    return LoadedModel(model, tokenizer, cfg, path, path.parent)
