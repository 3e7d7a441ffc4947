"""`lmforge data prepare`: documents -> token shards with a train/val split and metadata."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare token shards")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("prepare", help="tokenize text/JSONL/Parquet/HF datasets into shards")
    d.add_argument("--source", action="append", required=True,
                   help="file, directory, or hf:owner/name[:split] (repeatable)")
    d.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    d.add_argument("--out", required=True)
    d.add_argument("--separator", default="<|endoftext|>")
    d.add_argument("--text-field", default="text")
    d.add_argument("--val-fraction", type=float, default=0.02)
    d.add_argument("--max-docs", type=int, default=0)
    d.add_argument("--threads", type=int, default=0)
    d.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from lmforge.data import iter_corpus, prepare_dataset
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    docs = iter_corpus(args.source, args.separator, args.text_field, args.max_docs)
    meta = prepare_dataset(docs, tok, args.out, args.val_fraction, args.source, threads=args.threads)
    for split, info in meta["splits"].items():
        print(f"{split}: {info['docs']:,} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes")
    return 0
