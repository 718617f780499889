"""VQAv2 answer normalisation and accuracy: cases whose expected values follow from the official evaluator."""

import pytest

from mmllm.evaluation.vqa_metric import normalize_vqa_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),                      # number word -> digit, after lowercasing
        ("none", "0"),
        ("a dog", "dog"),                  # articles dropped
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),                 # contraction table
        ("whats", "what's"),
        ("oclock", "o'clock"),
        ("yes.", "yes"),                   # period not before a digit is removed
        ("3.5", "3.5"),                    # period before a digit is kept
        ("a.m.", "am"),
        ("1,000", "1000"),                 # digit-comma-digit: every mark is deleted, none becomes a space
        ("yes, sir", "yes sir"),           # a mark touching a space is deleted
        ("red,blue", "red blue"),          # a mark between two words becomes a space
        ("red/blue", "red blue"),
        ("dog's", "dog s"),                # ASCII apostrophe is in the official punct list
        ("t-shirt", "t-shirt"),            # '-' and '!' are not in the official punct list
        ("yes!", "yes!"),
        ("  two\tdogs\n", "2 dogs"),       # tabs/newlines are spaces, whitespace collapsed
        ("What?", "what"),
    ],
)
def test_normalisation_matches_official_evaluator_behaviour(answer, expected):
    assert normalize_vqa_answer(answer) == expected


def test_normalisation_leaves_already_normalised_answers_unchanged():
    # VQAv2 annotation answers are stored normalised; normalising them again must not move them
    for answer in ["2", "dog", "3.5", "1000", "yes sir", "t-shirt", "10"]:
        assert normalize_vqa_answer(answer) == answer


def _leave_one_out_accuracy(prediction, references):
    """Recomputation written the long way: build each 9-of-10 subset and count matches in it."""
    answer = normalize_vqa_answer(prediction)
    scores = []
    for i in range(len(references)):
        subset = references[:i] + references[i + 1:]
        matches = sum(normalize_vqa_answer(r) == answer for r in subset)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_reference_accuracy_is_mean_over_leave_one_out_subsets(matches, expected):
    references = ["two"] * matches + ["three"] * (10 - matches)
    accuracy = vqa_accuracy("2", references)
    assert accuracy == pytest.approx(expected)
    assert accuracy == pytest.approx(_leave_one_out_accuracy("2", references))


def test_mixed_reference_accuracy_matches_subset_recomputation():
    references = ["A dog", "dog", "dog.", "cat", "puppy", "dog", "the cat", "Cat", "animal", "dogs"]
    for prediction in ["dog", "cat", "puppy", "bird", "Dogs"]:
        assert vqa_accuracy(prediction, references) == pytest.approx(_leave_one_out_accuracy(prediction, references))


def test_single_reference_accuracy_is_exact_match_after_normalisation():
    assert vqa_accuracy("Two.", ["2"]) == 1.0
    assert vqa_accuracy("the red ball", ["Red ball"]) == 1.0
    assert vqa_accuracy("blue ball", ["red ball"]) == 0.0


def test_accuracy_without_references_is_an_error():
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("yes", [])


def test_scores_average_overall_and_per_question_type():
    scores = vqa_scores(
        predictions=["yes", "no", "2", "red"],
        references=[["Yes"], ["yes"], ["two"], ["blue"]],
        question_types=["is the", "is the", "how many", None],
    )
    assert scores.overall == pytest.approx(2 / 4)
    assert scores.count == 4
    assert scores.per_question_type == {"how many": 1.0, "is the": 0.5}
    assert scores.count_per_question_type == {"how many": 1, "is the": 2}
    assert scores.to_dict()["accuracy"] == pytest.approx(0.5)


def test_scores_without_question_types_have_no_breakdown():
    scores = vqa_scores(["yes"], [["no"]])
    assert scores.overall == 0.0 and scores.per_question_type == {}


def test_scores_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_scores(["a", "b"], [["a"]])


def test_question_prefix_is_the_longest_vqav2_opening():
    from mmllm.evaluation.vqa_metric import question_prefix

    assert question_prefix("How many dogs are there?") == "how many"
    assert question_prefix("How many people are in the picture?") == "how many people are in"
    assert question_prefix("What color is the car?") == "what color is the"
    assert question_prefix("what is the man holding") == "what is the man"
    assert question_prefix("Is there a cat?") == "is there a"
    assert question_prefix("Is there  anything red ?") == "is there"
    assert question_prefix("Describe the scene.") == "other"


def test_answer_type_follows_vqav2():
    from mmllm.evaluation.vqa_metric import answer_type

    assert [answer_type(a) for a in ("Yes", "no.", "two", "3", "1,000", "red", "none")] == [
        "yes/no", "yes/no", "number", "number", "number", "other", "number"]  # "none" normalises to "0"


def test_untyped_questions_are_broken_down_by_opening_words_and_answer_type():
    scores = vqa_scores(["yes", "2", "blue", "no"], [["yes"], ["two"], ["red"], ["yes"]],
                        questions=["Is there a dog?", "How many cats?", "What color is the ball?", "Is it day?"])
    assert scores.question_types_from == "prefix"
    assert scores.per_question_type == {"how many": 1.0, "is it": 0.0, "is there a": 1.0, "what color is the": 0.0}
    assert scores.per_answer_type == {"number": 1.0, "other": 0.0, "yes/no": 0.5}
    assert scores.count_per_answer_type == {"number": 1, "other": 1, "yes/no": 2}
    typed = vqa_scores(["yes"], [["yes"]], ["exists"], questions=["Is there a dog?"])
    assert typed.per_question_type == {"exists": 1.0} and typed.question_types_from == "data"
