"""`lmforge eval RUN_OR_CKPT --data ...`: loss, perplexity and bits per byte on a prepared split or raw text."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="loss / perplexity / bits per byte of a trained model")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--data", default=None,
                   help="prepared dataset dir (its val split) or raw text/JSONL/Parquet; default: the run's own data")
    p.add_argument("--split", default="val")
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole split")
    p.add_argument("--separator", default="<|endoftext|>")
    p.add_argument("--text-field", default="text")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.checkpoint import load_model
    from lmforge.data import TokenShards, eval_batches, iter_corpus, prepare_dataset, read_meta
    from lmforge.errors import DataError
    from lmforge.eval import evaluate_batches
    from lmforge.utils.device import resolve_device

    device = resolve_device(args.device)
    lm = load_model(args.run, device)
    seq_len = args.seq_len or lm.config.train.seq_len or lm.config.model.max_seq_len
    data = Path(args.data) if args.data else lm.run_dir / "data"
    split = args.split
    with tempfile.TemporaryDirectory() as tmp:
        if not (data / "meta.json").is_file():  # raw text: tokenize it with the model's tokenizer first
            if not args.data:
                raise DataError(f"{lm.run_dir} has no prepared data; pass --data")
            docs = iter_corpus([args.data], args.separator, args.text_field)
            prepare_dataset(docs, lm.tokenizer, Path(tmp) / "data", val_fraction=0.0, sources=[args.data],
                            progress=False)
            data, split = Path(tmp) / "data", "train"
        meta = read_meta(data)
        if meta["tokenizer"]["fingerprint"] != lm.tokenizer.fingerprint:
            raise DataError(f"{data} was tokenized with a different tokenizer ({meta['tokenizer']['fingerprint']}) "
                            f"than {lm.run_dir} uses ({lm.tokenizer.fingerprint}); pass the raw text instead")
        shards = TokenShards(data, split)
        result = evaluate_batches(lm.model, eval_batches(shards, args.batch_size, seq_len, args.max_batches),
                                  lm.tokenizer.token_bytes, device)
    result.update(checkpoint=str(lm.checkpoint), data=str(args.data or data), split=split, seq_len=seq_len)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"checkpoint  {lm.checkpoint}\ndata        {result['data']} ({split}, {result['tokens']:,} tokens, "
              f"{result['bytes']:,} bytes)\nloss        {result['loss']:.4f} nats/token\n"
              f"perplexity  {result['perplexity']:.3f}\nbpb         {result['bpb']:.4f} bits/byte")
    return 0
