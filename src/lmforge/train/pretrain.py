"""Pretraining from a config: dataset (prepared on first use), model, loader, evaluation, then the shared loop."""
from __future__ import annotations

import math
import shutil

import torch

from lmforge.config import Config, save_config
from lmforge.data import TokenShards, WindowLoader, eval_batches
from lmforge.data.build import ensure_dataset
from lmforge.data.mixture import build_mixture_loader, prepare_mixture
from lmforge.errors import ConfigError, LmforgeError
from lmforge.eval import evaluate_batches
from lmforge.model import build_model, count_parameters
from lmforge.tokenizer.tokenizer import copy_tokenizer
from lmforge.train.distributed import DistContext, DistributedTrainer, init_distributed, shutdown, wrap_model
from lmforge.train.trainer import Trainer, TrainResult
from lmforge.utils.device import resolve_dtype


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


def _prepare_data(cfg: Config, progress: bool):
    """(dataset dir, tokenizer, MixtureData or None): a mixture / streaming run, or one prepared dataset."""
    if cfg.data.mixture or cfg.data.streaming:
        mix = prepare_mixture(cfg, progress)
        return mix.root, mix.tokenizer, mix
    dataset_dir, tokenizer = ensure_dataset(cfg, progress)
    return dataset_dir, tokenizer, None


def _mixture_eval(mix, cfg: Config, seq_len: int, token_bytes, device, dtype):
    """Each source's validation split; loss and bpb are their weighted means, each source also logged by name."""
    splits = [(p.name, p.weight, mix.val_split(p, cfg.data.streaming)) for p in mix.parts]
    total = sum(w for _, w, _ in splits)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {"loss": 0.0, "bpb": 0.0}
        for name, weight, data in splits:
            batches = eval_batches(data, cfg.train.batch_size, seq_len, cfg.train.eval_batches)
            r = evaluate_batches(m, batches, token_bytes, device, dtype)
            out["loss"] += weight / total * r["loss"]
            out["bpb"] += weight / total * r["bpb"]
            if len(splits) > 1:
                out[f"{name}_loss"], out[f"{name}_bpb"] = r["loss"], r["bpb"]
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
        return out

    return eval_fn


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    ctx = init_distributed(cfg)  # single process unless launched by torchrun
    try:
        return _pretrain(cfg, ctx, resume, overwrite, progress)
    finally:
        shutdown(ctx)


def _pretrain(cfg: Config, ctx: DistContext, resume: bool, overwrite: bool, progress: bool) -> TrainResult:
    if ctx.is_main:  # rank 0 prepares the run directory and the data; the others then find them ready
        prepare_run_dir(cfg, resume, overwrite)
        dataset_dir, tokenizer, mix = _prepare_data(cfg, progress)
    ctx.barrier()
    if not ctx.is_main:
        dataset_dir, tokenizer, mix = _prepare_data(cfg, False)
    fit_vocab(cfg, tokenizer.vocab_size)
    if ctx.is_main:
        save_config(cfg, cfg.run_dir / "config.toml")
        copy_tokenizer(dataset_dir / "tokenizer", cfg.run_dir / "tokenizer")

    device = ctx.device
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device, seed=cfg.train.seed)
    n_params = count_parameters(model)
    model = wrap_model(model, cfg, ctx, dtype)  # activation checkpointing, DDP / FSDP2 under torchrun
    seq_len = cfg.train.seq_len or cfg.model.max_seq_len
    token_bytes = tokenizer.token_bytes
    if mix is not None:
        loader = build_mixture_loader(cfg, mix, cfg.train.batch_size, seq_len, ctx.rank, ctx.world)
        eval_fn = _mixture_eval(mix, cfg, seq_len, token_bytes, device, dtype)
        data_desc = ", ".join(f"{p.name} {p.weight:g}" for p in mix.parts) + (" (streamed)" if cfg.data.streaming
                                                                              else "")
    else:
        train_data, val_data = TokenShards(dataset_dir, "train"), TokenShards(dataset_dir, "val")
        loader = WindowLoader(train_data, cfg.train.batch_size, seq_len, cfg.train.seed, ctx.rank, ctx.world)
        data_desc = f"{len(train_data):,} train tokens"

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            batches = eval_batches(val_data, cfg.train.batch_size, seq_len, cfg.train.eval_batches)
            return evaluate_batches(m, batches, token_bytes, device, dtype)

    if ctx.active:
        trainer = DistributedTrainer(cfg, model, loader, eval_fn, device, dtype, ctx, progress)
    else:
        trainer = Trainer(cfg, model, loader, eval_fn, device, dtype, progress)
    if progress:
        par = f", {ctx.parallel} x {ctx.world} processes" if ctx.active else ""
        print(f"{cfg.name}: {n_params:,} parameters, {trainer.tokens_per_step:,} tokens/step "
              f"({cfg.train.batch_size} x {seq_len} x {trainer.grad_accum} accumulation{par}), {data_desc}, "
              f"device {device}, {str(dtype).removeprefix('torch.')}", flush=True)
    return trainer.fit(resume=resume)
