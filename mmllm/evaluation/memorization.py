"""What a model repeats of its training data: verbatim regurgitation against held-out data, and canary exposure.

Verbatim regurgitation: the share of training samples whose text greedy decoding reproduces exactly (a caption
from its image; a chat's first answer from its first question), beside the same share on held-out samples of the
same distribution. A model that captions well reproduces held-out captions too, so only the gap is memorisation.

Canary exposure (Carlini et al. 2019): each secret written into the training text (data_pipelines.privacy.canaries) is
scored, in the context of a sample that carried it, against R random secrets of the same format: the rank r of
the true secret among the R + 1 by the model's log-likelihood gives exposure = log2(R + 1) - log2(r) bits. One
that memorised it ranks it first, log2(R + 1) bits, the most this R can show. What a secret the model never saw
shows is not the uniform ranking's log2(e) = 1.44 bits on average: a model prefers some digits over others in
some contexts, so a random secret can rank first by chance (an 8-bit maximum in a clean run was measured). So
each carrier context also ranks control secrets, drawn the same way but never written into the data, and a
repetition count's exposure is read against the controls': its mean with a bootstrap interval beside the
controls', and, comparing ranks with ties counted, the share of controls ranked at or above each canary (about
0.5 when the model learnt nothing, near 0 when it memorised). Ties matter: exposure stops at log2(R + 1), so a
memorised canary can only tie the controls that rank first by chance, never beat them.
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

BOOTSTRAP_RESAMPLES = 2000


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
                     seed: int = 0, batch_size: int = 32, controls: int = 0) -> list[CanaryExposure]:
    """The exposure of each canary in the context of the first sample that carried it, then (repeats 0) that of
    `controls` control secrets per canary in the same context: secrets of the same format the data never held.

    carriers: key -> the training sample with that key (images decoded), as read back from the canary shards.
    """
    if candidates < 1:
        raise ValueError("exposure needs at least one candidate secret")
    rng = random.Random(seed)
    space = 10 ** manifest.digits
    real = frozenset(canary.secret for canary in manifest.canaries)
    # candidates avoid every real secret; the controls must be distinct from them and from each other
    if candidates + len(real) >= space or len(real) * (1 + controls) > space:
        raise ValueError(f"{candidates} candidates and {controls} controls per canary but only {space} secrets of "
                         f"{manifest.digits} digits")
    written = set(real)
    results, control_results = [], []
    for canary in manifest.canaries:
        key = next((key for key in canary.keys if key in carriers), None)
        if key is None:
            raise ValueError(f"no sample carrying the canary {canary.secret!r} was found in the training shards")
        sentence = manifest.sentence(canary.secret)
        results.append(_ranked(vlm, manifest, carriers[key], sentence, canary.secret, canary.repeats, candidates,
                               rng, batch_size, real))
        for _ in range(controls):
            control = _fresh_secret(manifest.digits, rng, written)
            written.add(control)
            control_results.append(_ranked(vlm, manifest, carriers[key], sentence, control, 0, candidates, rng,
                                           batch_size, real))
    return results + control_results


def _fresh_secret(digits: int, rng: random.Random, avoid: set[str]) -> str:
    while True:
        secret = random_secret(digits, rng)
        if secret not in avoid:
            return secret


def _ranked(vlm, manifest: CanaryManifest, carrier: Sample, sentence: str, secret: str, repeats: int,
            candidates: int, rng: random.Random, batch_size: int, real: frozenset[str]) -> CanaryExposure:
    """`secret` in the carrier's canary sentence, ranked against `candidates` random others in the same place.

    No candidate is a real canary secret: in a carrier's context the model may have learnt its canary, which would
    then outrank a control for a reason the control does not share (and another canary's rank would hang on it).
    """
    others: set[str] = set()
    while len(others) < candidates:
        other = random_secret(manifest.digits, rng)
        if other != secret and other not in real:
            others.add(other)
    variants = [with_secret(carrier, sentence, manifest.sentence(s)) for s in [secret, *sorted(others)]]
    true_score, *other_scores = sample_log_likelihoods(vlm, variants, batch_size)
    return CanaryExposure(secret, repeats, exposure(true_score, other_scores), rank(true_score, other_scores))


def mean_interval(values: Sequence[float], seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean (one value: [v, v])."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(BOOTSTRAP_RESAMPLES))
    return [means[int(0.025 * BOOTSTRAP_RESAMPLES)], means[int(0.975 * BOOTSTRAP_RESAMPLES) - 1]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def controls_at_least_as_exposed(canary: CanaryExposure, control_ranks: Sequence[float]) -> float:
    """The share of controls ranked at or above the canary (control rank <= canary rank): a tie counts as at least
    as exposed, so a canary that only ties the controls never reads as memorised."""
    return sum(rank <= canary.rank for rank in control_ranks) / len(control_ranks)


def exposure_by_repeats(results: Sequence[CanaryExposure]) -> dict[int, dict[str, float]]:
    """repeats -> {mean exposure in bits, its 95% interval, max, canaries}; repeats 0 is the controls' own row (with
    their 95th percentile of exposure, for reference), and beside controls each count's row also has

    p_control_at_least_as_exposed: the mean over the count's canaries of `controls_at_least_as_exposed`, with a 95%
    bootstrap interval over the canaries. About 0.5 (a little more with ties) when the canaries are no more exposed
    than secrets never written; near 0 when they rank first and the controls do not; 1.0 when everything ties.
    reads_as_memorised: that interval lies below 0.5.

    Ranks with ties counted, not "above the controls' 95th percentile": exposure stops at log2(R + 1), so once more
    than 5% of the controls rank first by chance that percentile is the cap, and a memorised canary, which can only
    tie the cap, would read as not above it.
    """
    grouped: dict[int, list[CanaryExposure]] = {}
    for result in results:
        grouped.setdefault(result.repeats, []).append(result)
    rows = {}
    for count, group in sorted(grouped.items()):
        bits = [r.exposure for r in group]
        rows[count] = {"mean_bits": sum(bits) / len(bits), "ci95": mean_interval(bits), "max_bits": max(bits),
                       "canaries": len(bits)}
    if 0 in grouped:
        control_ranks = [r.rank for r in grouped[0]]
        rows[0]["p95_bits"] = percentile([r.exposure for r in grouped[0]], 0.95)
        for count, group in grouped.items():
            if count:
                shares = [controls_at_least_as_exposed(r, control_ranks) for r in group]
                rows[count]["p_control_at_least_as_exposed"] = sum(shares) / len(shares)
                rows[count]["p_control_at_least_as_exposed_ci95"] = interval = mean_interval(shares)
                # below 0.5 with 95% confidence; with ties counted against the canary, chance sits at 0.5 or above
                rows[count]["reads_as_memorised"] = interval[1] < 0.5
    return rows


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
