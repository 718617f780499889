"""The project's special tokens, the fixed strings of its chat template, and the ids a tokenizer gives them.

Every tokenizer the project uses (trained here or brought by the user) carries these tokens; any that are
missing are added when it is loaded. `TokenIds` looks them up in one tokenizer; `SpecialIds` is what a
processor needs when a model config names its own ids instead (an imported checkpoint's template).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

END_OF_TEXT = "<|endoftext|>"  # ends a text document; also a generation stop token
PAD = "<|pad|>"
IMAGE = "<|image|>"  # one placeholder id; the processor repeats it tokens_per_image times per image
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"  # ends every turn; supervised after assistant turns; the chat stop token
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"

# Masked language modelling (data_pipelines.masking): added to a tokenizer that lacks it only when a run or a
# model uses the objective, so tokenizers and models without it keep their ids and sizes.
MASK = "<mask>"

SPECIAL_TOKENS = [END_OF_TEXT, PAD, IMAGE, TURN_START, TURN_END, USER, ASSISTANT, SYSTEM]
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM}

# How users write an image in a prompt or a LLaVA conversation.
IMAGE_MARKER = "<image>"
# A caption sample is a one-turn chat with this instruction; `mmllm caption` asks exactly the same.
CAPTION_INSTRUCTION = "Describe the image."


@dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens in one tokenizer."""

    image: int
    pad: int
    end_of_text: int
    turn_start: int
    turn_end: int
    user: int
    assistant: int
    system: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "TokenIds":
        names = {
            "image": IMAGE, "pad": PAD, "end_of_text": END_OF_TEXT, "turn_start": TURN_START,
            "turn_end": TURN_END, "user": USER, "assistant": ASSISTANT, "system": SYSTEM,
        }
        ids = {field: tokenizer.token_to_id(token) for field, token in names.items()}
        missing = [names[field] for field, token_id in ids.items() if token_id is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; load it with load_tokenizer()")
        return cls(**ids)

    @property
    def eos_ids(self) -> list[int]:
        """Generation stops at any of these: the end of a turn or of a document."""
        return [self.turn_end, self.end_of_text]

    def role(self, role: str) -> int:
        return {"user": self.user, "assistant": self.assistant, "system": self.system}[role]


@dataclass(frozen=True)
class SpecialIds:
    """The special ids a processor needs, given by the model config instead of looked up by mmllm's token names."""

    image: int
    pad: int
    eos_ids: list[int]  # generation stops at any of these; the first one closes a supervised assistant turn
    end_of_text: int | None = None  # appended to text documents; default: the last of eos_ids
