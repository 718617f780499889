"""Text metrics: hand-computed values and a recomputation from torch cross-entropy."""

import math

import pytest
import torch

from mmllm.evaluation.text_metrics import (
    TextNLLTotals,
    bits_per_byte,
    perplexity,
    text_scores,
    utf8_byte_count,
)


def test_hand_computed_loss_perplexity_and_bits_per_byte():
    # 4 tokens each with probability 1/4: NLL 4 * ln 4 = 8 ln 2 nats = 8 bits, over 8 bytes
    scores = text_scores(total_nll=8 * math.log(2), total_tokens=4, total_bytes=8)
    assert scores.loss == pytest.approx(math.log(4))
    assert scores.perplexity == pytest.approx(4.0)
    assert scores.bits_per_byte == pytest.approx(1.0)


def test_bits_per_byte_counts_utf8_bytes_not_characters():
    assert utf8_byte_count("héllo") == 6
    assert utf8_byte_count("猫") == 3
    # 3 bits of NLL over "héllo": 3 / 6 bits per byte, where 5 characters would give 0.6
    assert bits_per_byte(3 * math.log(2), utf8_byte_count("héllo")) == pytest.approx(0.5)


def test_perplexity_of_uniform_model_is_vocabulary_size():
    vocab, tokens = 50, 7
    assert perplexity(tokens * math.log(vocab), tokens) == pytest.approx(vocab)


def test_perplexity_of_diverged_model_is_infinite_not_an_error():
    assert perplexity(1e6, 1) == math.inf


def test_totals_weigh_texts_by_tokens_and_match_torch_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    texts = ["a short one", "a rather longer text with more tokens in it", "ünïcödé"]
    lengths = [3, 11, 5]
    totals = TextNLLTotals()
    all_logits, all_targets = [], []
    for text, length in zip(texts, lengths):
        logits = torch.randn(length, 17, generator=generator)
        targets = torch.randint(0, 17, (length,), generator=generator)
        totals.add(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), length, text)
        all_logits.append(logits)
        all_targets.append(targets)
    scores = totals.scores()

    mean_nll = torch.nn.functional.cross_entropy(torch.cat(all_logits), torch.cat(all_targets)).item()
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert scores.tokens == sum(lengths) and scores.bytes == total_bytes and scores.count == 3
    assert scores.loss == pytest.approx(mean_nll, rel=1e-6)
    assert scores.perplexity == pytest.approx(math.exp(mean_nll), rel=1e-6)
    assert scores.bits_per_byte == pytest.approx(mean_nll * sum(lengths) / math.log(2) / total_bytes, rel=1e-6)


def test_scoring_nothing_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        TextNLLTotals().scores()
    with pytest.raises(ValueError, match="at least one byte"):
        bits_per_byte(1.0, 0)
