"""Ternary (BitNet b1.58) vs full precision: the same architecture, steps, seed and token data, trained back to back;
validation bits per byte on the whole held-out split and file sizes side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ternary_vs_fp.py                 # ternary-tiny, ~3 CPU minutes
    .venv/bin/python benchmarks/ternary_vs_fp.py --preset ternary-1m --steps 2000 \\
        --set train.tokens_per_step=0 --set train.batch_size=64 --set train.compile=true      # on a GPU

File sizes: the dense model as fp32 / fp16 safetensors, the ternary model as its packed `--format ternary` file; the
same three for an untrained `ternary-1m`-shaped model too, so the recipe's sizes print even when a smaller model is
trained.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmforge.checkpoint import load_model  # noqa: E402
from lmforge.checkpoint.packed import save_packed  # noqa: E402
from lmforge.checkpoint.weights import model_state  # noqa: E402
from lmforge.config import load_config  # noqa: E402
from lmforge.data import TokenShards, eval_batches  # noqa: E402
from lmforge.eval import evaluate_batches  # noqa: E402
from lmforge.model import build_model  # noqa: E402
from lmforge.train import pretrain  # noqa: E402


def dense_size(model: torch.nn.Module, dtype: torch.dtype, path: Path) -> int:
    save_file({k: v.to(dtype) for k, v in model_state(model).items()}, str(path))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ternary-tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--max-docs", type=int, default=4000)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/tinystories/tinystories-valid.txt"))
    ap.add_argument("--out", default="", help="keep the two runs here (default: a temporary directory)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ternary_vs_fp_"))
    common = [f'data.sources=["{args.data}"]', f"data.max_docs={args.max_docs}", f"train.max_steps={args.steps}",
              "train.eval_every=0", f"train.checkpoint_every={args.steps}", *args.overrides]
    results = {}
    dataset = ""
    for quant in ("ternary", "none"):
        run = work / quant
        extra = [f'data.dataset="{dataset}"'] if dataset else []  # the second run reuses the first's tokens
        cfg = load_config(args.preset, [*common, f'out_dir="{run}"', f'model.quant="{quant}"', *extra])
        train = pretrain(cfg, overwrite=True, progress=False)
        dataset = cfg.data.dataset or str(run / "data")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        lm = load_model(run, device)
        val = TokenShards(dataset, "val")
        seq = cfg.train.seq_len or cfg.model.max_seq_len
        ev = evaluate_batches(lm.model, eval_batches(val, cfg.train.batch_size, seq, 0), lm.tokenizer.token_bytes,
                              device)
        if quant == "ternary":
            size = save_packed(lm.model, lm.config, run / "tokenizer", work / "model.ternary.safetensors").stat().st_size
            sizes = {"packed ternary": size}
        else:
            sizes = {"fp32": dense_size(lm.model, torch.float32, work / "fp32.safetensors"),
                     "fp16": dense_size(lm.model, torch.float16, work / "fp16.safetensors")}
        results[quant] = (ev, sizes, train)

    (t_ev, t_sizes, _), (f_ev, f_sizes, _) = results["ternary"], results["none"]
    cfg = load_config(args.preset, common)
    print(f"\n{args.preset}: d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, {args.steps} steps x "
          f"{cfg.train.batch_size} x {cfg.train.seq_len or cfg.model.max_seq_len} tokens, same data and seed; "
          f"val = whole held-out split ({t_ev['tokens']:,} tokens, {t_ev['bytes']:,} bytes)\n")
    print("| model | val loss | val bpb | file | bytes |")
    print("|---|---:|---:|---|---:|")
    print(f"| full precision | {f_ev['loss']:.4f} | {f_ev['bpb']:.4f} | fp32 safetensors | {f_sizes['fp32']:,} |")
    print(f"| full precision | | | fp16 safetensors | {f_sizes['fp16']:,} |")
    print(f"| ternary (BitNet b1.58) | {t_ev['loss']:.4f} | {t_ev['bpb']:.4f} | packed 2-bit | "
          f"{t_sizes['packed ternary']:,} |")
    print(f"\nbpb gap (ternary - fp): {t_ev['bpb'] - f_ev['bpb']:+.4f} ({t_ev['bpb'] / f_ev['bpb']:.3f}x); file size: "
          f"{f_sizes['fp32'] / t_sizes['packed ternary']:.1f}x smaller than fp32, "
          f"{f_sizes['fp16'] / t_sizes['packed ternary']:.1f}x smaller than fp16")

    # Sizes at the recipe's shape (untrained weights: sizes do not depend on values).
    big = load_config("ternary-1m")
    big.model.vocab_size = 192
    model = build_model(big.model, seed=0)
    packed = save_packed(model, big, work / "ternary" / "tokenizer", work / "1m.ternary.safetensors").stat().st_size
    fp32, fp16 = (dense_size(model, d, work / f"1m.{d}.safetensors") for d in (torch.float32, torch.float16))
    print(f"\nternary-1m shape (998,784 parameters): fp32 {fp32:,} B | fp16 {fp16:,} B | packed ternary {packed:,} B "
          f"({fp32 / packed:.1f}x / {fp16 / packed:.1f}x smaller)")
    print(f"runs and files in {work}")


if __name__ == "__main__":
    main()
