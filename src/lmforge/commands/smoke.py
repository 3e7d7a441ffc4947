"""`lmforge smoke RUN`: the fixed smoke-test prompt suite at two temperatures, judged OK / WEAK / FAIL by the rules
in lmforge/eval/smoke.py; prints a table and a summary and writes <run>/smoke.json for the model card."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("smoke", help="run the smoke-test prompt suite (OK / WEAK / FAIL verdicts)")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--template", default="", help="prompt style to use instead of the run's (chatml, alpaca); "
                   "'none' sends raw text even to a fine-tuned run")
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--temperatures", default="0.3,0.8", help="comma-separated (default 0.3,0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="", help="JSON path (default <run>/smoke.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmforge.checkpoint import load_model
    from lmforge.data.templates import get_prompt_style
    from lmforge.errors import LmforgeError
    from lmforge.eval.smoke import report, run_smoke, summary_line, table
    from lmforge.inference import Engine
    from lmforge.utils.io import atomic_write_json

    try:
        temps = tuple(float(t) for t in args.temperatures.split(","))
    except ValueError:
        raise LmforgeError(f"--temperatures: expected numbers like 0.3,0.8, got '{args.temperatures}'") from None
    lm = load_model(args.run, args.device)
    name = args.template or lm.config.sft.prompt_style
    style = None if name in ("", "none") else get_prompt_style(name)
    results = run_smoke(Engine(lm.model, lm.tokenizer), style, lm.config.sft.system_prompt, args.max_new_tokens,
                        temps, args.top_k, args.seed)
    print(table(results))
    print(summary_line(results))
    out = Path(args.out) if args.out else lm.run_dir / "smoke.json"
    atomic_write_json(out, report(results, str(lm.run_dir), str(lm.checkpoint), style, args.max_new_tokens,
                                  args.top_k, args.seed))
    print(f"wrote {out}")
    return 0
