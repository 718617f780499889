"""Caption metrics: our wrapper against pycocoevalcap's scorers called directly, and hand-checkable cases."""

import shutil
import sys

import pytest

from mmllm.errors import UsageError
from mmllm.evaluation.caption_metrics import caption_exact_match, caption_scores, tokenize_caption

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

REFERENCES = {
    "img1": ["A red square above a blue circle.", "a blue circle below a red square", "Red square, blue circle."],
    "img2": ["A small green triangle on the left.", "a green triangle to the left of the image"],
    "img3": ["Two yellow circles next to each other.", "two yellow circles side by side", "A pair of yellow dots."],
    "img4": ["A large purple star in the middle.", "one purple star at the centre of the picture"],
}
HYPOTHESES = {
    "img1": ["a red square over a blue circle"],
    "img2": ["A green triangle on the left side."],
    "img3": ["two yellow circles"],
    "img4": ["a purple star in the middle of the image"],
}

PLAIN_CAPTIONS = [
    "A man's dog doesn't run.",
    "Two black-and-white dogs, \"playing\" at 3.5 p.m. -- near 1,000 birds; can't & won't...",
    "A DOG IS RUNNING ON THE GRASS.",
    "There are 3 shapes: a triangle, a circle and a square!",
    "What's that? It's a cat's toy.",
    "The cat's sitting on the dogs' bed at 10:30 o'clock.",
    "A $5 bill and 50% off",
    "They're sure we've seen it; I'm sure you'll, he'd.",
    "An x-ray of a well-known U.S. landmark and/or a map.",
    "Sign reading 'STOP' near the road...",
    "It's 2.5kg of café au lait",
]


def test_scores_equal_pycocoevalcap_called_directly_on_same_tokens():
    scores = caption_scores(REFERENCES, HYPOTHESES)
    gts = {k: [tokenize_caption(c) for c in refs] for k, refs in REFERENCES.items()}
    res = {k: [tokenize_caption(h[0])] for k, h in HYPOTHESES.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert scores.bleu == [float(b) for b in bleu]
    assert scores.bleu4 == bleu[3]
    assert scores.cider_d == float(cider)
    assert 0.0 < scores.bleu4 < 1.0 and 0.0 < scores.cider_d < 10.0
    assert scores.count == 4 and scores.exact_match == 0.0


def test_hypotheses_may_be_plain_strings():
    as_strings = {k: h[0] for k, h in HYPOTHESES.items()}
    assert caption_scores(REFERENCES, as_strings) == caption_scores(REFERENCES, HYPOTHESES)


def test_identical_captions_score_bleu4_one_and_cider_d_ten():
    # four words or more so 4-grams exist; disjoint vocabularies so every n-gram has a non-zero idf
    references = {1: ["a red square above circles"], 2: ["two green triangles side by side"]}
    scores = caption_scores(references, {1: "A red square above circles.", 2: "Two green triangles side by side"})
    assert scores.bleu == pytest.approx([1.0, 1.0, 1.0, 1.0], abs=1e-6)
    assert scores.cider_d == pytest.approx(10.0)
    assert scores.exact_match == 1.0


def test_caption_sharing_no_word_with_references_scores_zero():
    references = {1: ["a red square above circles"], 2: ["two green triangles side by side"]}
    scores = caption_scores(references, {1: "purple star", 2: "nothing here at all"})
    assert scores.bleu4 == pytest.approx(0.0, abs=1e-6)
    assert scores.cider_d == 0.0


def test_exact_match_ignores_case_punctuation_and_spaces_against_any_reference():
    assert caption_exact_match("  A red   square. ", ["blue circle", "a red square"])
    assert not caption_exact_match("a red square", ["a red squares"])
    scores = caption_scores({1: ["x y", "A red square."], 2: ["blue"]}, {1: "a red square", 2: "red"})
    assert scores.exact_match == 0.5


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("A Dog.", "a dog"),
        ("a dog's ball", "a dog 's ball"),
        ("don't", "do n't"),
        ("3.5 and 1,000 at 10:30", "3.5 and 1,000 at 10:30"),
        ("black-and-white, \"big\" (dog)!", "black-and-white big dog"),
        ("wait... -- what?", "wait what"),
    ],
)
def test_tokenisation_lowercases_splits_clitics_and_drops_punctuation(caption, tokens):
    assert tokenize_caption(caption) == tokens


@pytest.mark.skipif(shutil.which("java") is None, reason="the reference PTBTokenizer needs Java")
def test_tokenisation_matches_coco_ptb_tokenizer_on_plain_captions():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    reference = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(PLAIN_CAPTIONS)})
    for i, caption in enumerate(PLAIN_CAPTIONS):
        assert tokenize_caption(caption) == reference[i][0], caption


def test_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="same ids"):
        caption_scores({1: ["a"], 2: ["b"]}, {1: "a"})


def test_several_hypotheses_for_one_image_are_an_error():
    with pytest.raises(ValueError, match="exactly one"):
        caption_scores({1: ["a b"]}, {1: ["a b", "c d"]})


def test_missing_pycocoevalcap_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)  # makes the import raise ImportError
    with pytest.raises(UsageError, match=r"pip install 'mmllm\[eval\]'"):
        caption_scores({1: ["a b"]}, {1: "a b"})
