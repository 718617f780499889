"""The tokenizer: train a byte-level BPE on the user's text, or load any `tokenizer.json`, with our special tokens.

Whatever the source, a loaded tokenizer is put in one state (`prepare_tokenizer`): every special token of
`special_tokens.SPECIAL_TOKENS` present (added when missing, reused when already there), no post-processor
(a Llama `tokenizer.json` often adds BOS through TemplateProcessing), no padding or truncation, and special
tokens written in text are tokenized as plain text. The chat template inserts special tokens by id, so a
user typing `<|im_end|>` or `<|image|>` in a prompt cannot forge a turn end or an image slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.chat import special_tokens as st

BYTE_ALPHABET_SIZE = 256


def prepare_tokenizer(tokenizer: Tokenizer) -> list[str]:
    """Put a tokenizer in the project's state (see module docstring), in place; returns the tokens it added."""
    added = [token for token in st.SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    # Registering tokens that already exist reuses their ids and marks them special (skipped by decode).
    tokenizer.add_special_tokens(list(st.SPECIAL_TOKENS))
    tokenizer.post_processor = None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.encode_special_tokens = True
    return added


def add_mask_token(tokenizer: Tokenizer) -> bool:
    """Give a tokenizer the masked-LM token `<mask>` (special: skipped by decode, never read from text) when it lacks
    it, in place, like the chat tokens; True when it was added (its id is then the next free one)."""
    if tokenizer.token_to_id(st.MASK) is not None:
        return False
    tokenizer.add_special_tokens([st.MASK])
    return True


def prepared(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer itself when it is already in the project's state, else a prepared copy (the caller's
    tokenizer is left as it was)."""
    ready = (tokenizer.post_processor is None and tokenizer.encode_special_tokens and tokenizer.padding is None
             and tokenizer.truncation is None and all(tokenizer.token_to_id(t) is not None for t in st.SPECIAL_TOKENS))
    if ready:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    prepare_tokenizer(copy)
    return copy


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, tokens: str = "mmllm") -> Tokenizer:
    """A byte-level BPE trained on texts; ids 0..7 are SPECIAL_TOKENS in their listed order. tokens "smolvlm"
    adds SmolVLM's tokens after the trained vocabulary (data_pipelines.chat.smolvlm_format), for an exportable model."""
    if tokens not in ("mmllm", "smolvlm"):
        raise ValueError(f"tokens must be 'mmllm' or 'smolvlm', got {tokens!r}")
    smallest = BYTE_ALPHABET_SIZE + len(st.SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size {vocab_size} is below {smallest} (256 bytes + {len(st.SPECIAL_TOKENS)} special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(st.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, even if unseen
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokens == "smolvlm":
        from data_pipelines.chat.smolvlm_format import add_tokens

        add_tokens(tokenizer)
    prepare_tokenizer(tokenizer)
    return tokenizer


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, list[str]]:
    """Any `tokenizer.json` (ours, GPT-2, Llama, SmolLM2...) prepared for the project, and the special tokens added."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the tokenizers library raises a bare Exception on malformed JSON
        raise ValueError(f"{path} is not a readable tokenizer.json: {error}") from error
    return tokenizer, prepare_tokenizer(tokenizer)


def vocab_size(tokenizer: Tokenizer) -> int:
    """Rows the embedding table needs: highest id + 1 (ids of added tokens need not be contiguous)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
