"""Caption metrics: corpus BLEU-4 and CIDEr-D from pycocoevalcap's pure-Python scorers, plus exact match.

pycocoevalcap is the package behind the COCO caption leaderboard; its `Cider` scorer is CIDEr-D (clipped
n-gram counts, Gaussian length penalty with sigma 6, x10). Its `PTBTokenizer` shells out to Java, so
captions are tokenised here by `tokenize_caption`, which reproduces what that tokenizer plus
pycocoevalcap's punctuation filter produce for plain captions:
- lowercase;
- clitics split off the word before them: "dog's" -> "dog 's", "don't" -> "do n't", "can't" -> "ca n't";
- numbers with separators ("3.5", "1,000", "10:30"), dotted abbreviations ("p.m.", "u.s.") and words
  joined by a hyphen, apostrophe or slash ("black-and-white", "o'clock", "and/or") stay one token;
- punctuation tokens are dropped (. , ? ! : ; - -- ... quotes and apostrophes); other symbols ($ % & # /)
  are tokens of their own.
Known differences from the Java tokenizer, all outside plain captions: brackets are dropped here (PTB
writes them as "-LRB-", which pycocoevalcap then fails to filter once lowercased), an abbreviation with one
period such as "mr." loses it, a hashtag splits ("# sale"), and British spellings are not americanised.

BLEU and CIDEr-D are corpus metrics: CIDEr-D's n-gram weights come from document frequencies over all
references passed in one call, so score the whole evaluation set at once (one image alone scores 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from mmllm.errors import UsageError

# a clitic splits off only after a word character; "n't" takes the "n" of the word before it ("do n't")
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(
    r"""
      (?:[^\W\d_]\.){2,}            # dotted abbreviations: "p.m.", "u.s."
    | \d+(?:[.,:]\d+)+              # numbers with separators: "3.5", "1,000", "10:30"
    | n't | '(?:s|re|ve|ll|d|m)\b   # clitics, already split off by _CLITIC
    | \w+(?:[-'/]\w+)*              # words: "dog", "black-and-white", "o'clock", "and/or"
    | \S                            # any other character is a token of its own
    """,
    re.VERBOSE,
)
# Tokens dropped after tokenisation: pycocoevalcap's PUNCTUATIONS, as single characters, plus brackets.
DROPPED_TOKENS = frozenset("'\"`.?!,:;-()[]{}")


def tokenize_caption(caption: str) -> str:
    """A caption as the COCO scorers see it: lowercased tokens joined by single spaces, no punctuation."""
    text = _CLITIC.sub(r" \1", caption.lower())
    return " ".join(token for token in _TOKEN.findall(text) if token not in DROPPED_TOKENS)


def caption_exact_match(hypothesis: str, references: Sequence[str]) -> bool:
    """True when the hypothesis equals any reference once both are tokenised (case, punctuation, spaces)."""
    tokens = tokenize_caption(hypothesis)
    return any(tokens == tokenize_caption(reference) for reference in references)


def _coco_scorers():
    """pycocoevalcap's Bleu and Cider classes, imported only when captions are scored."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as error:
        raise UsageError(
            "caption metrics need the pycocoevalcap package: pip install 'mmllm[eval]'"
        ) from error
    return Bleu, Cider


@dataclass
class CaptionScores:
    """Corpus caption metrics: BLEU-1..4 in [0, 1], CIDEr-D in [0, 10], exact-match rate in [0, 1]."""

    bleu: list[float]  # BLEU-1, BLEU-2, BLEU-3, BLEU-4
    cider_d: float
    exact_match: float
    count: int

    @property
    def bleu4(self) -> float:
        return self.bleu[3]

    def to_dict(self) -> dict:
        return {
            "bleu4": self.bleu4,
            "cider_d": self.cider_d,
            "exact_match": self.exact_match,
            "count": self.count,
            "bleu_1_to_4": list(self.bleu),
        }


def _single_hypothesis(key: Hashable, hypothesis: str | Sequence[str]) -> str:
    if isinstance(hypothesis, str):
        return hypothesis
    if len(hypothesis) != 1:
        raise ValueError(f"image {key!r} has {len(hypothesis)} hypotheses; caption metrics need exactly one")
    return hypothesis[0]


def caption_scores(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str | Sequence[str]],
) -> CaptionScores:
    """BLEU-4, CIDEr-D and exact match of {id: caption or [caption]} against {id: [reference captions]}."""
    if set(references) != set(hypotheses):
        missing = set(references) ^ set(hypotheses)
        raise ValueError(f"references and hypotheses must have the same ids; {len(missing)} differ")
    if len(references) == 0:
        raise ValueError("no captions to score")
    for key, captions in references.items():
        if isinstance(captions, str) or len(captions) == 0:
            raise ValueError(f"image {key!r} needs a list of at least one reference caption")

    Bleu, Cider = _coco_scorers()
    hypothesis_text = {key: _single_hypothesis(key, hypotheses[key]) for key in references}
    gts = {key: [tokenize_caption(c) for c in references[key]] for key in references}
    res = {key: [tokenize_caption(hypothesis_text[key])] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider_d, _ = Cider().compute_score(gts, res)
    # tokenised captions compare equal exactly when case, punctuation and spacing are all that differ
    exact = sum(res[key][0] in gts[key] for key in references)
    return CaptionScores(
        bleu=[float(b) for b in bleu],
        cider_d=float(cider_d),
        exact_match=exact / len(references),
        count=len(references),
    )
