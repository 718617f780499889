"""Masked language modelling (BERT, Devlin et al. 2019): an encoded sample -> the same sample with some of its text
tokens hidden, to be predicted at their own positions with bidirectional attention over the whole sample.

Dynamic masking, as RoBERTa (Liu et al. 2019): the loader masks each sample anew every time it reads it, with the
RNG of its stream (seeded from seed, epoch, slot and pass), so a run repeats exactly and each pass masks differently.

Which tokens: the ones the causal objective would learn (labels not -100: the whole document of a text sample,
the answers of a chat, the caption of a caption sample), less special tokens (image, turn and end tokens) and the
sample's last token, each with probability `rate`, at least one per sample. A chosen token becomes `<mask>` 80% of
the time, a random ordinary token 10%, and stays itself 10%; its label is the original token, every other label
-100. The last token is never chosen so that a packed row's next sample starts with a free label slot (see
batching: an MLM sample's targets travel in the batch's labels one position to the right, as causal ones do).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Collection

from data_pipelines.chat.conversation import IGNORE_INDEX, NoSupervisedTokens
from data_pipelines.processor import EncodedSample

DEFAULT_RATE = 0.15
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the rest (10%) stay as they are


def mask_candidates(sample: EncodedSample, special_ids: Collection[int]) -> list[int]:
    """Positions that may be masked: supervised, not special, not the last token."""
    last = len(sample.input_ids) - 1
    return [i for i, (token, label) in enumerate(zip(sample.input_ids, sample.labels))
            if label != IGNORE_INDEX and token not in special_ids and i < last]


def mask_sample(sample: EncodedSample, rate: float, mask_id: int, vocab_size: int, special_ids: Collection[int],
                rng: random.Random) -> EncodedSample:
    """The sample with `rate` of its candidate tokens chosen and replaced 80/10/10 (see the module docstring);
    objective "mlm". NoSupervisedTokens when it has no candidate (nothing to predict)."""
    candidates = mask_candidates(sample, special_ids)
    if not candidates:
        raise NoSupervisedTokens("no text token to mask: the sample has nothing to predict under the MLM objective")
    chosen = [i for i in candidates if rng.random() < rate] or [rng.choice(candidates)]
    input_ids = list(sample.input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    for position in chosen:
        labels[position] = input_ids[position]
        draw = rng.random()
        if draw < MASK_SHARE:
            input_ids[position] = mask_id
        elif draw < MASK_SHARE + RANDOM_SHARE:
            input_ids[position] = random_ordinary_token(vocab_size, special_ids, rng)
    return replace(sample, input_ids=input_ids, labels=labels, objective="mlm")


def random_ordinary_token(vocab_size: int, special_ids: Collection[int], rng: random.Random) -> int:
    """A token id drawn uniformly from the vocabulary, special tokens excluded."""
    while True:
        token = rng.randrange(vocab_size)
        if token not in special_ids:
            return token


def check_rate(rate: float) -> float:
    """The masking rate, or ValueError when it is not a fraction in (0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ValueError(f"model.mlm.rate is the fraction of text tokens masked, in (0, 1); got {rate!r}")
    return float(rate)
