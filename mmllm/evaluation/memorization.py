"""What a model repeats of its training data: verbatim regurgitation against held-out data, and canary exposure.

Verbatim regurgitation: the share of training samples whose text greedy decoding reproduces exactly (a caption
from its image; a chat's first answer from its first question), beside the same share on held-out samples of the
same distribution. A model that captions well reproduces held-out captions too, so only the gap is memorisation.

Canary exposure (Carlini et al. 2019): each secret written into the training text (data_pipelines.privacy.canaries) is
scored, in the context of a sample that carried it, against R random secrets of the same format: the rank r of
the true secret among the R + 1 by the model's log-likelihood gives exposure = log2(R + 1) - log2(r) bits. A model
that never saw the secret ranks it uniformly, about log2(e) = 1.44 bits on average; one that memorised it ranks it
first, log2(R + 1) bits, the most this R can show.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from data_pipelines.batching import collate
from data_pipelines.privacy.canaries import CanaryManifest, random_secret
from data_pipelines.read.shards import Sample

UNSEEN_MEAN_EXPOSURE = math.log2(math.e)  # what a secret the model never saw shows on average, for large R


def rank(true_score: float, candidate_scores: Sequence[float]) -> float:
    """The true secret's rank among itself and the candidates, higher score = likelier; a tie counts half against
    it (rank = 1 + better + ties / 2)."""
    better = sum(score > true_score for score in candidate_scores)
    ties = sum(score == true_score for score in candidate_scores)
    return 1 + better + ties / 2


def exposure(true_score: float, candidate_scores: Sequence[float]) -> float:
    """log2(R + 1) - log2(rank) of the true secret among itself and R candidates.

    With ties counted half, a model that scores everything alike shows log2(R + 1) - log2(1 + R / 2), about 1 bit,
    not the full log2(R + 1).
    """
    return math.log2(len(candidate_scores) + 1) - math.log2(rank(true_score, candidate_scores))


def normalise_text(text: str) -> str:
    """Case, spacing and final punctuation do not make a reproduction less verbatim."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .!?")


