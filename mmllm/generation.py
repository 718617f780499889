"""Text generation with a KV cache: prefill the (left-padded) prompt batch once, then decode token by token.

- `KVCache`: per-layer key/value tensors (B, n_kv_heads, max_len, head_dim) allocated once, written in place.
- `stream(...)`: a generator yielding `{row: token_id}` at each step for the rows still generating.
- `generate(...)`: runs `stream` and returns the new tokens of each row (stop token removed).

Images are encoded once, in prefill. Rows that produce a stop id are removed from the batch (and from the
cache), so finished rows cost nothing. In prefix mode the prompt is the prefix: prefill attends
bidirectionally over it and decoded tokens are causal, which is exactly what full recomputation with
prefix_mask = prompt does, since prompt positions never attend to later tokens.
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
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] | None = None,
    seed: int | None = None,
) -> Iterator[dict[int, int]]:
    """Yield {row: new token id} once per decoding step, for the rows still generating.

    input_ids (B, T) is LEFT-padded (attention_mask 1 on real tokens, last column real in every row).
    A row's last yield is its stop token (config.eos_token_ids unless stop_ids is given) or its
    max_new_tokens-th token; generation also ends at lm.max_seq_len. seed makes sampling reproducible.
    The image placeholder id is never generated.
    """
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
    cache = KVCache(config.lm, B, T + max_new_tokens, dtype=dtype, device=device)
    logits = prefill(model, embeds, attention_mask, cache)  # (B, V)

    # Left-padding keys stay hidden through key_is_real; without padding no decode mask is needed at all.
    key_is_real = None
    if not bool(attention_mask.all()):
        key_is_real = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=device)
        key_is_real[:, :T] = attention_mask.bool()
    next_position = attention_mask.long().sum(-1)  # (B,): real prompt tokens are at 0 .. n-1
    rows = list(range(B))  # original row of each row still in the batch
    for step in range(max_new_tokens):
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


def prefill(model: VLM, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the prompt embeddings (B, T, dim) through the LM into an empty cache; logits of the last position (B, V).

    Positions count real tokens only (left pads don't shift the prompt); in prefix mode the prompt is the prefix.
    """
    T = embeds.size(1)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    prefix_mask = attention_mask.bool() if model.config.attention == "prefix" else None
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
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """The new tokens of each row, without the stop token that ended it. Arguments as in `stream`."""
    stop = set(model.config.eos_token_ids if stop_ids is None else stop_ids)
    steps = stream(
        model, input_ids, attention_mask, pixel_values, image_counts, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, seed=seed,
    )
    new_tokens: list[list[int]] = [[] for _ in range(input_ids.size(0))]
    for step in steps:
        for row, token in step.items():
            new_tokens[row].append(token)
    return [tokens[:-1] if tokens and tokens[-1] in stop else tokens for tokens in new_tokens]
