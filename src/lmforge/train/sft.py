"""Supervised fine-tuning: a pretrained run + chat / instruction records -> a chat or instruction model.

The model and tokenizer come from the pretrained run; the prompt style's special tokens (ChatML's <|im_start|>,
<|im_end|>) are added to the tokenizer and the embedding grows to match. The loss is on the assistant's tokens only.
Training reuses the shared Trainer (accumulation, clipping, checkpoints, exact resume, early stopping); the run
directory gets its own tokenizer/ and a config.toml that records the grown vocab_size and the prompt style."""
from __future__ import annotations

import math
from itertools import islice

import numpy as np
import torch

from lmforge.checkpoint import load_model
from lmforge.config import Config, load_config, save_config
from lmforge.data.instruct import Conversation, Example, encode_conversation, load_conversations
from lmforge.data.sft_loader import SFTLoader, sft_eval_batches
from lmforge.data.templates import get_prompt_style
from lmforge.errors import ConfigError, DataError
from lmforge.eval import evaluate_batches
from lmforge.model import count_parameters
from lmforge.model.resize import resize_vocab
from lmforge.train.pretrain import prepare_run_dir
from lmforge.train.trainer import Trainer, TrainResult
from lmforge.utils.device import resolve_device, resolve_dtype


def split_conversations(convs: list[Conversation], val_fraction: float, seed: int,
                        ) -> tuple[list[Conversation], list[Conversation]]:
    """A seeded split at the record level, so held-out conversations are never trained on."""
    n_val = max(1, round(len(convs) * val_fraction)) if val_fraction > 0 and len(convs) >= 2 else 0
    perm = np.random.default_rng(seed).permutation(len(convs))
    val = {int(i) for i in perm[:n_val]}
    return [c for i, c in enumerate(convs) if i not in val], [c for i, c in enumerate(convs) if i in val]


def tokenize_all(convs: list[Conversation], style, tokenizer, max_tokens: int) -> tuple[list[Example], int]:
    """-> (examples, how many conversations had nothing trainable within max_tokens)."""
    out, dropped = [], 0
    for c in convs:
        ex = encode_conversation(c.messages, style, tokenizer, max_tokens)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


def _init_from(cfg: Config, init_from: str, resume: bool) -> str:
    init_from = init_from or cfg.sft.init_from
    if not init_from and resume and (cfg.run_dir / "config.toml").is_file():
        init_from = load_config(str(cfg.run_dir / "config.toml")).sft.init_from
    if not init_from:
        raise ConfigError("fine-tuning needs a pretrained model: pass --from RUN_OR_CHECKPOINT (or set sft.init_from)")
    return init_from


def sft(cfg: Config, init_from: str = "", resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> TrainResult:
    init_from = _init_from(cfg, init_from, resume)
    convs, report = load_conversations(cfg.sft.data, cfg.sft.format, cfg.sft.max_records)
    prepare_run_dir(cfg, resume, overwrite)
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)

    # model and tokenizer from the pretrained run; its architecture replaces whatever [model] the SFT config had
    lm = load_model(init_from, device)
    model, tokenizer = lm.model.train(), lm.tokenizer
    cfg.model, cfg.tokenizer, cfg.data = lm.config.model, lm.config.tokenizer, lm.config.data
    cfg.sft.init_from = str(init_from)
    chats = report.formats.get("sharegpt", 0) >= report.formats.get("alpaca", 0)
    cfg.sft.prompt_style = cfg.sft.prompt_style or ("chatml" if chats else "alpaca")
    style = get_prompt_style(cfg.sft.prompt_style)

    missing = [t for t in style.special_tokens if tokenizer.token_to_id(t) is None]
    if missing:
        ids = tokenizer.add_special_tokens(missing)
        cfg.tokenizer.special_tokens = list(tokenizer.special_tokens)
        if progress:
            print("added special tokens: " + ", ".join(f"{t}={i}" for t, i in zip(missing, ids)), flush=True)
    if tokenizer.vocab_size > model.cfg.vocab_size:  # model.cfg is cfg.model: config.toml records the new size
        resize_vocab(model, tokenizer.vocab_size)
        if progress:
            print(f"vocabulary grown to {model.cfg.vocab_size:,} (new rows = mean embedding)", flush=True)

    context = cfg.model.max_seq_len
    cfg.train.seq_len = min(cfg.train.seq_len or context, context)
    seq_len = cfg.train.seq_len
    train_convs, val_convs = split_conversations(convs, cfg.sft.val_fraction, cfg.train.seed)
    train_ex, dropped_train = tokenize_all(train_convs, style, tokenizer, seq_len + 1)
    val_ex, dropped_val = tokenize_all(val_convs, style, tokenizer, seq_len + 1)
    if not train_ex:
        raise DataError(f"no training example has a reply that fits in {seq_len} tokens ({report.summary()})")
    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    try:
        loader = SFTLoader(train_ex, cfg.train.batch_size, seq_len, cfg.train.seed, pad_id, cfg.sft.packing)
    except ValueError as e:
        raise DataError(str(e)) from None
    if cfg.sft.patience and not val_ex:
        raise ConfigError("sft.patience needs held-out examples: set sft.val_fraction > 0")

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        batches = sft_eval_batches(val_ex, cfg.train.batch_size, pad_id)
        if cfg.train.eval_batches:
            batches = islice(batches, cfg.train.eval_batches)
        return evaluate_batches(m, batches, tokenizer.token_bytes, device, dtype)

    trainer = Trainer(cfg, model, loader, eval_fn if val_ex else None, device, dtype, progress,
                      early_stopping_patience=cfg.sft.patience)
    trainer.eval_at_start = True  # metrics.jsonl then starts with the base model's held-out loss (step 0)
    if cfg.sft.epochs > 0:
        cfg.train.max_steps = max(1, math.ceil(cfg.sft.epochs * loader.batches_per_epoch / trainer.grad_accum))
    cfg.validate()
    save_config(cfg, cfg.run_dir / "config.toml")
    tokenizer.save(cfg.run_dir / "tokenizer")
    if progress:
        trained = sum(sum(e.trained[1:]) for e in train_ex)
        print(f"{cfg.name}: {report.summary()}", flush=True)
        print(f"{len(train_ex):,} train / {len(val_ex):,} held-out examples ({dropped_train + dropped_val} with no "
              f"reply within {seq_len} tokens dropped), {trained:,} trained tokens, prompt style "
              f"'{style.name}', {count_parameters(model):,} parameters, {cfg.train.max_steps} steps "
              f"({cfg.train.batch_size} x {trainer.grad_accum} accumulation), device {device}", flush=True)
    return trainer.fit(resume=resume)
