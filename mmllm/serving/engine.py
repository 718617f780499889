"""Continuous batching: one thread decodes every running request together; requests join and leave between steps.

Requests that arrive together are prefilled together (left-padded, as `mmllm ask` prefills a batch of
questions), then their rows join the running batch: the batch's KV cache and the new rows' are aligned on the
right (left padding, hidden by `key_is_real`) so every row keeps its own rotary positions. Each step samples one token per row with that request's own
settings and generator, and a row leaves the batch when it stops (an end token, max_tokens, a stop string, the
time limit, or its client going away). A failure while prefilling one request answers that request alone; the
others go on.

`StaticEngine` does the same over a static KV cache whose shapes never change, for a compiled decode step (CUDA
graphs on a GPU): `mmllm serve --decode static|compiled`, the default on CUDA.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from data_pipelines.batching import collate
from data_pipelines.processor import EncodedSample
from mmllm.model.generation import KVCache, decode_step, prefill, sample_next_token


@dataclass
class Request:
    """One chat completion to generate. `emit(event)` is called from the engine thread with ("delta", text)
    as text is ready, then ("done", answer, finish_reason, usage) or ("error", message). The deltas add up to
    the answer, which is `mmllm ask`'s: the decoded tokens, stripped, cut before a stop string."""

    prompt: EncodedSample
    emit: Callable[[tuple], None]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = True  # send text deltas as they are ready (else only the answer at the end)
    deadline: float = float("inf")  # time.monotonic() after which the answer ends with finish_reason "length"
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    shown: str = ""  # text already emitted
    answer: str | None = None  # set when a stop string ends the answer
    generator: torch.Generator | None = None


