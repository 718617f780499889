"""Language-modelling metrics from summed token negative log-likelihood: loss, perplexity, bits per byte.

All three come from running totals, never from averaging per-batch means, so batches of different sizes
weigh by their tokens:
- loss = total_nll / total_tokens (nats per token);
- perplexity = exp(loss);
- bits per byte = total_nll / (ln 2 * total_bytes), where total_bytes counts the UTF-8 bytes of the scored
  texts. Unlike the other two it does not depend on the tokenizer, so models with different vocabularies
  compare on it. The NLL summed is whatever tokens the caller scores (a text sample's tokens and its
  <|endoftext|>), while the bytes are those of the text alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def utf8_byte_count(text: str) -> int:
    """Bytes of the text in UTF-8: "héllo" is 6."""
    return len(text.encode("utf-8"))


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean NLL per token); inf when the mean is too large for a float (a diverged model)."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nll: float, total_bytes: int) -> float:
    """Summed NLL in nats converted to bits, per UTF-8 byte of the text."""
    if total_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return total_nll / (math.log(2) * total_bytes)


@dataclass
class TextScores:
    """Loss (nats per token), perplexity and bits per byte, with the totals they came from."""

    loss: float
    perplexity: float
    bits_per_byte: float
    total_nll: float
    tokens: int
    bytes: int
    count: int  # texts scored

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "total_nll": self.total_nll,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "count": self.count,
        }


def text_scores(total_nll: float, total_tokens: int, total_bytes: int, count: int = 0) -> TextScores:
    """All three metrics from the totals: NLL in nats summed over total_tokens tokens of total_bytes bytes."""
    if total_tokens <= 0:
        raise ValueError("no tokens to score")
    return TextScores(
        loss=total_nll / total_tokens,
        perplexity=perplexity(total_nll, total_tokens),
        bits_per_byte=bits_per_byte(total_nll, total_bytes),
        total_nll=total_nll,
        tokens=total_tokens,
        bytes=total_bytes,
        count=count,
    )


class TextNLLTotals:
    """Running totals over an evaluation set: add each text's summed NLL, token count and text."""

    def __init__(self) -> None:
        self.total_nll = 0.0
        self.tokens = 0
        self.bytes = 0
        self.count = 0

    def add(self, nll: float, tokens: int, text: str) -> None:
        """One text: the NLL in nats summed over its `tokens` scored tokens (a float or 0-d tensor)."""
        self.total_nll += float(nll)
        self.tokens += int(tokens)
        self.bytes += utf8_byte_count(text)
        self.count += 1

    def scores(self) -> TextScores:
        return text_scores(self.total_nll, self.tokens, self.bytes, count=self.count)
