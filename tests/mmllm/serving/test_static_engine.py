"""The serving engine over a static KV cache (what `mmllm serve` runs on a GPU, compiled there): requests that
arrive together and apart, stop at different steps and outgrow the cache get exactly the eager engine's answers."""

from __future__ import annotations

import json
import threading

import pytest

from mmllm.serving.api import Limits, parse_completion
from mmllm.serving.engine import Engine, StaticEngine

QUESTIONS = ["What colour is the circle?", "Is there a red star?", "How many shapes are there?", "Describe the image."]


def _answers(engine, vlm, bodies: list[dict], waves: int) -> list[str]:
    """Submit the requests in `waves` groups (a group waits for the one before to start decoding)."""
    done, answers = [threading.Event() for _ in bodies], [None] * len(bodies)
    requests = []
    for index, body in enumerate(bodies):
        request, _, _ = parse_completion(json.dumps(body).encode(), vlm, Limits())

        def emit(event, index=index):
            if event[0] in ("done", "error"):
                answers[index] = event[1] if event[0] == "done" else f"error: {event[1]}"
                done[index].set()

        request.emit = emit
        requests.append(request)
    engine.start()
    try:
        size = -(-len(requests) // waves)
        for start in range(0, len(requests), size):
            for request in requests[start:start + size]:
                engine.submit(request)
            done[start].wait(timeout=60) if start + size < len(requests) else None
        assert all(event.wait(timeout=120) for event in done)
    finally:
        engine.stop()
    return answers


@pytest.mark.parametrize("waves", [1, 3])
def test_the_static_engine_answers_as_the_eager_engine(sharp, waves):
    _, vlm = sharp
    bodies = [{"messages": [{"role": "user", "content": QUESTIONS[i % 4] + " " * (i % 3)}],
               "max_tokens": 70 if i == 6 else 6 + 5 * (i % 4)} for i in range(7)]  # the last outgrows 64 slots
    eager = _answers(Engine(vlm, max_batch=4), vlm, bodies, waves)
    static_engine = StaticEngine(vlm, max_batch=4, decode="static")
    static = _answers(static_engine, vlm, bodies, waves)
    assert static == eager
    assert len(set(eager)) > 1 and not any(a.startswith("error") for a in eager)
    assert static_engine.capacity == 4 and static_engine.static.max_len > 64  # grown to the next bucket


def test_the_compiled_static_engine_answers_as_the_eager_engine_on_the_cpu(sharp):
    # What `mmllm serve` runs by default on a GPU, here through Inductor's C++ backend: the same answers, and a
    # cache whose storage is marked static (what lets CUDA graphs replay a step that writes it).
    import torch._dynamo

    _, vlm = sharp
    bodies = [{"messages": [{"role": "user", "content": QUESTIONS[i]}], "max_tokens": 5 + 3 * i} for i in range(3)]
    eager = _answers(Engine(vlm, max_batch=2), vlm, bodies, 1)
    torch._dynamo.reset()
    compiled_engine = StaticEngine(vlm, max_batch=2, decode="compiled")
    assert _answers(compiled_engine, vlm, bodies, 1) == eager
    keys = compiled_engine.static.keys
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in keys)
