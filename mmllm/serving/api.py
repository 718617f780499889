"""The OpenAI-compatible HTTP API: `POST /v1/chat/completions` (plain and streamed), `GET /v1/models`,
`GET /health`, and the chat page at `/`.

Requests are checked here (body size, JSON shape, roles, images as `data:` URIs only, pixel and length limits)
and every mistake is answered with OpenAI's error JSON and a 4xx status; a valid request becomes an engine
Request, whose prompt comes from the model's own processor and chat template (the tokens `mmllm ask` and
`mmllm chat` build). FastAPI serves; generation runs in the engine's thread with continuous batching.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from data_pipelines.chat.conversation import normalise_conversation
from data_pipelines.images import ImageError, load_image
from mmllm.serving.engine import Engine
from mmllm.serving.engine import Request as Generation


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # per image, checked from its header before decoding
    max_messages: int = 64
    max_images: int = 8
    max_tokens: int = 1024
    seconds: float = 120.0  # generation time per request; then finish_reason "length"


class BadRequest(Exception):
    """A request the API refuses: status, message, the parameter at fault and OpenAI's error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def create_app(vlm, engine: Engine, model_name: str, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="mmllm", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The API key and the body size, before anything reads the body."""
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                      code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return error_response(413, f"request body over {limits.max_body_bytes} bytes", code="body_too_large")
        return await call_next(request)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc):
        return error_response(405, f"{request.method} is not allowed on {request.url.path}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "running": len(engine.running),
                "waiting": engine.waiting.qsize(), "mean_batch": round(engine.mean_batch, 2)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "mmllm"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("mmllm.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.body()
            if len(body) > limits.max_body_bytes:
                raise BadRequest(f"request body over {limits.max_body_bytes} bytes", code="body_too_large",
                                 status=413)
            # off the event loop: image decoding and tokenizing release the GIL, so other requests go on meanwhile
            generation, stream, include_usage = await asyncio.to_thread(parse_completion, body, vlm, limits)
        except BadRequest as error:
            return error_response(error.status, str(error), error.param, error.code)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        generation.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        engine.submit(generation)
        if stream:
            return StreamingResponse(stream_chunks(events, generation, completion_id, model_name, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while True:
                event = await events.get()
                if event[0] == "error":
                    return error_response(500, event[1], code="generation_failed")
                if event[0] == "done":
                    break
        except asyncio.CancelledError:
            generation.cancelled.set()
            raise
        _, answer, reason, usage = event
        return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": reason}],
                "usage": usage}

    return app


async def stream_chunks(events: asyncio.Queue, generation: Generation, completion_id: str, model_name: str,
                        include_usage: bool = False):
    """Server-sent events in OpenAI's chunk format: the role, the text deltas, the finish reason, with
    `stream_options: {include_usage: true}` a chunk with the token counts, then [DONE]."""
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            batch = [await events.get()]
            while not events.empty():  # what queued up while the client was reading goes out together
                batch.append(events.get_nowait())
            text = "".join(event[1] for event in batch if event[0] == "delta")
            if text:
                yield chunk({"content": text})
            last = batch[-1]
            if last[0] == "done":
                yield chunk({}, last[2])
                if include_usage:
                    yield "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                                 "created": created, "model": model_name, "choices": [],
                                                 "usage": last[3]}) + "\n\n"
                break
            if last[0] == "error":  # an error after the response started: said in the stream, OpenAI style
                yield f"data: {json.dumps({'error': {'message': last[1], 'type': 'server_error'}})}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        generation.cancelled.set()  # a client that went away frees its row at the next step


# -- the request body ------------------------------------------------------------------------------------------

def parse_completion(body: bytes, vlm, limits: Limits) -> tuple[Generation, bool, bool]:
    """A request body -> (an engine Request with its encoded prompt, whether to stream, whether to send usage
    when streaming); BadRequest otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise BadRequest(f"at most {limits.max_messages} messages", param="messages")
    images = [image for message in messages for image in message_images(message)]
    if len(images) > limits.max_images:
        raise BadRequest(f"at most {limits.max_images} images per conversation", param="messages")
    if images and not vlm.config.reads_images:
        raise BadRequest("this model is a language model alone: it reads no images", param="messages",
                         code="images_not_supported")
    try:
        conversation = normalise_conversation(messages)
    except ValueError as error:
        raise BadRequest(f"messages: {error}", param="messages") from None
    pictures = [decode_data_uri(url, limits.max_pixels) for url in images]
    max_tokens = integer(data, "max_tokens", default=None, low=1, high=limits.max_tokens)
    if max_tokens is None:
        max_tokens = integer(data, "max_completion_tokens", default=min(256, limits.max_tokens), low=1,
                             high=limits.max_tokens)
    temperature = number(data, "temperature", 0.0, 0.0, 2.0)
    top_p = number(data, "top_p", 1.0, 0.0, 1.0)
    seed = integer(data, "seed", default=None, low=-2**63, high=2**63 - 1)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", param="stream")
    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    if data.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported", param="n")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a string or a list of up to 4 non-empty strings", param="stop")
    try:
        prompt = vlm.processor.encode_prompt(conversation, pictures)
    except ImageError as error:
        raise BadRequest(f"unusable image: {error}", param="messages", code="invalid_image") from None
    except ValueError as error:  # roles out of order, markers and images disagree, too long
        code = "context_length_exceeded" if "leaving no room" in str(error) else None
        raise BadRequest(str(error), param="messages", code=code) from None
    room = vlm.config.lm.max_seq_len - len(prompt.input_ids)
    generation = Generation(prompt=prompt, emit=lambda event: None, max_tokens=min(max_tokens, room),
                            temperature=temperature, top_p=None if top_p >= 1.0 else top_p, stop=stop, seed=seed,
                            stream=stream, deadline=time.monotonic() + limits.seconds)
    return generation, stream, bool(stream_options.get("include_usage"))


def message_images(message: Any) -> list[str]:
    """The image URLs of one message's content parts, in order (strings: OpenAI's `image_url.url`)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return []
    urls = []
    for part in message["content"]:
        if isinstance(part, dict) and part.get("type") in ("image_url", "image"):
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise BadRequest("an image part needs image_url.url, a data: URI", param="messages")
            urls.append(url)
    return urls


def decode_data_uri(url: str, max_pixels: int):
    """A `data:image/...;base64,...` URI -> a decoded RGB image. Remote URLs and file paths are refused: the
    server never fetches or reads what a request names."""
    if not url.startswith("data:"):
        raise BadRequest("images must be sent inline as data: URIs (data:image/png;base64,...); the server "
                         "does not fetch URLs or read files", param="messages", code="invalid_image_url")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise BadRequest("an image data: URI must be data:image/...;base64,...", param="messages",
                         code="invalid_image_url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the image's base64 data is broken", param="messages", code="invalid_image") from None
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as error:
        raise BadRequest(f"unusable image: {error}", param="messages", code="invalid_image") from None


def integer(data: dict, name: str, default, low: int, high: int):
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return value


def number(data: dict, name: str, default: float, low: float, high: float) -> float:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low} to {high}", param=name)
    return float(value)
