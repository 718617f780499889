"""SmolVLM's conventions, for a model trained here from scratch that transformers and llama.cpp must run as it
runs in mmllm: its token set, its chat template and the special ids they give.

A tokenizer trained with `mmllm tokenizer train --tokens smolvlm` carries the tokens (Idefics3's processor
looks `<image>`, `<fake_token_around_image>`, `<global-img>`, `<end_of_utterance>` and `<row_i_col_j>` up by
name, and adds any that are missing, which would shift the ids) and one "\\n\\n" token (llama.cpp writes it
before each image's whole view). `data.chat_template: smolvlm` then lays turns out as SmolVLM does:

    <|im_start|>User:<image>What is on the left?<end_of_utterance>
    Assistant: A red circle.<end_of_utterance>
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.image_layout import FAKE_TOKEN, GLOBAL_IMAGE, tile_tokens
from data_pipelines.chat.special_tokens import SpecialIds

IMAGE_TOKEN = "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"  # ends every turn: the supervised stop token
SPECIAL_TOKENS = [IMAGE_TOKEN, END_OF_UTTERANCE, FAKE_TOKEN, GLOBAL_IMAGE, *tile_tokens()]
DOUBLE_NEWLINE = "\n\n"  # an ordinary (not special) added token: always one token, in text and before images
TEMPLATE_NAMES = ("smolvlm",)

# SmolVLM's layout, written for mmllm: "<|im_start|>" once, each turn "Role:" (before an image) or "Role: "
# (before text), its parts, "<end_of_utterance>" and a newline; the generation prompt is "Assistant:".
CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{% set parts = message['content'] if message['content'] is not string "
    "else [{'type': 'text', 'text': message['content']}] %}"
    "{{ message['role'] | capitalize }}{{ ':' if parts and parts[0]['type'] == 'image' else ': ' }}"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def add_tokens(tokenizer: Tokenizer) -> list[str]:
    """Add SmolVLM's special tokens and the "\\n\\n" token, in place; returns those that were missing."""
    missing = [token for token in [*SPECIAL_TOKENS, DOUBLE_NEWLINE] if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    if tokenizer.token_to_id(DOUBLE_NEWLINE) is None:
        tokenizer.add_tokens([AddedToken(DOUBLE_NEWLINE, normalized=False, special=False)])
    return missing


def chat_template_source(value: str) -> str:
    """A named template ("smolvlm") or the path of a Jinja file -> the template's text."""
    if value in TEMPLATE_NAMES:
        return CHAT_TEMPLATE
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"chat_template must be one of {list(TEMPLATE_NAMES)} or a Jinja file; {value} is neither")
    return path.read_text(encoding="utf-8")


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of a SmolVLM-format model: `<image>`, mmllm's pad, stops `<end_of_utterance>` and end of text."""
    names = [IMAGE_TOKEN, st.PAD, END_OF_UTTERANCE, st.END_OF_TEXT]
    ids = [tokenizer.token_to_id(name) for name in names]
    missing = [name for name, token_id in zip(names, ids) if token_id is None]
    if missing:
        raise ValueError(f"a SmolVLM chat template needs the tokens {missing}; train the tokenizer with "
                         f"--tokens smolvlm")
    image, pad, end_of_utterance, end_of_text = ids
    return SpecialIds(image, pad, [end_of_utterance, end_of_text], end_of_text)
