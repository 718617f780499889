"""Text generation with a KV cache: prefill the (left-padded) prompt batch once, then decode token by token.

- `KVCache`: per-layer key/value tensors (B, n_kv_heads, max_len, head_dim) allocated once, written in place.
- `StaticKVCache`: the same with fixed shapes at every decode step (see `decode` below).
- `stream(...)`: a generator yielding `{row: token_id}` at each step for the rows still generating.
- `generate(...)`: runs `stream` and returns the new tokens of each row (stop token removed).

Images are encoded once, in prefill. Decoding comes in three kinds (`decode=`):
- `eager`: rows that produce a stop id are removed from the batch (and from the cache), so finished rows cost
  nothing; each step attends to the positions filled so far.
- `static`: every step has the same shapes: the cache holds a bucket of positions (prompt + new tokens rounded
  up to a multiple of STATIC_BUCKET), batches are padded to a power of two, a step writes each row's keys at
  that row's slot (a tensor, not a Python int) and attends to the whole cache through a mask; finished rows stay
  (their tokens are dropped). It is what compilation needs:
- `compiled`: the static step through torch.compile, once per (batch bucket, length bucket, dtype), kept on disk
  (mmllm.model.compiled_decode); its length buckets are powers of two (128, 256, ...), so a handful of graphs
  serve every length; on CUDA with CUDA graphs (mode "reduce-overhead"), which removes the
  per-kernel launch cost that bounds batch-1 decoding.
Greedy tokens are the same in all three (tests/mmllm/model/test_static_decode.py). In prefix mode prefill attends
bidirectionally over the prefix (the processor's prefix_mask: the turns before the first answer, the whole prompt
for a first question) and decoded tokens are causal, which is exactly what full recomputation with that prefix_mask
does, since prefix positions never attend to later tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mmllm.config import LMConfig
from mmllm.model.vlm import build_attention_mask
from mmllm.model.vlm import VLM


class KVCache:
    """Keys and values of every layer for up to max_len positions; `length` positions are filled."""

    def __init__(
        self,
        config: LMConfig,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, n_kv, T, hd) after the cached positions; return all keys/values so far (B, n_kv, S, hd).

        `length` moves on only in `advance`, once every layer has written the same positions.
        """
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, writing up to {end}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Shrink the batch to `rows` (indices into the current batch), e.g. after other rows finished."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


STATIC_BUCKET = 64  # positions: a static cache's length is a multiple of this, so most lengths share a graph
COMPILED_MIN_LENGTH = 128  # a compiled step's shortest cache; longer ones double
DECODES = ("eager", "static", "compiled")


