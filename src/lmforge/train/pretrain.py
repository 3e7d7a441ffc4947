"""Pretraining from a config: dataset (prepared on first use), model, loader, evaluation, then the shared loop."""
from __future__ import annotations

import shutil

import torch

from lmforge.config import Config, save_config
from lmforge.data import TokenShards, WindowLoader, eval_batches
from lmforge.data.build import ensure_dataset
from lmforge.errors import ConfigError, LmforgeError
from lmforge.eval import evaluate_batches
from lmforge.model import build_model, count_parameters
from lmforge.tokenizer.tokenizer import copy_tokenizer
from lmforge.train.trainer import Trainer, TrainResult
from lmforge.utils.device import resolve_device, resolve_dtype


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> None:
    run_dir = cfg.run_dir
    if (run_dir / "checkpoints").exists() and not resume:
        if not overwrite:
            raise LmforgeError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace "
                               f"it, or choose another name / out_dir")
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def fit_vocab(cfg: Config, vocab_size: int) -> None:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab_size
    elif cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.model.vocab_size} is smaller than the tokenizer's {vocab_size}")


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    prepare_run_dir(cfg, resume, overwrite)
    dataset_dir, tokenizer = ensure_dataset(cfg, progress)
    fit_vocab(cfg, tokenizer.vocab_size)
    save_config(cfg, cfg.run_dir / "config.toml")
    copy_tokenizer(dataset_dir / "tokenizer", cfg.run_dir / "tokenizer")

    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device, seed=cfg.train.seed)
    seq_len = cfg.train.seq_len or cfg.model.max_seq_len
    train_data, val_data = TokenShards(dataset_dir, "train"), TokenShards(dataset_dir, "val")
    loader = WindowLoader(train_data, cfg.train.batch_size, seq_len, cfg.train.seed)
    token_bytes = tokenizer.token_bytes

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        batches = eval_batches(val_data, cfg.train.batch_size, seq_len, cfg.train.eval_batches)
        return evaluate_batches(m, batches, token_bytes, device, dtype)

    trainer = Trainer(cfg, model, loader, eval_fn, device, dtype, progress)
    if progress:
        print(f"{cfg.name}: {count_parameters(model):,} parameters, {trainer.tokens_per_step:,} tokens/step "
              f"({cfg.train.batch_size} x {seq_len} x {trainer.grad_accum} accumulation), {len(train_data):,} "
              f"train tokens, device {device}, {str(dtype).removeprefix('torch.')}", flush=True)
    return trainer.fit(resume=resume)
