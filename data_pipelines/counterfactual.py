"""Counterfactual data augmentation (`data.counterfactual`): a training sample's words swapped, its picture with them.

`{swaps: "red=blue,green; circle=square", prob: 0.5}`: with probability `prob` a training sample whose text names
a swapped word is rewritten with one of its alternatives (the word and the alternative drawn at random among
those that apply), so that a correlation in the data ("circles are red") is no longer all the model sees.

Text and picture must stay true together, so what is swapped depends on what the sample says about its image:
- the sample's JSON describes the scene (`objects`, as `mmllm data shapes` writes them): the objects are changed
  (every red object becomes blue), the image is redrawn from the changed scene by the generator's own renderer,
  the caption is written again from it, and every question is asked again with the word swapped and answered
  from the changed scene by the generator's grammar (a question it cannot answer there is dropped). An object
  whose new colour-shape pair is one the shapes set holds out for its compositional test keeps its own;
- a sample without images (text, or a chat without one): the words of its text are swapped;
- any other sample with an image is left as it is: its picture cannot be changed to match.

The swap spelling is the one `mmllm eval --counterfactual` reads (`parse_swaps`, `rewrite`).
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

from PIL import Image


def parse_swaps(text: str) -> dict[str, tuple[str, ...]]:
    """"red=blue,green;left=right" -> {"red": ("blue", "green"), "left": ("right",)}; ValueError saying why."""
    swaps: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        word, equals, alternatives = part.partition("=")
        word = " ".join(word.split())
        options = tuple(" ".join(a.split()) for a in alternatives.split(",") if a.strip())
        if not equals or not word or not options:
            raise ValueError(f"expected WORD=ALTERNATIVE[,ALTERNATIVE...] (swaps joined by ';'), got {part!r}")
        if word.lower() in (a.lower() for a in options):
            raise ValueError(f"{word!r} is swapped for itself")
        swaps[word] = options
    if not swaps:
        raise ValueError("no swap given; expected WORD=ALTERNATIVE[,ALTERNATIVE...]")
    return swaps


def _word_pattern(word: str) -> re.Pattern:
    # the whole word or phrase only ("red" not in "bored"), with the article before it kept apart so that it can
    # agree with the alternative ("a red" -> "an orange")
    return re.compile(r"(?:\b(?P<article>a|an) )?(?<![\w-])(?P<word>" + re.escape(word) + r")(?![\w-])", re.IGNORECASE)


def rewrite(text: str, word: str, alternative: str) -> str | None:
    """text with every occurrence of word replaced by alternative (capitals and a/an kept in agreement), or None
    when the word does not occur."""
    pattern = _word_pattern(word)
    if not pattern.search(text):
        return None

    def swap(match: re.Match) -> str:
        new = alternative[:1].upper() + alternative[1:] if match["word"][:1].isupper() else alternative
        article = match["article"]
        if article is None:
            return new
        agreed = "an" if new[:1].lower() in "aeiou" else "a"
        return (agreed.capitalize() if article[:1].isupper() else agreed) + " " + new

    return pattern.sub(swap, text)


@dataclass
class Counterfactual:
    """Counterfactual augmentation of training samples.

    Args:
        swaps: words and their alternatives, `"red=blue,green; circle=square"` (as `mmllm eval --counterfactual`).
        prob: the probability that a sample is rewritten (when a swapped word applies to it).
    """

    swaps: str
    prob: float = 0.5
    parsed: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self.parsed = parse_swaps(self.swaps)
        except ValueError as error:
            raise ValueError(f"data.counterfactual.swaps: {error}") from None
        if not 0 <= self.prob <= 1:
            raise ValueError(f"data.counterfactual.prob must be in [0, 1], got {self.prob}")

    def rewrite_samples(self, samples: Iterable, rng: random.Random) -> Iterator:
        """The stream's stage: counterfactual_samples with these options."""
        return counterfactual_samples(samples, self, rng)


def counterfactual_samples(samples: Iterable, options: Counterfactual, rng: random.Random) -> Iterator:
    """Each parsed (images still compressed) sample rewritten by `counterfactual_sample` with probability prob."""
    for sample in samples:
        yield counterfactual_sample(sample, options.parsed, rng) if rng.random() < options.prob else sample