def verbatim_share(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not predictions:
        raise ValueError("no samples to compare")
    return sum(normalise_text(p) == normalise_text(r) for p, r in zip(predictions, references)) / len(predictions)


@torch.no_grad()
def sample_log_likelihoods(vlm, samples: Sequence[Sample], batch_size: int = 32) -> list[float]:
    """Log-likelihood (nats) of each sample's trained tokens under the model, as training encodes them (images
    decoded as the loader does)."""
    processor, scores = vlm.processor, []
    for start in range(0, len(samples), batch_size):
        encoded = [processor.encode_sample(sample) for sample in samples[start:start + batch_size]]
        batch = collate(encoded, pad_id=vlm.config.pad_token_id, padding_side="right")
        inputs = vlm._model_inputs(batch)
        output = vlm.model(**inputs, labels=batch["labels"].to(vlm.device))
        scores += (-output.token_losses.double().sum(dim=1)).tolist()
    return scores


def with_secret(sample: Sample, sentence: str, replacement: str) -> Sample:
    """The sample with its canary sentence replaced by another (the same place in its text)."""
    if sample.kind == "text":
        if sentence not in sample.text:
            raise ValueError(f"sample {sample.key} does not carry the canary {sentence!r}")
        return replace(sample, text=sample.text.replace(sentence, replacement))
    turns = [dict(turn) for turn in sample.conversation]
    for turn in reversed(turns):
        if turn["role"] == "assistant" and sentence in turn["content"]:
            turn["content"] = turn["content"].replace(sentence, replacement)
            return replace(sample, conversation=turns)
    raise ValueError(f"sample {sample.key} does not carry the canary {sentence!r}")


@dataclass
class CanaryExposure:
    secret: str
    repeats: int
    exposure: float  # bits
    rank: float  # of the true secret among candidates + 1 (ties count half)


def canary_exposures(vlm, manifest: CanaryManifest, carriers: dict[str, Sample], candidates: int = 255,
                     seed: int = 0, batch_size: int = 32) -> list[CanaryExposure]:
    """The exposure of each canary in the context of the first sample that carried it.

    carriers: key -> the training sample with that key (images decoded), as read back from the canary shards.
    """
    if candidates < 1:
        raise ValueError("exposure needs at least one candidate secret")
    rng = random.Random(seed)
    space = 10 ** manifest.digits
    if candidates >= space:
        raise ValueError(f"{candidates} candidates but only {space} secrets of {manifest.digits} digits")
    results = []
    for canary in manifest.canaries:
        key = next((key for key in canary.keys if key in carriers), None)
        if key is None:
            raise ValueError(f"no sample carrying the canary {canary.secret!r} was found in the training shards")
        others: set[str] = set()
        while len(others) < candidates:
            secret = random_secret(manifest.digits, rng)
            if secret != canary.secret:
                others.add(secret)
        sentence = manifest.sentence(canary.secret)
        variants = [with_secret(carriers[key], sentence, manifest.sentence(s)) for s in [canary.secret, *sorted(others)]]
        true_score, *other_scores = sample_log_likelihoods(vlm, variants, batch_size)
        results.append(CanaryExposure(canary.secret, canary.repeats, exposure(true_score, other_scores),
                                      rank(true_score, other_scores)))
    return results


def exposure_by_repeats(results: Sequence[CanaryExposure]) -> dict[int, dict[str, float]]:
    """repeats -> {mean, max exposure in bits, canaries}."""
    grouped: dict[int, list[float]] = {}
    for result in results:
        grouped.setdefault(result.repeats, []).append(result.exposure)
    return {count: {"mean_bits": sum(v) / len(v), "max_bits": max(v), "canaries": len(v)}
            for count, v in sorted(grouped.items())}


# ---- verbatim regurgitation ---------------------------------------------------------------------------------

PROMPT_WORDS = 16  # text: the model continues a document's first words ...
TARGET_WORDS = 16  # ... and counts as verbatim when its next words are the document's


def reproductions(vlm, samples: Sequence[Sample], max_new_tokens: int = 48, batch_size: int = 16
                  ) -> tuple[list[str], list[str]]:
    """(what greedy decoding produced, what the sample says) for each sample: a caption from its image, a chat's
    first answer from its first question, a document's next TARGET_WORDS words from its first PROMPT_WORDS."""
    if not samples:
        return [], []
    kind = samples[0].kind
    greedy = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "batch_size": batch_size}
    if kind == "caption":
        references = [next(t["content"] for t in s.conversation if t["role"] == "assistant") for s in samples]
        return vlm.caption([s.images[0] for s in samples], **greedy), references
    if kind == "chat":
        firsts = [_first_exchange(s) for s in samples]
        questions = [question for question, _ in firsts]
        images = [s.images[0] if s.images else None for s in samples]
        return vlm.ask_many(images, questions, **greedy), [answer for _, answer in firsts]
    words = [s.text.split() for s in samples]
    prompts = [" ".join(w[:PROMPT_WORDS]) for w in words]
    references = [" ".join(w[PROMPT_WORDS:PROMPT_WORDS + TARGET_WORDS]) for w in words]
    continued = vlm.generate(prompts, **greedy)
    return [" ".join(c.split()[:TARGET_WORDS]) for c in continued], references


def _first_exchange(sample: Sample) -> tuple[str, str]:
    """The first user question (its image marker removed) and the answer to it."""
    from data_pipelines.chat.special_tokens import IMAGE_MARKER

    turns = sample.conversation
    user = next(i for i, t in enumerate(turns) if t["role"] == "user")
    answer = next(t["content"] for t in turns[user + 1:] if t["role"] == "assistant")
    return turns[user]["content"].replace(IMAGE_MARKER, "").strip(), answer


def long_enough(sample: Sample) -> bool:
    """Whether a sample can be tested for regurgitation (a document needs its prompt and target words; a chat an
    answered question)."""
    if sample.kind == "text":
        return len(sample.text.split()) >= PROMPT_WORDS + TARGET_WORDS
    if sample.kind == "chat":
        roles = [t["role"] for t in sample.conversation]
        return "user" in roles and "assistant" in roles[roles.index("user"):]
    return True