class Engine:
    """Runs requests on a VisionLanguageModel with continuous batching (at most `max_batch` rows at once)."""

    def __init__(self, vlm, max_batch: int = 16) -> None:
        self.vlm = vlm
        self.model = vlm.model
        self.config = vlm.config
        self.max_batch = max_batch
        self.stop_ids = set(self.config.eos_token_ids)
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.running: list[Request] = []
        self.cache: KVCache | None = None
        self.positions: torch.Tensor | None = None  # (b,) next rotary position of each row
        self.key_is_real: torch.Tensor | None = None  # (b, cache.max_len)
        self.logits: torch.Tensor | None = None  # (b, V): each row's next-token logits
        self.steps = 0  # decode steps run (for the batching statistics)
        self.rows_stepped = 0  # rows summed over those steps
        self._thread = threading.Thread(target=self._loop, name="mmllm-engine", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def submit(self, request: Request) -> None:
        if request.seed is not None:
            request.generator = torch.Generator(device=self.vlm.device).manual_seed(request.seed)
        self.waiting.put(request)

    @property
    def mean_batch(self) -> float:
        return self.rows_stepped / self.steps if self.steps else 0.0

    # -- the loop ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._admit(block=not self.running)
                if self.running:
                    with torch.inference_mode():
                        self._step()
            except Exception as error:  # a bug must not leave clients waiting forever: fail what is running
                for request in self.running:
                    request.emit(("error", f"generation failed: {type(error).__name__}: {error}"))
                self._reset()

    def _admit(self, block: bool) -> None:
        """Take waiting requests into the batch (up to max_batch rows), prefilled in one forward pass."""
        arrivals: list[Request] = []
        while len(self.running) + len(arrivals) < self.max_batch:
            try:
                request = self.waiting.get(timeout=0.1) if block and not arrivals else self.waiting.get_nowait()
            except queue.Empty:
                break
            if not request.cancelled.is_set():
                arrivals.append(request)
        if not arrivals:
            return
        groups = [arrivals]
        while groups:
            group = groups.pop()
            try:
                with torch.inference_mode():
                    self._join(group, *self._prefill(group))
            except Exception as error:
                if len(group) == 1:  # this request's problem only
                    group[0].emit(("error", f"{type(error).__name__}: {error}"))
                else:  # find which one: each again, alone
                    groups.extend([request] for request in group)

    def _prefill(self, arrivals: list[Request]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """The arrivals' prompts through the model, left-padded into one batch: (their cache, their last logits
        (n, V), which cached keys are real (n, cache.max_len))."""
        batch = collate([r.prompt for r in arrivals], pad_id=self.config.pad_token_id, padding_side="left")
        device = self.vlm.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        pixels = batch.get("pixel_values")
        if pixels is not None:
            pixels = pixels.to(device=device, dtype=self.vlm.dtype)
        embeds = self.model.embed(ids, pixels, batch["image_counts"].to(device))
        length = ids.size(1)
        budget = max(r.max_tokens for r in arrivals)
        cache = KVCache(self.config.lm, len(arrivals), length + budget, dtype=self.vlm.dtype, device=device)
        logits = prefill(self.model, embeds, mask, cache, batch["prefix_mask"].to(device))  # as `mmllm chat` reads it
        real = torch.ones(len(arrivals), cache.max_len, dtype=torch.bool, device=device)
        real[:, :length] = mask.bool()
        return cache, logits, real

    def _join(self, arrivals: list[Request], cache: KVCache, logits: torch.Tensor, real: torch.Tensor) -> None:
        """Add prefilled rows to the running batch, right-aligning the two caches."""
        device = logits.device
        positions = torch.tensor([len(r.prompt.input_ids) for r in arrivals], device=device)
        if not self.running:
            self.cache, self.logits, self.positions, self.key_is_real = cache, logits, positions, real
            self.running = list(arrivals)
            return
        old, new, rows = self.cache, cache, len(self.running)
        length = max(old.length, new.length)
        budget = max(r.max_tokens - len(r.tokens) for r in self.running + arrivals)
        merged = KVCache(self.config.lm, rows + len(arrivals), length + budget, dtype=self.vlm.dtype, device=device)
        for layer in range(self.config.lm.n_layers):
            for mine, theirs, fresh in ((merged.keys, old.keys, new.keys), (merged.values, old.values, new.values)):
                mine[layer][:rows, :, length - old.length:length] = theirs[layer][:, :, :old.length]
                mine[layer][rows:, :, length - new.length:length] = fresh[layer][:, :, :new.length]
        merged.length = length
        merged_real = torch.ones(rows + len(arrivals), merged.max_len, dtype=torch.bool, device=device)
        merged_real[:, :length] = False
        merged_real[:rows, length - old.length:length] = self.key_is_real[:, :old.length]
        merged_real[rows:, length - new.length:length] = real[:, :new.length]
        self.cache, self.key_is_real = merged, merged_real
        self.logits = torch.cat([self.logits, logits])
        self.positions = torch.cat([self.positions, positions])
        self.running.extend(arrivals)

    def _step(self) -> None:
        """One token for every running row; finished rows leave; the rest advance through the model."""
        if self.config.image_token_id >= 0:  # never generate an image slot (a text-only model's id is -1)
            self.logits[:, self.config.image_token_id] = float("-inf")
        tokens = self.logits.argmax(dim=-1)  # greedy rows; sampled rows draw with their own settings below
        for i, r in enumerate(self.running):
            if r.temperature > 0:
                tokens[i] = sample_next_token(self.logits[i:i + 1], r.temperature, None, r.top_p, r.generator)[0]
        self.steps += 1
        self.rows_stepped += len(self.running)
        now = time.monotonic()
        keep = []
        for i, (request, token) in enumerate(zip(self.running, tokens.tolist())):
            reason = self._advance(request, token, now)
            if reason is None:
                keep.append(i)
            else:
                self._finish(request, reason)
        if len(keep) < len(self.running):
            self._keep(keep)
        if self.running:
            self.logits = decode_step(self.model, tokens[keep] if len(keep) < len(tokens) else tokens,
                                      self.positions, self.cache, self.key_is_real)
            self.positions = self.positions + 1

    def _advance(self, request: Request, token: int, now: float) -> str | None:
        """Record a row's new token and emit the text it completes; the finish reason when the row is done."""
        if request.cancelled.is_set():
            return "cancelled"
        if token in self.stop_ids:
            return "stop"
        request.tokens.append(token)
        reason = "length" if len(request.tokens) >= request.max_tokens or now > request.deadline else None
        if not request.stream and not request.stop:
            return reason  # nothing to show before the end: no decoding on every step
        text = self.vlm.processor.decode(request.tokens).lstrip()
        stop_at = min((text.find(s) for s in request.stop if s in text), default=-1)
        if stop_at >= 0:
            request.answer = text[:stop_at].rstrip()
            return "stop"
        if reason is not None:
            return reason
        if request.stream and not text.endswith("\ufffd"):  # not half of a multi-byte character
            # Hold back what could still become a stop string, and trailing spaces (the answer is stripped).
            hold = max((len(s) - 1 for s in request.stop), default=0)
            ready = text.rstrip()
            self._emit_text(request, ready[:len(ready) - hold] if hold else ready)
        return None

    def _emit_text(self, request: Request, text: str) -> None:
        if text.startswith(request.shown) and len(text) > len(request.shown):
            request.emit(("delta", text[len(request.shown):]))
            request.shown = text

    def _finish(self, request: Request, reason: str) -> None:
        if reason == "cancelled":
            return
        answer = request.answer if request.answer is not None else self.vlm.processor.decode(request.tokens).strip()
        self._emit_text(request, answer)
        usage = {"prompt_tokens": len(request.prompt.input_ids), "completion_tokens": len(request.tokens),
                 "total_tokens": len(request.prompt.input_ids) + len(request.tokens)}
        request.emit(("done", answer, reason, usage))

    def _keep(self, rows: list[int]) -> None:
        """Only these rows go on; leading cache columns no remaining row uses are dropped."""
        self.running = [self.running[i] for i in rows]
        if not self.running:
            self._reset()
            return
        index = torch.tensor(rows, device=self.logits.device)
        self.cache.keep_rows(index)
        self.key_is_real = self.key_is_real[index]
        self.positions = self.positions[index]
        first = int(self.key_is_real[:, :self.cache.length].float().argmax(dim=1).min())  # earliest real key
        if first > 0:
            self.cache.keys = [k[:, :, first:] for k in self.cache.keys]
            self.cache.values = [v[:, :, first:] for v in self.cache.values]
            self.cache.length -= first
            self.cache.max_len -= first
            self.key_is_real = self.key_is_real[:, first:]

    def _reset(self) -> None:
        self.running, self.cache, self.logits, self.positions, self.key_is_real = [], None, None, None, None


class StaticEngine(Engine):
    """Continuous batching over a static KV cache (`--decode static|compiled`; the default on CUDA): a fixed number
    of rows (max_batch rounded up to a power of two) and positions (a multiple of STATIC_BUCKET), each running
    request owning one row and writing at its own slot, so every decode step has the same shapes and one compiled
    graph (CUDA graphs on a GPU) serves them all. A request joins by copying its prefilled keys into a free row,
    and leaves by freeing it; a request longer than the cache grows it to the next bucket (a new graph)."""

    def __init__(self, vlm, max_batch: int = 16, decode: str = "compiled") -> None:
        super().__init__(vlm, max_batch)
        from mmllm.model.generation import compiled_decode_step, static_decode_step

        self.compiled = decode == "compiled"
        self.step_fn = compiled_decode_step(vlm.device) if self.compiled else static_decode_step
        self.capacity = 1 << (max_batch - 1).bit_length()
        self.owner: list[Request | None] = [None] * self.capacity  # the request of each cache row
        self.static = None  # StaticKVCache, made at the first join
        self.tokens = torch.zeros(self.capacity, dtype=torch.long, device=vlm.device)

    def _allocate(self, length: int) -> None:
        """A cache of at least `length` positions, keeping what the rows already hold."""
        from mmllm.model.generation import StaticKVCache, static_shapes

        _, length = static_shapes(1, length, self.config.lm.max_seq_len, compiled=self.compiled)
        old = self.static
        if old is not None and old.max_len >= length:
            return
        device = self.vlm.device
        cache = StaticKVCache(self.config.lm, self.capacity, length, self.vlm.dtype, device,
                              compiled=self.compiled)
        cache.prefilled = True
        real = torch.ones(self.capacity, length, dtype=torch.bool, device=device)
        if old is None:
            self.positions = torch.zeros(self.capacity, dtype=torch.long, device=device)
            self.logits = torch.zeros(self.capacity, self.config.lm.vocab_size, dtype=self.vlm.dtype, device=device)
        else:
            for mine, theirs in ((cache.keys, old.keys), (cache.values, old.values)):
                for layer, tensor in enumerate(theirs):
                    mine[layer][:, :, :old.max_len] = tensor
            cache.slot.copy_(old.slot)
            real[:, :old.max_len] = self.key_is_real
        self.static, self.key_is_real = cache, real

    def _join(self, arrivals: list[Request], cache: KVCache, logits: torch.Tensor, real: torch.Tensor) -> None:
        length = cache.length  # the arrivals' left-padded prompt length
        self._allocate(max(length + r.max_tokens for r in arrivals))
        static = self.static
        for i, request in enumerate(arrivals):
            row = self.owner.index(None)
            self.owner[row] = request
            for mine, theirs in ((static.keys, cache.keys), (static.values, cache.values)):
                for layer, tensor in enumerate(theirs):
                    mine[layer][row, :, :length] = tensor[i, :, :length]
            self.key_is_real[row] = True
            self.key_is_real[row, :length] = real[i, :length]
            static.slot[row] = length
            self.positions[row] = len(request.prompt.input_ids)
            self.logits[row] = logits[i]
        self.running = [r for r in self.owner if r is not None]

    def _step(self) -> None:
        rows = [row for row, request in enumerate(self.owner) if request is not None]
        logits = self.logits[rows].clone()  # a CUDA-graph step reuses its output buffer
        if self.config.image_token_id >= 0:
            logits[:, self.config.image_token_id] = float("-inf")
        tokens = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            request = self.owner[row]
            if request.temperature > 0:
                tokens[i] = sample_next_token(logits[i:i + 1], request.temperature, None, request.top_p,
                                              request.generator)[0]
        self.steps += 1
        self.rows_stepped += len(rows)
        now = time.monotonic()
        for row, token in zip(rows, tokens.tolist()):
            reason = self._advance(self.owner[row], token, now)
            if reason is not None:
                self._finish(self.owner[row], reason)
                self.owner[row] = None
        self.running = [r for r in self.owner if r is not None]
        if not self.running:
            return  # the cache stays allocated for the next requests
        self.tokens[rows] = tokens
        self.logits = self.step_fn(self.model, self.tokens, self.positions, self.static, self.key_is_real)
        self.positions += 1
        self.static.slot += 1
        full = self.static.slot >= self.static.max_len
        self.static.slot[full] = 0  # free rows that ran off the end write harmlessly at 0 (owned rows never do)

    def _reset(self) -> None:
        self.owner = [None] * self.capacity
        self.running = []
