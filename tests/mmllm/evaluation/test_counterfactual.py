"""Counterfactual questions: the swap syntax, rewriting, where a rewrite's answer comes from (the scene, another
question of the same image, neither) and the report's rates against hand-counted cases."""

from __future__ import annotations

import pytest
from PIL import Image

from data_pipelines.read.eval_samples import VQAQuestion
from mmllm.evaluation.counterfactual import counterfactual_questions, counterfactual_report, parse_swaps, rewrite

OBJECTS = [{"shape": "circle", "colour": "red", "size": "small", "cell": "left", "row": 1, "col": 0, "x": 0.2, "y": 0.5},
           {"shape": "square", "colour": "blue", "size": "large", "cell": "right", "row": 1, "col": 2, "x": 0.8, "y": 0.5}]


def test_swaps_parse_into_words_and_their_alternatives():
    assert parse_swaps("red=blue,green") == {"red": ("blue", "green")}
    assert parse_swaps(" red = blue , green ; top  left=bottom right;") == {"red": ("blue", "green"),
                                                                           "top left": ("bottom right",)}
    for bad in ("red", "=blue", "red=", "red=red", "red=Red,blue", ";"):
        with pytest.raises(ValueError):
            parse_swaps(bad)


def test_rewriting_swaps_whole_words_keeping_capitals_and_the_article_in_agreement():
    assert rewrite("Is there a red circle?", "red", "orange") == "Is there an orange circle?"
    assert rewrite("Is there an orange circle?", "orange", "blue") == "Is there a blue circle?"
    assert rewrite("Red or red?", "red", "blue") == "Blue or blue?"
    assert rewrite("Is the star bored?", "red", "blue") is None  # inside another word: not a match
    assert rewrite("What is at the top left?", "top left", "bottom right") == "What is at the bottom right?"
    assert rewrite("What is on the left?", "left", "right") == "What is on the right?"


def _question(text: str, answer: str, image: Image.Image, objects=None, key="k") -> VQAQuestion:
    return VQAQuestion(key, image, text, answer, content="<image>\n" + text,
                       fields={} if objects is None else {"objects": objects})


def test_a_rewrite_is_answered_from_the_scene_else_another_question_of_the_same_image_else_unknown():
    red, white = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "white")
    questions = [
        _question("How many red objects are there?", "1", white, OBJECTS),  # scene: blue -> 1, green -> 0
        _question("Is there a red car?", "yes", red),  # the same image has the rewritten question: "no"
        _question("Is there a blue car?", "no", red),
        _question("Is there a red car?", "yes", white),  # another image: unknown
    ]
    rewrites = counterfactual_questions(questions, {"red": ("blue", "green")})
    found = [(r.index, r.question.question, r.expected, r.source) for r in rewrites]
    assert found == [
        (0, "How many blue objects are there?", "1", "scene"), (0, "How many green objects are there?", "0", "scene"),
        (1, "Is there a blue car?", "no", "same image"), (1, "Is there a green car?", None, None),
        (3, "Is there a blue car?", None, None), (3, "Is there a green car?", None, None),
    ]
    assert rewrites[0].question.content == "<image>\nHow many blue objects are there?"
    assert rewrites[0].question.image is white and questions[0].question == "How many red objects are there?"


def test_the_report_counts_changes_when_the_answer_should_change_and_when_it_should_not():
    white = Image.new("RGB", (8, 8), "white")
    questions = [_question("How many red objects are there?", "1", white, OBJECTS),
                 _question("Is there a red circle?", "yes", white, OBJECTS),
                 _question("What is red?", "paint", white)]
    rewrites = counterfactual_questions(questions, {"red": ("blue", "green")})
    # expected: blue objects 1 (same), green objects 0 (change), blue circle no (change), green circle no (change),
    # "What is blue?" and "What is green?" unknown
    assert [r.expected for r in rewrites] == ["1", "0", "no", "no", None, None]
    predictions = ["1", "yes", "paint"]
    after = ["2", "0", "yes", "no", "paint", "grass"]
    report = counterfactual_report({"red": ("blue", "green")}, questions, predictions, rewrites, after)
    cases = report["cases"]
    assert cases["should not change"]["count"] == 1 and cases["should not change"]["changed"] == 1.0
    assert cases["should not change"]["accuracy"] == 0.0  # "2" where the answer stays "1"
    assert cases["should change"]["count"] == 3 and cases["should change"]["changed"] == pytest.approx(2 / 3)
    assert cases["should change"]["accuracy"] == pytest.approx(2 / 3)  # "0" and "no" right, "yes" wrong
    low, high = cases["should change"]["changed_ci95"]
    assert low < 2 / 3 < high
    assert cases["unknown"]["count"] == 2 and cases["unknown"]["changed"] == 0.5 and cases["unknown"]["accuracy"] is None
    assert report["rewrites"] == 6 and report["questions_rewritten"] == 3 and report["sources"] == {"scene": 4}
    assert report["by_swap"]["red->green"]["should change"]["count"] == 2
    assert report["by_swap"]["red->blue"]["should not change"]["changed"] == 1.0
    assert [r["changed"] for r in report["records"]] == [True, True, False, True, False, True]
