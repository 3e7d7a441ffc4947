"""Generation throughput at batch 1, lmforge's KV-cache engine vs Hugging Face transformers' `generate()`, same
weights, greedy, fp32 on this machine's CPU. Each measurement runs in its own process (its own peak RSS),
alternating frameworks, best of `--rounds`. The greedy tokens of both are compared as a correctness check.

    .venv/bin/python benchmarks/generate_vs_hf.py [--configs 15M] [--new-tokens 200] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import CONFIGS, hf_model, lmforge_model, peak_rss_mb, run_child, table


def child(framework: str, name: str, new_tokens: int) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    ours = lmforge_model(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(2))
    if framework == "lmforge":
        from lmforge.inference import Engine, SamplingParams

        engine = Engine(ours, tokenizer=_NoTokenizer())
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0, stop_at_eos=False)
        run = lambda: [s[0] for s in engine.generate_tokens([prompt[0].tolist()], params)]  # noqa: E731
    else:
        model = hf_model(cfg, like=ours).eval()
        del ours

        def run():
            with torch.inference_mode():
                out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     use_cache=True, pad_token_id=0)
            return out[0, prompt.shape[1]:].tolist()
    run()  # warm-up
    start = time.perf_counter()
    tokens = run()
    dt = time.perf_counter() - start
    print(json.dumps({"tok_s": len(tokens) / dt, "rss_mb": peak_rss_mb(), "tokens": tokens}))


class _NoTokenizer:
    eos_id = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["15M"])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.new_tokens)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, batch 1", file=sys.stderr)
    rows = []
    for name in args.configs:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for fw in ("lmforge", "transformers"):
                r = run_child(__file__, ["--child", fw, name, "--new-tokens", str(args.new_tokens)])
                if fw not in best or r["tok_s"] > best[fw]["tok_s"]:
                    best[fw] = r
        same = best["lmforge"]["tokens"] == best["transformers"]["tokens"]
        ref = best["transformers"]
        for fw, r in best.items():
            rows.append([name, fw, f"{r['tok_s']:,.0f}", f"{r['tok_s'] / ref['tok_s']:.2f}x", f"{r['rss_mb']:,.0f}",
                         "yes" if same else "NO"])
    print(table(rows, ["config", "framework", "generate tok/s", "vs transformers", "peak RSS MB", "same tokens"]))


if __name__ == "__main__":
    main()
