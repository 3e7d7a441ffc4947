"""From a config to a prepared dataset: get the tokenizer (train one, or load GPT-2 / a file), then tokenize the
sources, unless `data.dataset` already holds a prepared dataset made with the same tokenizer."""
from __future__ import annotations

import itertools
from pathlib import Path

from lmforge.config import Config, DataConfig, TokenizerConfig
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import META, read_meta
from lmforge.data.sources import iter_corpus
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer, load_tokenizer, train_tokenizer


def build_tokenizer(tok_cfg: TokenizerConfig, data_cfg: DataConfig, progress: bool = True) -> Tokenizer:
    if tok_cfg.kind in ("gpt2", "file"):
        if not tok_cfg.path:
            raise DataError(f"tokenizer.kind = '{tok_cfg.kind}' needs tokenizer.path")
        tok = load_tokenizer(tok_cfg.path)
        missing = [t for t in tok_cfg.special_tokens if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)
        return tok
    docs = iter_corpus(data_cfg.sources, data_cfg.separator, data_cfg.text_field, data_cfg.max_docs)
    if tok_cfg.train_max_docs:
        docs = itertools.islice(docs, tok_cfg.train_max_docs)
    if progress:
        print(f"training a {tok_cfg.vocab_size}-token {tok_cfg.kind} tokenizer on {', '.join(data_cfg.sources)}")
    return train_tokenizer(tok_cfg.kind, docs, tok_cfg.vocab_size, tok_cfg.special_tokens)


def ensure_dataset(cfg: Config, progress: bool = True) -> tuple[Path, Tokenizer]:
    """The prepared dataset directory for this config and its tokenizer, preparing it first if needed."""
    dataset = Path(cfg.data.dataset) if cfg.data.dataset else cfg.run_dir / "data"
    if (dataset / META).is_file():
        read_meta(dataset)  # validates the format
        return dataset, load_tokenizer(dataset / "tokenizer")
    if cfg.data.dataset and not cfg.data.sources:
        raise DataError(f"data.dataset = '{dataset}' is not a prepared dataset and data.sources is empty")
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data, progress)
    docs = iter_corpus(cfg.data.sources, cfg.data.separator, cfg.data.text_field, cfg.data.max_docs)
    prepare_dataset(docs, tokenizer, dataset, cfg.data.val_fraction, cfg.data.sources, threads=cfg.data.workers,
                    progress=progress)
    return dataset, load_tokenizer(dataset / "tokenizer")
