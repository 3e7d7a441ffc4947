"""Serving throughput: total generated tokens/s with 1 client vs N concurrent clients, side by side in one run.

The same OpenAI-compatible server (continuous batching over one KV cache) answers streamed completions from
1 client issuing requests one after another, then from N clients at once; the ratio is what batching buys.
It also times the scheduler alone (no HTTP) the same way. Throughput does not depend on training, so the model is
a random-init Llama of a few M parameters with a BPE tokenizer trained on a TinyStories slice.

    .venv/bin/python benchmarks/serve_throughput.py            # CPU
    .venv/bin/python benchmarks/serve_throughput.py --device cuda --d-model 768 --layers 12
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmforge.config import ModelConfig  # noqa: E402
from lmforge.data import iter_documents  # noqa: E402
from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.inference.scheduler import Scheduler  # noqa: E402
from lmforge.inference.server import BackgroundServer, create_app  # noqa: E402
from lmforge.model import build_model  # noqa: E402
from lmforge.model.params import count_parameters  # noqa: E402
from lmforge.tokenizer import train_bpe  # noqa: E402


def run_clients(n_clients: int, per_client: int, one_request) -> tuple[int, float]:
    """n_clients threads each send per_client requests back to back -> (generated tokens, seconds)."""
    totals = [0] * n_clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_clients + 1)

    def client(c: int) -> None:
        try:
            barrier.wait()
            for r in range(per_client):
                totals[c] += one_request(c * 1000 + r)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(totals), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/tinystories/tinystories-valid.txt"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=16, help="requests per scenario (split over the clients)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    docs = []
    for d in iter_documents(args.data):
        docs.append(d)
        if len(docs) == 2000:
            break
    tok = train_bpe(docs, args.vocab)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      max_seq_len=args.context, tie_embeddings=True)
    model = build_model(cfg, args.device, seed=0)
    engine = Engine(model, tok)
    prompts = [" ".join(d.split()[:12]) for d in docs[:64]]
    n_params = count_parameters(model)
    print(f"model: d_model {args.d_model}, {args.layers} layers, vocab {tok.vocab_size}, {n_params / 1e6:.2f}M params, "
          f"device {args.device}, torch threads {torch.get_num_threads()}; {args.requests} requests of "
          f"{args.max_tokens} tokens per scenario")

    def params(i: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=args.max_tokens, temperature=0.8, seed=i, stop_at_eos=False)

    rows = []
    # 1) the scheduler alone
    sched = Scheduler(engine, max_batch=args.clients)

    def direct(i: int) -> int:
        return sched.complete(tok.encode(prompts[i % len(prompts)]), params(i))[2]

    direct(0)  # warm-up
    for n in (1, args.clients):
        rows.append(("scheduler", n, *run_clients(n, args.requests // n, direct)))
    sched.stop()

    # 2) the HTTP server with the official openai client, streamed
    import openai

    app = create_app(engine, model_name="bench", max_batch=args.clients)
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def http(i: int) -> int:
            stream = client.completions.create(model="bench", prompt=prompts[i % len(prompts)],
                                               max_tokens=args.max_tokens, temperature=0.8, seed=i, stream=True,
                                               stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True})
            used = 0
            for chunk in stream:
                if chunk.usage is not None:
                    used = chunk.usage.completion_tokens
            return used

        http(0)
        for n in (1, args.clients):
            rows.append(("http (openai client, SSE)", n, *run_clients(n, args.requests // n, http)))
        peak = app.state.scheduler.peak_batch

    print(f"\n| path | clients | tokens | seconds | tokens/s | vs 1 client |")
    print("|---|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}
    for path, n, tokens, secs in rows:
        rate = tokens / secs
        base.setdefault(path, rate)
        print(f"| {path} | {n} | {tokens} | {secs:.2f} | {rate:.0f} | {rate / base[path]:.2f}x |")
    print(f"\nlargest decode batch seen by the server: {peak}")


if __name__ == "__main__":
    main()
