"""Hugging Face transformers format, both ways.

`lmforge export RUN --format hf --out DIR` writes a Llama checkpoint that `AutoModelForCausalLM.from_pretrained(DIR)`
and `AutoTokenizer.from_pretrained(DIR)` load without custom code: config.json (LlamaConfig), model.safetensors,
generation_config.json, the tokenizer files and, for fine-tuned runs, the chat template. lmforge's dense and GQA
models already use Llama's layout and rotate-half RoPE, so the weights map one to one by name.

`lmforge import-hf DIR --out RUN` does the reverse for Llama-architecture checkpoints.

Not exportable (the error says so): GELU MLPs and LayerNorm (Llama has neither), sparse MoE and ternary BitLinear
models (see `_refuse_unsupported` for why no installed transformers architecture computes the same function)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from lmforge.config import Config
from lmforge.errors import CheckpointError, LmforgeError
from lmforge.export.common import add_dtype_argument, export_dtype
from lmforge.utils.io import atomic_dir, atomic_write_json

# lmforge name pattern -> Hugging Face Llama name pattern
_TO_HF = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
    (r"^layers\.(\d+)\.attn\.([qkvo])_proj\.weight$", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"^layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"model.layers.\1.mlp.\2_proj.weight"),
    (r"^layers\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^layers\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
]
_FROM_HF = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight$", r"layers.\1.attn.\2_proj.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"layers.\1.mlp.\2_proj.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.mlp_norm.weight"),
]


def _rename(name: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unmapped = {}, []
    for k, v in state.items():
        new = _rename(k, _TO_HF)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    if unmapped:
        raise LmforgeError(f"these weights have no counterpart in Hugging Face Llama: {', '.join(unmapped[:5])}"
                           + (" ..." if len(unmapped) > 5 else ""))
    return out


def from_hf_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    out, unmapped = {}, []
    for k, v in state.items():
        if k.endswith("rotary_emb.inv_freq"):  # a buffer older transformers saved; lmforge recomputes it
            continue
        new = _rename(k, _FROM_HF)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    if unmapped:
        raise CheckpointError(f"{source}: tensors that a Llama model does not have: {', '.join(unmapped[:5])}"
                              + (" ..." if len(unmapped) > 5 else "") + " (is it really a plain Llama checkpoint?)")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Export


def _refuse_unsupported(cfg: Config) -> None:
    m = cfg.model
    if m.mlp != "swiglu" or m.norm != "rmsnorm":
        raise LmforgeError(
            f"this model uses mlp='{m.mlp}', norm='{m.norm}'; the Hugging Face export targets LlamaForCausalLM, which "
            "has a SwiGLU MLP and RMSNorm only. Export it with --format onnx, or train with mlp='swiglu', "
            "norm='rmsnorm'.")
    if getattr(m, "n_experts", 0):
        raise LmforgeError(
            "sparse MoE models cannot be exported to Hugging Face format yet: the installed transformers' MoE "
            "architectures (Mixtral, Qwen2-MoE, OLMoE) fix the expert MLP to SwiGLU in every layer, add shared "
            "experts, or route differently, so none computes lmforge's MoE layer (its router, expert interval and "
            "expert MLP) exactly; no mapping was verified. Use --format onnx, or lmforge's own checkpoint.")
    quant = getattr(m, "quant", "none") or "none"
    if quant != "none":
        raise LmforgeError(
            f"model.quant='{quant}' (ternary BitLinear) cannot be exported to Hugging Face format: transformers' "
            "BitNetForCausalLM adds sub-norms inside attention and MLP, so it computes a different function, and "
            "Llama with transformers' 'bitnet' quantization config has not been verified against lmforge's "
            "BitLinear. Use the packed ternary export or --format onnx instead.")


def llama_config(cfg: Config, token_ids: dict, dtype: torch.dtype) -> dict:
    from transformers import LlamaConfig

    m = cfg.model
    conf = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.ffn_dim, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.kv_heads, head_dim=m.dim_head, hidden_act="silu",
        max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
        tie_word_embeddings=m.tie_embeddings, attention_bias=False, mlp_bias=False,
        bos_token_id=token_ids["bos_token_id"], eos_token_id=token_ids["eos_token_id"],
        pad_token_id=token_ids["pad_token_id"],
    ).to_dict()
    conf["architectures"] = ["LlamaForCausalLM"]
    conf["rope_theta"] = m.rope_theta  # older transformers read this key; newer ones read rope_parameters
    conf["torch_dtype"] = conf["dtype"] = str(dtype).removeprefix("torch.")
    return conf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dtype_argument(parser)


def export(run: str | Path, out: str | Path, args: argparse.Namespace | None = None) -> Path:
    from safetensors.torch import save_file

    from lmforge.checkpoint import load_model
    from lmforge.checkpoint.weights import model_state
    from lmforge.export.hf_tokenizer import save_hf_tokenizer

    dtype = export_dtype(args, ("fp32", "fp16", "bf16"), "hf")
    lm = load_model(run)
    cfg = lm.config
    _refuse_unsupported(cfg)
    sft = getattr(cfg, "sft", None)  # fine-tuned runs record the prompt style they were trained with
    prompt_style = getattr(sft, "prompt_style", "") or ""
    system_prompt = getattr(sft, "system_prompt", "") or ""
    state = to_hf_state({k: v.to(dtype) for k, v in model_state(lm.model).items()})
    out = Path(out)
    with atomic_dir(out) as tmp:
        ids = save_hf_tokenizer(lm.tokenizer, tmp, cfg.model.max_seq_len, prompt_style, system_prompt)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", llama_config(cfg, ids, dtype))
        end = ids["end_ids"]
        atomic_write_json(tmp / "generation_config.json", {
            "bos_token_id": ids["bos_token_id"],
            "eos_token_id": end[0] if len(end) == 1 else (end or None),
            "pad_token_id": ids["pad_token_id"],
            "max_length": cfg.model.max_seq_len,
        })
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Import


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors (model.safetensors.index.json), or PyTorch .bin files read with
    weights_only=True (no arbitrary unpickling)."""
    from safetensors.torch import load_file

    def load_bin(path: Path) -> dict[str, torch.Tensor]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot be read as plain tensors with weights_only=True ({e})") from None

    for index_name, loader in (("model.safetensors.index.json", lambda p: load_file(str(p))),
                               ("pytorch_model.bin.index.json", load_bin)):
        index = directory / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for f in files:
                if not (directory / f).is_file():
                    raise CheckpointError(f"{index} lists {f}, which is missing")
                state.update(loader(directory / f))
            return state
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").is_file():
        return load_bin(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def model_config_from_hf(conf: dict, source: Path) -> dict:
    arch = conf.get("model_type")
    if arch != "llama":
        raise CheckpointError(f"{source}: model_type '{arch}' is not supported; lmforge imports Llama-architecture "
                              "checkpoints (model_type 'llama')")
    problems = []
    if conf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={conf['hidden_act']!r} (lmforge's SwiGLU uses silu)")
    for key in ("attention_bias", "mlp_bias"):
        if conf.get(key):
            problems.append(f"{key}=true (lmforge's projections have no bias)")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope type '{rope_type}' (lmforge implements plain RoPE)")
    if conf.get("pretraining_tp", 1) not in (1, None):
        problems.append(f"pretraining_tp={conf['pretraining_tp']}")
    if problems:
        raise CheckpointError(f"{source}: cannot import: " + "; ".join(problems))
    theta = rope.get("rope_theta", conf.get("rope_theta", 10000.0))
    heads = conf["num_attention_heads"]
    return {
        "vocab_size": conf["vocab_size"], "d_model": conf["hidden_size"], "n_layers": conf["num_hidden_layers"],
        "n_heads": heads, "n_kv_heads": conf.get("num_key_value_heads") or heads,
        "head_dim": conf.get("head_dim") or conf["hidden_size"] // heads, "d_ff": conf["intermediate_size"],
        "mlp": "swiglu", "norm": "rmsnorm", "norm_eps": float(conf.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(theta), "max_seq_len": conf.get("max_position_embeddings", 2048),
        "tie_embeddings": bool(conf.get("tie_word_embeddings", False)),
    }


def _check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], src: Path) -> None:
    expected = model.state_dict()
    tied = {"lm_head.weight"} if model.cfg.tie_embeddings else set()
    missing = sorted(set(expected) - set(state) - tied)
    wrong = [f"{k}: {list(v.shape)} vs {list(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    extra = sorted(set(state) - set(expected))
    if missing or wrong or extra:
        raise CheckpointError(f"{src}: weights do not fit its config.json: " + "; ".join(
            x for x in (f"missing {', '.join(missing[:3])}" if missing else "",
                        f"shape mismatch {'; '.join(wrong[:3])}" if wrong else "",
                        f"unexpected {', '.join(extra[:3])}" if extra else "") if x))


def import_hf(directory: str | Path, out: str | Path, name: str = "") -> Path:
    """A Hugging Face Llama checkpoint directory -> an lmforge run (config.toml, tokenizer/, checkpoints/step_000000)
    that eval, generate and fine-tuning load like a trained run."""
    from lmforge.checkpoint import save_checkpoint
    from lmforge.config import config_from_dict, save_config
    from lmforge.export.hf_tokenizer import load_hf_tokenizer_dir
    from lmforge.model import build_model

    src, out = Path(directory), Path(out)
    conf_path = src / "config.json"
    if not conf_path.is_file():
        raise CheckpointError(f"{src}: no config.json (expected a Hugging Face model directory)")
    if (out / "checkpoints").exists():
        raise LmforgeError(f"{out} already holds a run; choose another --out")
    conf = json.loads(conf_path.read_text())
    model_cfg = model_config_from_hf(conf, conf_path)
    tok = load_hf_tokenizer_dir(src, conf.get("eos_token_id"))
    if tok.vocab_size > model_cfg["vocab_size"]:
        raise CheckpointError(f"{src}: the tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{model_cfg['vocab_size']} embeddings")
    cfg = config_from_dict({
        "name": name or src.resolve().name, "out_dir": str(out), "model": model_cfg,
        "tokenizer": {"kind": "file", "path": str(out / "tokenizer"), "vocab_size": tok.vocab_size,
                      "special_tokens": tok.special_tokens},
        "train": {"seq_len": model_cfg["max_seq_len"]},
    }, str(conf_path))
    state = from_hf_state(read_hf_weights(src), src)
    state = {k: v.to(torch.float32) for k, v in state.items()}  # lmforge keeps fp32 master weights
    model = build_model(cfg.model, "cpu", init=False)
    _check_fits(model, state, src)
    model.load_state_dict(state, strict=False)  # a tied lm_head is the embedding and may be absent
    tok.save(out / "tokenizer")
    save_config(cfg, out / "config.toml")
    save_checkpoint(out, cfg, model, None, {"step": 0, "tokens": 0, "elapsed": 0.0, "imported_from": str(src)})
    return out
