"""Masked-LM samples: which tokens are masked and how (BERT's 80/10/10), reproducibly; the objective of a source;
and how an MLM sample travels in a batch (its targets, its bidirectional tokens, packed beside causal samples)."""

from __future__ import annotations

import random

import pytest

from data_pipelines.batching import collate, pack
from data_pipelines.chat.special_tokens import MASK
from data_pipelines.chat.tokenizer import add_mask_token, train_tokenizer
from data_pipelines.masking import mask_candidates, mask_sample
from data_pipelines.processor import EncodedSample
from data_pipelines.read.loader import Source

IGNORE = -100
SPECIAL = {0, 1, 2}
MASK_ID = 3


def _text(length: int, first: int = 10) -> EncodedSample:
    ids = list(range(first, first + length))
    return EncodedSample(ids, list(ids), None, 0, "text")


def test_masking_repeats_with_the_same_seed_and_differs_with_another():
    sample = _text(200)
    first = mask_sample(sample, 0.15, MASK_ID, 1000, SPECIAL, random.Random("7"))
    assert first == mask_sample(sample, 0.15, MASK_ID, 1000, SPECIAL, random.Random("7"))
    assert first != mask_sample(sample, 0.15, MASK_ID, 1000, SPECIAL, random.Random("8"))
    assert first.objective == "mlm" and sample.objective == "causal"


def test_masking_hides_the_rate_of_tokens_replaced_80_10_10_and_labels_only_them():
    sample = _text(20000)
    masked = mask_sample(sample, 0.15, MASK_ID, 100000, SPECIAL, random.Random(0))
    chosen = [i for i, label in enumerate(masked.labels) if label != IGNORE]
    assert 0.14 < len(chosen) / len(sample) < 0.16
    assert all(masked.labels[i] == sample.input_ids[i] for i in chosen)
    unchosen = set(range(len(sample))) - set(chosen)
    assert all(masked.input_ids[i] == sample.input_ids[i] for i in unchosen)
    as_mask = sum(masked.input_ids[i] == MASK_ID for i in chosen) / len(chosen)
    kept = sum(masked.input_ids[i] == sample.input_ids[i] for i in chosen) / len(chosen)
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(1 - as_mask - kept - 0.1) < 0.02
    assert not SPECIAL & {masked.input_ids[i] for i in chosen}  # random replacements are ordinary tokens


def test_only_supervised_ordinary_tokens_are_masked_never_the_last():
    ids = [0, 11, 12, 1, 13, 14, 2]  # specials at 0, 3, 6
    labels = [IGNORE, IGNORE, 12, 1, 13, 14, 2]  # a prompt of two tokens
    sample = EncodedSample(ids, labels, None, 2, "caption")
    assert mask_candidates(sample, SPECIAL) == [2, 4, 5]
    for seed in range(30):
        masked = mask_sample(sample, 0.5, MASK_ID, 50, SPECIAL, random.Random(seed))
        hidden = {i for i, label in enumerate(masked.labels) if label != IGNORE}
        assert hidden and hidden <= {2, 4, 5}


def test_an_mlm_batch_holds_each_target_one_slot_right_and_marks_its_tokens_bidirectional():
    causal = _text(4, 100)
    mlm = EncodedSample([200, MASK_ID, 202, 203], [IGNORE, 201, IGNORE, IGNORE], None, 0, "caption", "mlm")
    batch = collate([causal, mlm], pad_id=0)
    # position t is trained to predict labels[t + 1]: the next token, or the hidden token at t itself
    assert batch["labels"].tolist() == [[IGNORE, 101, 102, 103], [IGNORE, IGNORE, 201, IGNORE]]
    assert batch["bidirectional"].tolist() == [[False] * 4, [True] * 4]
    assert batch["kinds"] == ["text", "mlm"]
    assert "bidirectional" not in collate([causal], pad_id=0)
    packed = pack([mlm, causal], max_length=8, pad_id=0)
    assert packed["labels"].tolist() == [[IGNORE, IGNORE, 201, IGNORE, IGNORE, 101, 102, 103]]
    assert packed["bidirectional"].tolist() == [[True] * 4 + [False] * 4]
    assert packed["segment_kinds"] == [["mlm", "text"]]


@pytest.mark.parametrize(("spec", "phrase"), [
    ({"kind": "caption", "path": "p", "objective": "bert"}, "objective 'bert' is not one a caption source can take"),
    ({"kind": "text", "path": "p", "objective": 1}, "objective 1"),
    ({"kind": "chat", "path": "p", "objective": "mlm", "single_turn": 0.5}, "single_turn"),
])
def test_a_bad_objective_is_refused_naming_it(spec, phrase):
    with pytest.raises(ValueError, match=phrase):
        Source.of(spec)


def test_every_kind_takes_mlm_and_causal_is_the_default():
    assert Source.of({"kind": "text", "path": "p"}).objective == "causal"
    assert {Source.of({"kind": k, "path": "p", "objective": "mlm"}).objective
            for k in ("caption", "chat", "text")} == {"mlm"}


def test_the_mask_token_is_added_once_when_missing():
    tokenizer = train_tokenizer(["a red circle", "a blue square"] * 5, vocab_size=280)
    assert tokenizer.token_to_id(MASK) is None
    assert add_mask_token(tokenizer) and not add_mask_token(tokenizer)
    mask_id = tokenizer.token_to_id(MASK)
    assert tokenizer.decode([mask_id]) == ""  # special: skipped by decode
    assert mask_id not in tokenizer.encode("a <mask> circle").ids  # typed text never forges it
