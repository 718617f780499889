"""model.loss_weighting against hand-computed weightings: per token, per sample (packed segments too), per sqrt."""

from __future__ import annotations

import math

import pytest
import torch

from mmllm.model.vlm import shifted_cross_entropy
from mmllm.train.loss_weighting import weighted_loss

# Two rows; targets are labels[:, 1:]. Row 0 supervises 3 targets, row 1 one.
LABELS = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, -100, 9, -100]])
LOSSES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 8.0, 0.0]])  # (B, T-1), 0 where unsupervised


def test_token_weighting_is_the_models_own_mean():
    logits = torch.randn(2, 5, 12)
    labels = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, -100, 9, 3]])
    loss, token_losses = shifted_cross_entropy(logits, labels)
    torch.testing.assert_close(weighted_loss(token_losses, labels, None, "token"), loss)


def test_sample_weighting_is_the_mean_of_each_samples_mean():
    assert float(weighted_loss(LOSSES, LABELS, None, "sample")) == pytest.approx(((1 + 2 + 3) / 3 + 8) / 2)
    assert float(weighted_loss(LOSSES, LABELS, None, "token")) == pytest.approx((1 + 2 + 3 + 8) / 4)


def test_sqrt_weighting_weighs_each_token_by_its_samples_length():
    w0, w1 = 1 / math.sqrt(3), 1.0
    expected = (w0 * (1 + 2 + 3) + w1 * 8) / (3 * w0 + w1)
    assert float(weighted_loss(LOSSES, LABELS, None, "sqrt")) == pytest.approx(expected)


def test_packed_segments_are_samples_of_their_own():
    # one row packing two samples: segment 1 supervises targets 1-2, segment 2 target 4; then padding
    labels = torch.tensor([[-100, 5, 6, -100, 7, -100]])
    segments = torch.tensor([[1, 1, 1, 2, 2, 0]])
    losses = torch.tensor([[2.0, 4.0, 0.0, 9.0, 0.0]], requires_grad=True)
    loss = weighted_loss(losses, labels, segments, "sample")
    assert float(loss) == pytest.approx(((2 + 4) / 2 + 9) / 2)
    loss.backward()
    torch.testing.assert_close(losses.grad, torch.tensor([[0.25, 0.25, 0.0, 0.5, 0.0]]))


def test_an_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="loss weighting"):
        weighted_loss(LOSSES, LABELS, None, "length")
