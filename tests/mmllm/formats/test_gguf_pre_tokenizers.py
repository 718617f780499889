"""Tokenizers of GGUF files as llama.cpp reads them: for each pre-tokenizer of the Llama-family files people hold
(gpt-2, smollm, llama3 as 'llama-bpe', qwen2, llama.cpp's 'default', and no pre-tokenizer at all) and for a
SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, Llama 2's and Mistral's), a tiny model is written here
with `gguf`'s GGUFWriter (llama.cpp's own writer), read back by mmllm, and tokenized as llama.cpp's
`llama_tokenize` tokenizes the same file, on strings where the pre-tokenizers' regexes differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmllm.errors import UsageError
from mmllm.formats.gguf import read_gguf

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

# Strings where the regexes differ: digit groups, contractions in either case, letters after punctuation,
# runs of spaces, newlines and punctuation, symbols llama.cpp's 'default' isolates, characters outside the vocabulary.
STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "12345 and 1234567, or 42 and 7",
    "don't DON'T I'M we'll they'Re it's",
    "Ünïcödé  café 🙂 ½ ² ٣٤",
    "multiple   spaces\n\n\tand tabs  \n",
    "punctuation!!! ...?? (a+b)=c $5 |x| ~y^z `q` #tag @you",
    "line\r\nbreak\n  \nx",
    " zebra zebras",
    "<tool>call it<tool> twice",
]
CORPUS = [text for text in STRINGS if "zebra" not in text and "<tool>" not in text] + [
    "the cat sat on the mat and the dog sat on the log",
    "numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 12 123 345",
    "I'm, you're, he's, we've, they'll, I'd, don't, can't",
    "brown foxes jump quickly; lazy dogs sleep all day long!",
]
DIM, HEADS, LAYERS, MLP = 16, 2, 2, 32


def tokenize_as_llama_cpp(path: Path, text: str) -> list[int]:
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode(), add_bos=False, special=False)
    finally:
        llm.close()


def write_tiny_gguf(path: Path, tokens: list[str], types: list[int], eos: int, *, tokenizer_model: str,
                    arch: str = "llama", pre: str | None = None, merges: list[str] | None = None,
                    scores: list[float] | None = None, add_space_prefix: bool | None = None) -> Path:
    """A 2-layer model of `arch` with small random tensors and the given vocabulary, as llama.cpp's writer writes it."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(DIM)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(MLP)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges is not None:
        writer.add_token_merges(merges)
    if scores is not None:
        writer.add_token_scores(scores)
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)
    matrix = lambda rows, cols: (0.05 * rng.standard_normal((rows, cols))).astype(np.float32)  # noqa: E731
    writer.add_tensor("token_embd.weight", matrix(len(tokens), DIM))
    writer.add_tensor("output_norm.weight", np.ones(DIM, dtype=np.float32))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(DIM, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(DIM, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", matrix(DIM, DIM))
        if arch == "qwen2":  # Qwen2's q, k and v have biases
            for name in ("attn_q", "attn_k", "attn_v"):
                writer.add_tensor(f"blk.{i}.{name}.bias", np.zeros(DIM, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(MLP, DIM))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(MLP, DIM))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(DIM, MLP))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def byte_level_vocabulary():
    """(tokens, token types, merges, eos) of a byte-level BPE trained here, plus a user-defined <tool> and a
    token ' zebra' that no merge reaches (llama3's pre-type takes a piece that is a token whole)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # trained across the regexes' boundaries, so that merges exist that one pre-tokenizer allows and another not
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    assert "Ġzebra" not in tokens and "<tool>" not in tokens
    tokens += ["<tool>", "Ġzebra"]
    types = [3] + [1] * (len(tokens) - 3) + [4, 1]
    return tokens, types, merges, 0


@pytest.mark.parametrize("arch, pre", [("llama", "gpt-2"), ("llama", "smollm"), ("llama", "llama-bpe"),
                                       ("llama", "llama3"), ("qwen2", "qwen2"), ("llama", "default")])
def test_a_byte_level_bpe_tokenizes_as_llama_cpp_for_each_pre_tokenizer(byte_level_vocabulary, tmp_path, arch, pre):
    tokens, types, merges, eos = byte_level_vocabulary
    path = write_tiny_gguf(tmp_path / f"{pre}.gguf", tokens, types, eos, tokenizer_model="gpt2", arch=arch, pre=pre,
                           merges=merges)
    tokenizer = read_gguf(path).tokenizer
    for text in STRINGS:
        assert tokenizer.encode(text).ids == tokenize_as_llama_cpp(path, text), (pre, text)


def test_the_pre_tokenizers_split_differently_so_that_the_comparison_means_something(byte_level_vocabulary, tmp_path):
    tokens, types, merges, eos = byte_level_vocabulary
    ids = {}
    for pre in ("gpt-2", "smollm", "llama-bpe", "qwen2", "default"):
        path = write_tiny_gguf(tmp_path / f"{pre}.gguf", tokens, types, eos, tokenizer_model="gpt2", pre=pre,
                               merges=merges)
        ids[pre] = tuple(tuple(tokenize_as_llama_cpp(path, text)) for text in STRINGS)
    assert len(set(ids.values())) == len(ids), [(a, b) for a in ids for b in ids if a < b and ids[a] == ids[b]]


def test_a_file_without_a_pre_tokenizer_splits_as_llama_cpp_default_and_says_so_in_one_line(
        byte_level_vocabulary, tmp_path, capsys):
    tokens, types, merges, eos = byte_level_vocabulary
    path = write_tiny_gguf(tmp_path / "old.gguf", tokens, types, eos, tokenizer_model="gpt2", merges=merges)
    tokenizer = read_gguf(path).tokenizer
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(said) == 1 and "old.gguf" in said[0] and "'default'" in said[0], said
    for text in STRINGS:
        assert tokenizer.encode(text).ids == tokenize_as_llama_cpp(path, text), text


@pytest.fixture(scope="module")
def sentencepiece_vocabulary():
    """(tokens, token types, scores, eos) laid out as llama.cpp's converter writes a SentencePiece vocabulary:
    <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then '▁'-marked pieces, each scored (a piece trained
    earlier scores higher), and a user-defined <tool>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=160, min_frequency=1)
    tokenizer.train_from_iterator([text for text in CORPUS if "🙂" not in text and "½" not in text], trainer)
    pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), *pieces, "<tool>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))] + [0.0]
    return tokens, types, scores, 2


