"""`lmforge tokenizer train`: byte-level BPE or SentencePiece unigram on a corpus; `lmforge tokenizer encode`."""
from __future__ import annotations

import argparse
import itertools

from lmforge.data.sources import iter_corpus


def add_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="train or try out a tokenizer")
    tsub = p.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("train", help="train a BPE or unigram tokenizer")
    t.add_argument("--input", action="append", required=True, help="text/JSONL/Parquet file, directory or hf:dataset")
    t.add_argument("--kind", choices=["bpe", "unigram"], default="bpe")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--special-token", action="append", dest="special_tokens", default=None,
                   help="special token (repeatable; default <|endoftext|>)")
    t.add_argument("--separator", default="<|endoftext|>", help="document separator line in text files")
    t.add_argument("--text-field", default="text")
    t.add_argument("--max-docs", type=int, default=0)
    t.add_argument("--out", required=True, help="output directory")
    t.set_defaults(func=run_train)
    e = tsub.add_parser("encode", help="show how a tokenizer splits a text")
    e.add_argument("tokenizer", help="tokenizer directory or file (tokenizer.json, .model, GPT-2 vocab dir)")
    e.add_argument("text")
    e.set_defaults(func=run_encode)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import train_tokenizer

    specials = args.special_tokens or ["<|endoftext|>"]
    docs = iter_corpus(args.input, args.separator, args.text_field, args.max_docs)
    tok = train_tokenizer(args.kind, docs, args.vocab_size, specials)
    tok.save(args.out)
    print(f"saved a {tok.vocab_size}-token {args.kind} tokenizer to {args.out} (fingerprint {tok.fingerprint})")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    print(ids)
    print(" | ".join(tok.decode([i]) for i in itertools.islice(ids, 200)))
    print(f"{len(ids)} tokens, {len(args.text.encode()) / max(len(ids), 1):.2f} bytes/token")
    return 0
