"""Sequence-to-sequence metrics: chrF and BLEU from sacrebleu, ROUGE-L from rouge-score, and exact match.

sacrebleu is the field's reference implementation for machine translation (its defaults are the reported
signatures: chrF2 with character 6-grams, BLEU with the 13a tokenizer); rouge-score is Google's reimplementation
of ROUGE used for summarisation papers. Both are imported only when seq2seq outputs are scored (`mmllm[eval]`).
- chrF and BLEU are corpus scores over the whole set (0-100), as sacrebleu reports them.
- ROUGE-L is the mean over samples of the F-measure of the longest common subsequence (0-1; rouge-score's
  tokenizer: lowercase, runs of [a-z0-9], no stemming), as rouge-score's aggregation reports it.
- Exact match: prediction and reference equal once surrounding whitespace is removed and inner runs collapsed.
Per sample, sentence-level chrF finds the worst cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from mmllm.errors import UsageError

WORST_CASES = 5  # samples shown in the report, lowest sentence chrF first


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise UsageError("seq2seq scores need sacrebleu: pip install 'mmllm[eval]'") from None
    return sacrebleu


def _rouge_l_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UsageError("seq2seq scores need rouge-score: pip install 'mmllm[eval]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _normalised(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return _normalised(prediction) == _normalised(reference)


@dataclass
class Seq2SeqScores:
    chrf: float  # corpus chrF2, 0-100
    bleu: float  # corpus BLEU-4, 0-100
    rouge_l: float  # mean ROUGE-L F-measure, 0-1
    exact_match: float  # fraction
    count: int
    signatures: dict  # sacrebleu's signatures of the two corpus scores: how to reproduce them

    def to_dict(self) -> dict:
        return asdict(self)


def sample_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict]:
    """Per sample: sentence chrF (0-100), ROUGE-L F-measure (0-1) and exact match."""
    sacrebleu, scorer = _sacrebleu(), _rouge_l_scorer()
    return [{"chrf": round(sacrebleu.sentence_chrf(p, [r]).score, 4),
             "rouge_l": round(scorer.score(r, p)["rougeL"].fmeasure, 4),
             "exact_match": exact_match(p, r)} for p, r in zip(predictions, references)]


def seq2seq_scores(predictions: Sequence[str], references: Sequence[str]) -> Seq2SeqScores:
    """Corpus chrF and BLEU, mean ROUGE-L and exact match of predictions against one reference each."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    sacrebleu, scorer = _sacrebleu(), _rouge_l_scorer()
    chrf = sacrebleu.metrics.CHRF()
    bleu = sacrebleu.metrics.BLEU()
    predictions, references = list(predictions), list(references)
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return Seq2SeqScores(
        chrf=chrf.corpus_score(predictions, [references]).score,
        bleu=bleu.corpus_score(predictions, [references]).score,
        rouge_l=sum(rouge) / len(rouge),
        exact_match=sum(exact_match(p, r) for p, r in zip(predictions, references)) / len(predictions),
        count=len(predictions),
        signatures={"chrf": str(chrf.get_signature()), "bleu": str(bleu.get_signature())},
    )


def worst_cases(samples: Sequence[dict], n: int = WORST_CASES) -> list[dict]:
    """The n samples with the lowest sentence chrF (ties: the earlier first)."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i]["chrf"], i))
    return [samples[i] for i in order[:n]]


def require_scorers() -> None:
    """UsageError in one line, before any generation, when sacrebleu or rouge-score is missing."""
    _sacrebleu()
    _rouge_l_scorer()