@pytest.mark.parametrize("add_space_prefix, shuffled", [(None, False), (None, True), (False, False)])
def test_a_sentencepiece_vocabulary_tokenizes_as_llama_cpp(sentencepiece_vocabulary, tmp_path, add_space_prefix,
                                                          shuffled):
    """Shuffled: the pieces' scores in an order unrelated to their training, so that which pair merges first
    follows from the scores alone."""
    tokens, types, scores, eos = sentencepiece_vocabulary
    if shuffled:
        pieces = slice(3 + 256, -1)
        scores = list(scores)
        scores[pieces] = np.random.default_rng(0).permutation(scores[pieces]).tolist()
    path = write_tiny_gguf(tmp_path / "spm.gguf", tokens, types, eos, tokenizer_model="llama", scores=scores,
                           add_space_prefix=add_space_prefix)
    tokenizer = read_gguf(path).tokenizer
    for text in STRINGS:
        ids = tokenize_as_llama_cpp(path, text)
        assert tokenizer.encode(text).ids == ids, text
        if add_space_prefix is None and "<tool>" not in text:  # byte fallback decodes whole characters again
            assert tokenizer.decode(ids) == text, text


def test_a_pre_tokenizer_llama_cpp_knows_but_mmllm_does_not_is_refused_in_one_line(byte_level_vocabulary, tmp_path):
    tokens, types, merges, eos = byte_level_vocabulary
    path = write_tiny_gguf(tmp_path / "odd.gguf", tokens, types, eos, tokenizer_model="gpt2", pre="deepseek-coder",
                           merges=merges)
    with pytest.raises(UsageError, match=r"odd\.gguf: pre-tokenizer 'deepseek-coder' has no mapping here \(.*qwen2"):
        read_gguf(path)
