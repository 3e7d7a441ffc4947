"""`lmforge serve RUN`: an OpenAI-compatible HTTP server with continuous batching and a web chat page."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a trained model over an OpenAI-compatible HTTP API (+ web chat page)")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together in one forward pass")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the run's folder name)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lmforge.inference.server import app_for_run

    app = app_for_run(args.run, device=args.device, api_key=args.api_key, max_batch=args.max_batch,
                      model_name=args.model_name)
    print(f"lmforge serve: model '{app.state.model_name}' at http://{args.host}:{args.port}/ "
          f"(OpenAI API under /v1, max batch {args.max_batch})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
