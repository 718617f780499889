"""Tokenizer: training round-trips text, any tokenizer.json gets our special tokens and no implicit BOS, CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.special_tokens import TokenIds
from data_pipelines.chat.tokenizer import load_tokenizer, train_tokenizer, vocab_size
from data_pipelines.read.shards import record_texts

CORPUS = [
    "A red circle is on the left of a blue square.",
    "Two green triangles, one small and one large.",
    "Ünïcödé: café, naïve, 日本語のテキスト, emoji 🙂🚀, Ελληνικά.",
    "   leading spaces\tand tabs\nand newlines  ",
] * 20
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.mark.parametrize("text", CORPUS[:4] + ["unseen: ŝ ж 🦙 \u200b end", ""])
def test_trained_tokenizer_round_trips_text_including_unicode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_take_the_first_ids_in_listed_order(tokenizer):
    assert [tokenizer.token_to_id(token) for token in st.SPECIAL_TOKENS] == list(range(len(st.SPECIAL_TOKENS)))
    assert TokenIds.from_tokenizer(tokenizer).eos_ids == [
        tokenizer.token_to_id(st.TURN_END), tokenizer.token_to_id(st.END_OF_TEXT)
    ]


def test_trained_tokenizer_learns_merges_and_respects_vocab_size(tokenizer):
    assert 256 + len(st.SPECIAL_TOKENS) < vocab_size(tokenizer) <= 400
    text = "A red circle is on the left"
    assert len(tokenizer.encode(text).ids) < len(text.encode("utf-8"))


def test_encoding_adds_no_bos_or_eos(tokenizer):
    special = set(range(len(st.SPECIAL_TOKENS)))
    assert not special & set(tokenizer.encode("A red circle").ids)


def test_special_token_strings_in_text_are_tokenized_as_text(tokenizer):
    text = f"fake {st.TURN_END} and {st.IMAGE}"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert not set(ids) & set(range(len(st.SPECIAL_TOKENS)))
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_vocab_size_below_byte_alphabet_is_rejected():
    with pytest.raises(ValueError, match="256"):
        train_tokenizer(CORPUS, vocab_size=100)


def test_saved_tokenizer_reloads_with_the_same_ids_and_nothing_added(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded, added = load_tokenizer(path)
    assert added == []
    assert TokenIds.from_tokenizer(loaded) == TokenIds.from_tokenizer(tokenizer)
    assert loaded.encode(CORPUS[2]).ids == tokenizer.encode(CORPUS[2]).ids


def _llama_style_tokenizer() -> Tokenizer:
    """A SentencePiece-flavoured BPE like Llama 2's tokenizer.json: <s> BOS added by TemplateProcessing."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "h": 4, "i": 5, "▁h": 6, "▁hi": 7, "t": 8, "e": 9, "r": 10}
    merges = [("▁", "h"), ("▁h", "i")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def test_llama_style_tokenizer_gets_special_tokens_added_and_no_bos(tmp_path):
    path = tmp_path / "llama.json"
    original = _llama_style_tokenizer()
    assert original.encode("hi").ids[0] == 1  # the reference really injects BOS
    original.save(str(path))
    loaded, added = load_tokenizer(path)
    assert added == list(st.SPECIAL_TOKENS)
    ids = TokenIds.from_tokenizer(loaded)
    assert sorted(vars(ids).values()) == list(range(11, 11 + len(st.SPECIAL_TOKENS)))
    assert loaded.encode("hi").ids == [7]
    assert loaded.encode("hi", add_special_tokens=True).ids == [7]
    assert loaded.token_to_id("<s>") == 1  # the tokenizer's own tokens are kept


def test_smollm2_style_tokenizer_reuses_its_existing_chat_tokens(tmp_path):
    # SmolLM2 ships <|endoftext|>, <|im_start|>, <|im_end|> as special added tokens at ids 0, 1, 2.
    vocab = {st.END_OF_TEXT: 0, st.TURN_START: 1, st.TURN_END: 2}
    vocab.update({char: 3 + i for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet())})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([st.END_OF_TEXT, st.TURN_START, st.TURN_END])
    path = tmp_path / "smollm2.json"
    tokenizer.save(str(path))
    loaded, added = load_tokenizer(path)
    assert added == [st.PAD, st.IMAGE, st.USER, st.ASSISTANT, st.SYSTEM]
    ids = TokenIds.from_tokenizer(loaded)
    assert (ids.end_of_text, ids.turn_start, ids.turn_end) == (0, 1, 2)
    assert vocab_size(loaded) == len(vocab) + 5


def test_gpt2_style_tokenizer_with_endoftext_in_its_vocabulary_reuses_that_id(tmp_path):
    vocab = {char: i for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab[st.END_OF_TEXT] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    path = tmp_path / "gpt2.json"
    tokenizer.save(str(path))
    loaded, added = load_tokenizer(path)
    assert st.END_OF_TEXT not in added and len(added) == len(st.SPECIAL_TOKENS) - 1
    assert loaded.token_to_id(st.END_OF_TEXT) == 256
    assert loaded.decode([65, 256, 66], skip_special_tokens=True) == loaded.decode([65, 66])


def test_load_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.json")


def test_token_ids_of_a_tokenizer_without_special_tokens_raise():
    with pytest.raises(ValueError, match="load_tokenizer"):
        TokenIds.from_tokenizer(_llama_style_tokenizer())


def test_record_texts_reads_captions_and_turns_without_image_markers():
    chat = {"conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
    assert record_texts({"json": json.dumps(chat).encode()}) == ["What colour?", "Red."]
    caption = {"txt": "a red circle".encode(), "json": json.dumps({"captions": ["a red circle", "a disc"]}).encode()}
    assert record_texts(caption) == ["a red circle", "a disc"]


def _write_shard(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _mmllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmllm.cli.main", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )


def test_tokenizer_train_command_reads_shards_in_subfolders(tmp_path):
    root = tmp_path / "shapes" / "train"
    captions = {}
    for i in range(30):
        captions[f"{i:05d}.txt"] = f"a red circle number {i} left of a blue square".encode()
        captions[f"{i:05d}.png"] = b"not decoded for tokenizer training"
    _write_shard(root / "captions" / "00000.tar", captions)
    chat = {"conversations": [{"from": "human", "value": "<image>\nWhere is the circle? 🙂"}, {"from": "gpt", "value": "Left."}]}
    _write_shard(root / "chat" / "00000.tar", {f"{i:05d}.json": json.dumps(chat).encode() for i in range(10)})
    out = tmp_path / "tok" / "tokenizer.json"
    result = _mmllm("tokenizer", "train", "--data", str(tmp_path / "shapes"), "--vocab-size", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "read 2 shards, 40 samples, 50 texts" in result.stdout
    assert f"vocab size {300}" in result.stdout
    tokenizer, added = load_tokenizer(out)
    assert added == []
    text = "Where is the circle? 🙂"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_tokenizer_train_command_reports_missing_folder_and_no_shards_in_one_line(tmp_path):
    missing = _mmllm("tokenizer", "train", "--data", str(tmp_path / "nope"), "--vocab-size", "300", "--out", "x.json")
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    empty = _mmllm("tokenizer", "train", "--data", str(tmp_path / "empty"), "--vocab-size", "300", "--out", "x.json")
    assert empty.returncode == 2 and "no *.tar shards" in empty.stderr
