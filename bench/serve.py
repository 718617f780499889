"""Serving throughput and latency: N concurrent clients stream chat completions from `mmllm serve` for T seconds.

Run by hand: `python bench/serve.py --model models/shapes-tiny --images data/examples [--clients 1 16]
[--seconds 30] [--max-tokens 32]`. Starts the server on a free loopback port (or uses --url), then for each
client count prints completion tokens/s, requests/s, p50/p99 time to first token and p50/p99 latency, and the
speed-up over one client at a time, as one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

QUESTIONS = ["Describe the image.", "What colour is the circle?", "How many shapes are there?",
             "Is there a red star?", "What shape is at the top?", "What is in the center?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, port: int, max_batch: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "mmllm.cli.main", "serve", "--model", model, "--port", str(port),
                                "--max-batch", str(max_batch)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(f"the server stopped: {process.stdout.read()}")
    process.kill()
    raise RuntimeError("the server did not start within 120 s")


def data_uri(path: Path) -> str:
    return f"data:image/{path.suffix.lstrip('.').replace('jpg', 'jpeg')};base64," + \
        base64.b64encode(path.read_bytes()).decode()


def one_request(url: str, image: str, question: str, max_tokens: int) -> dict:
    """Stream one completion; (time to first token, latency, completion tokens)."""
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": question}]}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
            first = time.perf_counter() - start
    connection.close()
    latency = time.perf_counter() - start
    return {"ttft": first if first is not None else latency, "latency": latency, "tokens": tokens}


def run_clients(url: str, images: list[str], clients: int, seconds: float, max_tokens: int,
                questions: list[str] = QUESTIONS) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop(index: int) -> None:
        n = index
        while time.perf_counter() < stop_at:
            result = one_request(url, images[n % len(images)], questions[n % len(questions)], max_tokens)
            with lock:
                results.append(result)
            n += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start

    def percentile(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0], 4)

    ttft = [r["ttft"] for r in results]
    latency = [r["latency"] for r in results]
    return {"clients": clients, "requests": len(results), "seconds": round(elapsed, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
            "requests_per_s": round(len(results) / elapsed, 2),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "latency_p50_s": percentile(latency, 50), "latency_p99_s": percentile(latency, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder to serve (omit with --url)")
    parser.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, required=True, help="a folder of PNG/JPEG images to ask about")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--question", action="append", help="ask this (repeatable; default: a mix of six)")
    args = parser.parse_args()
    images = [data_uri(p) for p in sorted(args.images.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if not images:
        parser.error(f"no PNG or JPEG images in {args.images}")
    server = None
    url = args.url
    if url is None:
        if args.model is None:
            parser.error("give --model (to start a server) or --url")
        port = free_port()
        server = start_server(args.model, port, args.max_batch)
        url = f"http://127.0.0.1:{port}"
    try:
        run_clients(url, images, 1, 2.0, args.max_tokens)  # warm-up
        questions = args.question or QUESTIONS
        runs = [run_clients(url, images, n, args.seconds, args.max_tokens, questions) for n in args.clients]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    single = next((r for r in runs if r["clients"] == 1), None)
    for run in runs:
        if single is not None:
            run["speedup_over_one_client"] = round(run["tokens_per_s"] / single["tokens_per_s"], 2)
            # With answers of different lengths, a closed loop re-asks the short ones more often: count requests too.
            run["requests_speedup_over_one_client"] = round(run["requests_per_s"] / single["requests_per_s"], 2)
    print(json.dumps({"url": url, "model": args.model, "max_tokens": args.max_tokens, "questions": questions,
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
