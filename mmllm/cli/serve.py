"""Serve a model over an OpenAI-compatible chat API (`/v1/chat/completions`, streamed or not) and a chat page.

Any OpenAI client works: base_url http://HOST:PORT/v1, the model name from GET /v1/models. Images go inline as
data: URIs; the server never fetches URLs or reads files a request names. Binds to 127.0.0.1 unless --host says
otherwise; with --api-key (or MMLLM_API_KEY) every API request needs `Authorization: Bearer KEY`.
Example: mmllm serve --model models/shapes-tiny --port 8000, then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmllm.cli.model_options import add_model_arguments, load_model
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("MMLLM_API_KEY"), metavar="KEY",
                        help="require `Authorization: Bearer KEY` on the API (default: $MMLLM_API_KEY, else none)")
    parser.add_argument("--max-batch", type=int, default=16, metavar="N",
                        help="requests decoded together at most (default 16); more wait their turn")
    parser.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                        help="the most tokens one request may ask for (default 1024)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds of generation per request before it ends with finish_reason length")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mmllm.serving.api import Limits, create_app
        from mmllm.serving.engine import Engine, StaticEngine
    except ImportError as error:
        raise UsageError(f"mmllm serve needs FastAPI and uvicorn: pip install 'mmllm[serve]' ({error})") from None
    if args.max_batch < 1 or args.max_tokens < 1 or args.timeout <= 0 or not 0 < args.port < 65536:
        raise UsageError("--max-batch, --max-tokens, --timeout and --port must be positive (port below 65536)")
    vlm = load_model(args)
    # --decode: eager continuous batching (the default on CPUs), or a static cache for a compiled step (CUDA)
    engine = (Engine(vlm, max_batch=args.max_batch) if vlm.decode == "eager"
              else StaticEngine(vlm, max_batch=args.max_batch, decode=vlm.decode)).start()
    name = Path(args.model).name
    app = create_app(vlm, engine, model_name=name, api_key=args.api_key,
                     limits=Limits(max_tokens=args.max_tokens, seconds=args.timeout))
    print(f"serving {name} at http://{args.host}:{args.port}/ (OpenAI API under /v1; "
          f"{'API key required' if args.api_key else 'no API key'})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        engine.stop()
    return 0