def counterfactual_sample(sample, swaps: dict[str, tuple[str, ...]], rng: random.Random):
    """One sample with one swap applied (see the module docstring), or the sample itself when none applies."""
    if sample.images:
        scene = _scene(sample.meta)
        return sample if scene is None else _scene_counterfactual(sample, scene, swaps, rng)
    texts = [sample.text] if sample.kind == "text" else [turn["content"] for turn in sample.conversation or []]
    present = [word for word in swaps if any(_word_pattern(word).search(text) for text in texts)]
    if not present:
        return sample
    word = rng.choice(present)
    alternative = rng.choice(swaps[word])
    if sample.kind == "text":
        return replace(sample, text=rewrite(sample.text, word, alternative))
    conversation = [{**turn, "content": rewrite(turn["content"], word, alternative) or turn["content"]}
                    for turn in sample.conversation]
    return replace(sample, conversation=conversation)


SCENE_KEYS = ("shape", "colour", "size", "cell", "x", "y")


def _scene(meta: dict) -> list[dict] | None:
    objects = meta.get("objects")
    if not isinstance(objects, list) or not objects:
        return None
    if not all(isinstance(o, dict) and all(key in o for key in SCENE_KEYS) for o in objects):
        return None
    return objects


def swap_objects(objects: list[dict], word: str, alternative: str) -> list[dict]:
    """The scene's objects with every attribute equal to `word` (a colour, a shape, a size) set to `alternative`
    where that is a value of the same attribute; an object whose new pair is held out keeps its own."""
    from data_pipelines.convert.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES, SIZES

    values = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}
    swapped = []
    for obj in objects:
        new = dict(obj)
        for attribute, allowed in values.items():
            if obj[attribute] == word and alternative in allowed:
                new[attribute] = alternative
        swapped.append(obj if (new["colour"], new["shape"]) in HELD_OUT_PAIRS else new)
    return swapped


def _scene_counterfactual(sample, objects: list[dict], swaps: dict[str, tuple[str, ...]], rng: random.Random):
    from data_pipelines.convert.shapes import answer_from_objects, caption, render, scene_from_records
    from data_pipelines.chat.special_tokens import IMAGE_MARKER

    options = [(word, alternative) for word, alternatives in swaps.items() for alternative in alternatives
               if swap_objects(objects, word, alternative) != objects]
    if not options:
        return sample
    word, alternative = rng.choice(options)
    new_objects = swap_objects(objects, word, alternative)
    image = Image.open(io.BytesIO(sample.images[0])).convert("RGB")
    background = sample.meta.get("background") or image.getpixel((0, 0))  # the corner is always background
    scene = scene_from_records(new_objects, background)
    buffer = io.BytesIO()
    render(scene, image.width).save(buffer, format="PNG")
    meta = {**sample.meta, "objects": new_objects, "counterfactual": f"{word}->{alternative}"}
    meta.pop("questions", None)  # the rewritten turns are the questions now
    if sample.kind == "caption":
        text = caption(scene)
        conversation = [{**turn, "content": text} if turn["role"] == "assistant" else turn
                        for turn in sample.conversation]
        meta["references"] = [text]
        return replace(sample, conversation=conversation, images=[buffer.getvalue()], meta=meta)
    turns, conversation = sample.conversation, []
    for index, turn in enumerate(turns):
        if turn["role"] != "user" or index + 1 >= len(turns) or turns[index + 1]["role"] != "assistant":
            continue
        content = rewrite(turn["content"], word, alternative) or turn["content"]
        answer = answer_from_objects(new_objects, content.replace(IMAGE_MARKER, "").strip())
        if answer is None:
            continue  # not answerable in the changed scene: dropped
        if not conversation and IMAGE_MARKER not in content:  # the first kept question carries the image
            content = IMAGE_MARKER + "\n" + content
        conversation += [{**turn, "content": content}, {**turns[index + 1], "content": answer}]
    if not conversation:
        return sample
    return replace(sample, conversation=conversation, images=[buffer.getvalue()], meta=meta)
