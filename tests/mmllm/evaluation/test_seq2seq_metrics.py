"""The seq2seq scores are sacrebleu's and rouge-score's own, on fixed strings (no model)."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from mmllm.evaluation.seq2seq_metrics import exact_match, sample_scores, seq2seq_scores, worst_cases

PREDICTIONS = ["Datei nicht gefunden", "Der Hund schläft auf dem Sofa.", "kann Verzeichnis nicht öffnen",
               "  Speicher   erschöpft ", "Fehler beim Lesen von %s"]
REFERENCES = ["Datei nicht gefunden", "Die Katze schläft auf dem Sofa.", "Verzeichnis %s kann nicht geöffnet werden",
              "Speicher erschöpft", "Fehler beim Schreiben nach %s"]


def test_corpus_chrf_and_bleu_equal_sacrebleus():
    scores = seq2seq_scores(PREDICTIONS, REFERENCES)
    assert scores.chrf == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert scores.bleu == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert scores.signatures["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert "tok:13a" in scores.signatures["bleu"]


def test_rouge_l_is_the_mean_of_rouge_scores_f_measures():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)]
    assert seq2seq_scores(PREDICTIONS, REFERENCES).rouge_l == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert [s["rouge_l"] for s in sample_scores(PREDICTIONS, REFERENCES)] == [round(f, 4) for f in expected]


def test_sentence_chrf_is_sacrebleus_and_orders_the_worst_cases():
    samples = sample_scores(PREDICTIONS, REFERENCES)
    assert [s["chrf"] for s in samples] == [round(sacrebleu.sentence_chrf(p, [r]).score, 4)
                                            for p, r in zip(PREDICTIONS, REFERENCES)]
    worst = worst_cases(samples, n=2)
    assert [s["chrf"] for s in worst] == sorted(s["chrf"] for s in samples)[:2]


def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    assert exact_match("  Speicher   erschöpft ", "Speicher erschöpft")
    assert not exact_match("speicher erschöpft", "Speicher erschöpft")  # case counts
    assert seq2seq_scores(PREDICTIONS, REFERENCES).exact_match == pytest.approx(2 / 5)


def test_perfect_predictions_score_the_top_of_every_scale():
    scores = seq2seq_scores(REFERENCES, REFERENCES)
    assert (scores.chrf, scores.rouge_l, scores.exact_match) == (100.0, 1.0, 1.0)
    assert scores.bleu == pytest.approx(100.0)  # sacrebleu's exp(log) rounding


@pytest.mark.parametrize("module", ["sacrebleu", "rouge_score"])
def test_a_missing_scorer_is_one_line_naming_the_extra(monkeypatch, module):
    import sys

    from mmllm.errors import UsageError
    from mmllm.evaluation.seq2seq_metrics import require_scorers

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(UsageError, match=r"^seq2seq scores need .*: pip install 'mmllm\[eval\]'$"):
        require_scorers()