class StaticKVCache:
    """Keys and values for a fixed number of positions and rows, written in place at each row's `slot` (a tensor,
    so that a compiled step reads it without recompiling; rows of a batch share one slot, rows of the serving
    engine each have their own); every decode step reads all of it, masked by `visible`."""

    def __init__(self, config: LMConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str, compiled: bool = False) -> None:
        # One allocation for the bucket: (keys/values, layers, B, n_kv, L, hd); each layer's keys are a view of it.
        self.storage = torch.zeros((2, config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim),
                                   dtype=dtype, device=device)
        self.keys, self.values = list(self.storage[0].unbind(0)), list(self.storage[1].unbind(0))
        self.max_len = max_len
        self.slot = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,): where each row writes next
        self.rows = torch.arange(batch_size, device=device)
        self.positions = torch.arange(max_len, device=device)  # (L,)
        self.prefilled = False
        if compiled:
            self.mark_static()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill (the prompt's b rows and T positions) writes from position 0 and attends to the prompt only;
        a decode step (one position, all rows) writes at `slot` and attends to the whole cache (B, n_kv, L, hd)."""
        if not self.prefilled:
            rows, length = k.size(0), k.size(2)
            self.keys[layer][:rows, :, :length] = k
            self.values[layer][:rows, :, :length] = v
            return k, v
        self.keys[layer][self.rows, :, self.slot] = k[:, :, 0]  # (B, n_kv, hd) at each row's own slot
        self.values[layer][self.rows, :, self.slot] = v[:, :, 0]
        return self.keys[layer], self.values[layer]

    def advance(self, n: int) -> None:
        """After prefill, every write is a decode step; the slot itself moves in the decode loop, outside any
        compiled step (see _stream_static)."""
        self.prefilled = True

    def mark_static(self) -> None:
        """Tell torch.compile that the cache's tensors keep their addresses: a compiled step writes them in place,
        and CUDA graphs (mode "reduce-overhead") replay only steps whose mutated inputs are parameters, buffers
        or marked so (Inductor's check_for_mutation); otherwise it silently skips the graphs. Unguarded: the next
        generation's cache, another allocation of the same shapes, reuses the compiled step."""
        import torch._dynamo

        for tensor in (*self.keys, *self.values, self.storage):
            torch._dynamo.mark_static_address(tensor, guard=False)


def static_shapes(batch_size: int, length: int, max_seq_len: int, compiled: bool = False) -> tuple[int, int]:
    """(rows, positions) of the static cache: the batch rounded up to a power of two, the length to a multiple
    of STATIC_BUCKET, or for a compiled step to a power of two from COMPILED_MIN_LENGTH (each length bucket is a
    graph to compile; a cache length marked dynamic instead measured slower per token and missed the disk cache
    in torch 2.14: bench/compiled_decode.py). Never past what the model can attend to, nor under `length`."""
    rows = 1 << (batch_size - 1).bit_length()
    if compiled:
        bucketed = max(COMPILED_MIN_LENGTH, 1 << (length - 1).bit_length())
    else:
        bucketed = -(-length // STATIC_BUCKET) * STATIC_BUCKET
    return rows, max(length, min(bucketed, max_seq_len))


def static_decode_step(model: VLM, tokens: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache,
                       key_is_real: torch.Tensor) -> torch.Tensor:
    """One token per row (B,) at rotary positions (B,) into the static cache; logits (B, V). key_is_real (B, L)
    marks real prompt keys and every decode slot; those after `cache.slot` are not written yet and stay hidden."""
    visible = key_is_real & (cache.positions[None, :] <= cache.slot[:, None])  # (B, L)
    embeds = model.lm.embed_tokens(tokens[:, None])  # (B, 1, dim)
    hidden = model.lm(embeds, positions[:, None], attn_mask=visible[:, None, None, :], is_causal=False,
                      kv_cache=cache)
    return model.lm.logits(hidden[:, -1])


def compiled_decode_step(device: torch.device):
    """static_decode_step through torch.compile (mmllm.model.compiled_decode: one graph for every cache length,
    kept on disk, announced once, uncompiled when compiling fails)."""
    from mmllm.model.compiled_decode import compiled_decode_step as compiled

    return compiled(device, static_decode_step)


def default_decode(device: torch.device | str, session: bool = False, model: VLM | None = None) -> str:
    """`compiled` on CUDA (launch-bound otherwise). On CPUs, for a session of many answers (`mmllm chat`) on a model
    whose step was compiled before (`--decode compiled` once: kept on disk, so a process only traces it again, in
    seconds, which a chat's answers repay); otherwise `eager`: a first compile takes minutes on a CPU, and saves a
    few milliseconds a token (bench/compiled_decode.py measures both)."""
    if torch.device(device).type == "cuda":
        return "compiled"
    if session and model is not None:
        from mmllm.model.compiled_decode import compiled_before

        return "compiled" if compiled_before(model, device) else "eager"
    return "eager"


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy; top_k/top_p filter before sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the best always stays).
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def stream(
    model: VLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_counts: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] | None = None,
    seed: int | None = None,
    decode: str = "eager",
) -> Iterator[dict[int, int]]:
    """Yield {row: new token id} once per decoding step, for the rows still generating.

    input_ids (B, T) is LEFT-padded (attention_mask 1 on real tokens, last column real in every row).
    A row's last yield is its stop token (config.eos_token_ids unless stop_ids is given) or its
    max_new_tokens-th token; generation also ends at lm.max_seq_len. seed makes sampling reproducible.
    The image placeholder id is never generated. decode: eager, static or compiled (the module's docstring).
    prefix_mask (B, T), used in prefix mode only: the prompt positions attended bidirectionally, as the processor
    marks them (the turns before the conversation's first answer, as in training); None: the whole prompt.
    """
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}; choose one of {', '.join(DECODES)}")
    config = model.config
    B, T = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("generation needs left-padded prompts: the last token of every row must be real")
    stop = set(config.eos_token_ids if stop_ids is None else stop_ids)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    max_new_tokens = min(max_new_tokens, config.lm.max_seq_len - T)
    embeds = model.embed(input_ids, pixel_values, image_counts)  # raises on too long / bad image tokens
    if max_new_tokens <= 0:
        return
    dtype = next(model.parameters()).dtype
    if decode != "eager":
        yield from _stream_static(model, embeds, attention_mask, max_new_tokens, stop, decode,
                                  (temperature, top_k, top_p, generator), prefix_mask)
        return
    cache = KVCache(config.lm, B, T + max_new_tokens, dtype=dtype, device=device)
    logits = prefill(model, embeds, attention_mask, cache, prefix_mask)  # (B, V)

    # Left-padding keys stay hidden through key_is_real; without padding no decode mask is needed at all.
    key_is_real = None
    if not bool(attention_mask.all()):
        key_is_real = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=device)
        key_is_real[:, :T] = attention_mask.bool()
    next_position = attention_mask.long().sum(-1)  # (B,): real prompt tokens are at 0 .. n-1
    rows = list(range(B))  # original row of each row still in the batch
    for step in range(max_new_tokens):
        if config.image_token_id >= 0:  # a text-only model has none (-1 would be the last token of the vocabulary)
            logits[:, config.image_token_id] = float("-inf")
        tokens = sample_next_token(logits, temperature, top_k, top_p, generator)  # (b,)
        token_list = tokens.tolist()
        yield dict(zip(rows, token_list))
        if step == max_new_tokens - 1:
            return
        keep = [i for i, token in enumerate(token_list) if token not in stop]
        if not keep:
            return
        if len(keep) < len(rows):  # drop finished rows from every per-row tensor and from the cache
            index = torch.tensor(keep, device=device)
            cache.keep_rows(index)
            tokens, next_position = tokens[index], next_position[index]
            key_is_real = None if key_is_real is None else key_is_real[index]
            rows = [rows[i] for i in keep]
        logits = decode_step(model, tokens, next_position, cache, key_is_real)
        next_position = next_position + 1


