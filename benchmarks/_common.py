"""Shared pieces of the side-by-side benchmarks: model configs, lmforge <-> transformers models with the same
weights, and running each measurement in a fresh subprocess so its peak memory (RSS) is its own."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmforge.config import ModelConfig  # noqa: E402

CONFIGS = {
    # ~1M: the size of the ternary-1m seed, dense
    "1M": ModelConfig(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, d_ff=352, max_seq_len=256,
                      tie_embeddings=True),
    # ~15M: llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, hidden 768, 32000 vocab)
    "15M": ModelConfig(vocab_size=32000, d_model=288, n_layers=6, n_heads=6, d_ff=768, max_seq_len=256,
                       tie_embeddings=True),
}


def lmforge_model(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    from lmforge.model import build_model

    return build_model(cfg, seed=seed)


def hf_model(cfg: ModelConfig, like: torch.nn.Module | None = None) -> torch.nn.Module:
    """transformers' LlamaForCausalLM with the same architecture (and the same weights when `like` is given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.checkpoint.weights import model_state
    from lmforge.export.hf import to_hf_state

    conf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_head, max_position_embeddings=cfg.max_seq_len,
                       rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                       attn_implementation="sdpa")
    model = LlamaForCausalLM(conf)
    if like is not None:
        missing, unexpected = model.load_state_dict(to_hf_state(model_state(like)), strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return model


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, args: list[str]) -> dict:
    """Run `script` with `args` in a fresh interpreter; it prints one JSON line last."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
