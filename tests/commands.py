"""Running `mmllm` as a user does, in a fresh process, for the tests that go through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# On a CPU shared with other jobs torch's thread pool slows tiny models down many times over.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def mmllm_command(*args) -> list[str]:
    """The installed `mmllm` script next to this Python (so DDP can start its other ranks the same way), or
    `python -m mmllm.cli.main` where the script is not installed."""
    script = Path(sys.executable).with_name("mmllm")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "mmllm.cli.main"]
    return [*prefix, *map(str, args)]


def run_mmllm(*args, cwd: Path | None = None, stdin: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`mmllm ARGS...` in a fresh process on one thread; text stdout and stderr captured."""
    return subprocess.run(mmllm_command(*args), input=stdin, capture_output=True, text=True, env=SUBPROCESS_ENV,
                          cwd=cwd or REPO, timeout=timeout)


def start_mmllm(*args, cwd: Path) -> subprocess.Popen:
    """`mmllm ARGS` started in the background, stdout and stderr into files in cwd."""
    return subprocess.Popen(mmllm_command(*args), cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=open(cwd / "stdout.txt", "w"), stderr=open(cwd / "stderr.txt", "w"))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def start_server(*args, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`mmllm serve ARGS --port FREE` in the background; (process, base URL) once /health answers. The server
    stops when the test process ends; fixtures also terminate it."""
    import time
    import urllib.request

    port = free_port()
    process = subprocess.Popen(mmllm_command("serve", *args, "--port", port), env=SUBPROCESS_ENV, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mmllm serve stopped: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"mmllm serve did not answer /health within {timeout} s")


def http(method: str, url: str, body=None, headers: dict | None = None, declared_length: int | None = None):
    """(status, parsed JSON or text) of one HTTP request with the standard library; body: bytes or JSON-able.
    declared_length sends that Content-Length with no body (a server must refuse it unread)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        if declared_length is not None:
            connection.putrequest(method, parts.path)
            for name, value in {**headers, "Content-Length": str(declared_length)}.items():
                connection.putheader(name, value)
            connection.endheaders()
        else:
            connection.request(method, parts.path, body=data, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text
    finally:
        connection.close()