def _stream_static(model: VLM, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                   stop: set[int], decode: str, sampling: tuple,
                   prefix_mask: torch.Tensor | None = None) -> Iterator[dict[int, int]]:
    """stream's loop over a StaticKVCache: all rows (padded to the bucket) decode every step; a finished row's
    tokens are no longer yielded."""
    config = model.config
    B, T = attention_mask.shape
    device = embeds.device
    rows_bucket, length = static_shapes(B, T + max_new_tokens, config.lm.max_seq_len, compiled=decode == "compiled")
    cache = StaticKVCache(config.lm, rows_bucket, length, embeds.dtype, device)  # marked before the first step
    logits = prefill(model, embeds, attention_mask, cache, prefix_mask)  # (B, V): the real rows only
    key_is_real = torch.ones(rows_bucket, length, dtype=torch.bool, device=device)
    key_is_real[:, :T] = False  # padded rows see only their own decode slots
    key_is_real[:B, :T] = attention_mask.bool()
    next_position = torch.zeros(rows_bucket, dtype=torch.long, device=device)
    next_position[:B] = attention_mask.long().sum(-1)
    tokens = torch.zeros(rows_bucket, dtype=torch.long, device=device)
    step_fn = static_decode_step
    alive = list(range(B))
    for step in range(max_new_tokens):
        logits = logits[:B].clone()  # a compiled CUDA-graph step reuses its output buffer
        if config.image_token_id >= 0:  # a text-only model has none (-1 would be the last token of the vocabulary)
            logits[:, config.image_token_id] = float("-inf")
        chosen = sample_next_token(logits, *sampling)  # (B,)
        token_list = chosen.tolist()
        yield {row: token_list[row] for row in alive}
        alive = [row for row in alive if token_list[row] not in stop]
        if step == max_new_tokens - 1 or not alive:
            return
        tokens[:B] = chosen
        cache.slot.fill_(T + step)
        if step == 0 and decode == "compiled":  # after the first token: torch.compile's import takes seconds
            cache.mark_static()
            step_fn = compiled_decode_step(device)
        logits = step_fn(model, tokens, next_position, cache, key_is_real)
        next_position += 1


def prefill(model: VLM, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache,
            prefix_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the prompt embeddings (B, T, dim) through the LM into an empty cache; logits of the last position (B, V).

    Positions count real tokens only (left pads don't shift the prompt); in prefix mode the prefix is prefix_mask's
    (the processor's: the turns before the first answer, so a conversation with history is read as in training),
    or the whole prompt without one.
    """
    T = embeds.size(1)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    if model.config.attention != "prefix":
        prefix_mask = None
    else:
        prefix_mask = attention_mask.bool() if prefix_mask is None else prefix_mask.bool() & attention_mask.bool()
    mask = build_attention_mask(T, attention_mask, prefix_mask=prefix_mask)
    hidden = model.lm(embeds, position_ids, attn_mask=mask, is_causal=mask is None, kv_cache=cache)
    return model.lm.logits(hidden[:, -1])  # only the last position goes through the head


def decode_step(
    model: VLM,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    key_is_real: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feed one token per row (b,) at rotary positions (b,); logits for the next token (b, V).

    key_is_real (b, >= cache.length + 1) marks the cached keys that are real tokens (None: all are), so a
    decode step builds no mask beyond slicing it: decoded tokens see every real earlier token.
    """
    step_mask = None if key_is_real is None else key_is_real[:, None, None, : cache.length + 1]  # (b, 1, 1, S)
    embeds = model.lm.embed_tokens(tokens[:, None])  # (b, 1, dim)
    hidden = model.lm(embeds, positions[:, None], attn_mask=step_mask, is_causal=False, kv_cache=cache)
    return model.lm.logits(hidden[:, -1])  # (b, V)


def generate(
    model: VLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_counts: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] | None = None,
    seed: int | None = None,
    decode: str = "eager",
) -> list[list[int]]:
    """The new tokens of each row, without the stop token that ended it. Arguments as in `stream`."""
    stop = set(model.config.eos_token_ids if stop_ids is None else stop_ids)
    steps = stream(
        model, input_ids, attention_mask, pixel_values, image_counts, prefix_mask, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, seed=seed, decode=decode,
    )
    new_tokens: list[list[int]] = [[] for _ in range(input_ids.size(0))]
    for step in steps:
        for row, token in step.items():
            new_tokens[row].append(token)
    return [tokens[:-1] if tokens and tokens[-1] in stop else tokens for tokens in new_tokens]
