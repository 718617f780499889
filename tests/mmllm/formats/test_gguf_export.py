"""`mmllm export --format gguf`: the language model and mmproj files llama.cpp runs. The files hold llama.cpp's
names, types and tokenizer (read back with gguf's reader), and llama.cpp itself, through llama-cpp-python,
answers greedily as `mmllm ask` does on the same images and questions."""

from __future__ import annotations

import json

import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from idefics3_helpers import photo  # noqa: E402
from mmllm.cli.main import main  # noqa: E402
from mmllm.formats.gguf import rotary_pairs_interleaved  # noqa: E402
from mmllm.formats.model_folder import load_model_folder  # noqa: E402

QUESTIONS = ["What colour is the circle?", "Describe the image.", "Where is the star?"]


@pytest.fixture(scope="module")
def exported(imported_splitting, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    assert main(["export", str(imported_splitting), "--format", "gguf", "--out", str(out)]) == 0
    return out


def tensors_of(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {tensor.name: tensor for tensor in reader.tensors}, reader


def test_gguf_files_hold_the_weights_under_llama_cpps_names_and_types(imported_splitting, exported):
    model, tokenizer, config = load_model_folder(imported_splitting)
    state = model.state_dict()
    types = gguf.GGMLQuantizationType
    text, reader = tensors_of(exported / "model-f16.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens[:tokenizer.get_vocab_size()] == [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    assert reader.fields["tokenizer.chat_template"].contents() == config.chat_template
    # q rows reordered for llama.cpp's interleaved rotary pairs; F16 holds the weight to F16's rounding.
    q = torch.from_numpy(text["blk.0.attn_q.weight"].data.copy()).float()
    expected = rotary_pairs_interleaved(state["lm.layers.0.self_attn.q_proj.weight"], config.lm.n_heads)
    assert text["blk.0.attn_q.weight"].tensor_type == types.F16
    torch.testing.assert_close(q, expected.half().float(), rtol=0, atol=0)
    assert text["blk.0.attn_norm.weight"].tensor_type == types.F32
    quantized, _ = tensors_of(exported / "model-q8_0.gguf")
    assert quantized["blk.0.ffn_up.weight"].tensor_type == types.Q8_0
    vision, reader = tensors_of(exported / "mmproj-f16.gguf")
    assert reader.fields["clip.projector_type"].contents() == "idefics3"
    assert reader.fields["clip.vision.preproc_image_size"].contents() == config.longest_edge
    assert vision["v.position_embd.weight"].tensor_type == types.F32
    fc = torch.from_numpy(vision["mm.model.fc.weight"].data.copy()).float()
    torch.testing.assert_close(fc, state["projector.proj.weight"].half().float(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def llama_cpp_f16(exported):
    pytest.importorskip("llama_cpp")  # built from source by .ci/setup
    from mmllm.formats.llama_cpp import LlamaCpp

    runner = LlamaCpp(exported / "model-f16.gguf", exported / "mmproj-f16.gguf")
    yield runner
    runner.close()


def test_llama_cpp_answers_as_mmllm_ask_does(imported_splitting, llama_cpp_f16, tmp_path, capsys):
    _, tokenizer, config = load_model_folder(imported_splitting)
    answers = []
    for seed, (size, question) in enumerate(zip([(96, 96), (70, 50), (40, 90)], QUESTIONS)):
        path = tmp_path / f"{seed}.png"
        photo(*size, seed=seed).save(path)
        capsys.readouterr()
        assert main(["ask", "--model", str(imported_splitting), str(path), question, "--max-new-tokens", "10",
                     "--json"]) == 0
        expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]
        ids = llama_cpp_f16.answer(llama_cpp_f16.question_prompt(config.chat_template, question), [path],
                                   list(config.eos_token_ids), max_new_tokens=10)
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == expected, (size, question)
        answers.append(expected)
    assert len(set(answers)) > 1 and all(answers)


def test_gguf_export_refuses_a_model_without_image_splitting_in_one_line(imported, tmp_path, capsys):
    capsys.readouterr()
    assert main(["export", str(imported), "--format", "gguf", "--out", str(tmp_path / "gguf")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.image_splitting true" in lines[0]
    assert not list((tmp_path / "gguf").glob("*.gguf"))


def test_pre_tokenizers_map_to_llama_cpps_names_and_others_are_refused():
    from mmllm.errors import UsageError
    from mmllm.formats.gguf import llama_cpp_pre_tokenizer

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bpe = {"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}, "normalizer": None}
    assert llama_cpp_pre_tokenizer({**bpe, "pre_tokenizer": byte_level}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert llama_cpp_pre_tokenizer({**bpe, "pre_tokenizer": smollm}) == "smollm"  # SmolLM2's, SmolVLM's LM
    for other in ({**bpe, "pre_tokenizer": {"type": "Whitespace"}},
                  {**bpe, "pre_tokenizer": {**byte_level, "add_prefix_space": True}},
                  {**bpe, "pre_tokenizer": byte_level, "normalizer": {"type": "NFC"}},
                  {"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}, "pre_tokenizer": byte_level}):
        with pytest.raises(UsageError, match="cannot export to GGUF"):
            llama_cpp_pre_tokenizer(other)
