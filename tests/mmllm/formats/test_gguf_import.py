"""GGUF in (mmllm.formats.gguf's reader) on a small text-only model written as GGUF here: its logits come back
exactly from an F32 file; every tensor type llama.cpp's own quantizer writes is read and agrees with
transformers' independent GGUF loader; the tokenizer rebuilt from the metadata tokenizes as llama.cpp does; and
files it cannot map are refused in one line naming the file and what is wrong, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from commands import run_mmllm
from tiny_models import tiny_text_model

from mmllm.errors import UsageError
from mmllm.formats.gguf import export_gguf, read_gguf
from mmllm.formats.model_folder import load_model_folder
from mmllm.formats.pretrained import text_only_model

gguf = pytest.importorskip("gguf")
PROMPTS = ["The quick brown fox", "def square(x):\n", "<|im_start|>user\nHi 42<|im_end|>\n", "Ünïcödé  🙂"]


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer.encode(text).ids])).logits[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, folder of model-f32.gguf and model-f16.gguf)."""
    model, tokenizer = tiny_text_model()
    out = tmp_path_factory.mktemp("gguf")
    export_gguf(model, tokenizer, model.config, out, name="tiny", kinds=("f32", "f16"))
    return model, tokenizer, out


def test_an_f32_gguf_reads_back_to_the_same_shape_tokenizer_and_logits(tiny):
    model, tokenizer, folder = tiny
    read = read_gguf(folder / "model-f32.gguf")
    assert read.config == model.config.lm
    assert read.eos_token_ids[0] == model.config.eos_token_ids[0] and read.chat_template == model.config.chat_template
    again = text_only_model(read)
    for text in PROMPTS:
        assert read.tokenizer.encode(text).ids == tokenizer.encode(text).ids
        assert torch.equal(logits(again, read.tokenizer, text), logits(model, tokenizer, text))


def test_mmllm_build_writes_a_text_only_folder_from_a_gguf_that_answers_as_the_file(tiny, tmp_path):
    model, tokenizer, folder = tiny
    result = run_mmllm("build", "--lm", folder / "model-f32.gguf", "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vision"] is None
    loaded, loaded_tokenizer, config = load_model_folder(tmp_path / "m")
    assert loaded.vision is None and loaded.projector is None and config.chat_template == model.config.chat_template
    assert torch.equal(logits(loaded, loaded_tokenizer, PROMPTS[0]), logits(model, tokenizer, PROMPTS[0]))


def test_an_f16_gguf_is_the_model_to_f16_rounding(tiny):
    model, tokenizer, folder = tiny
    again = text_only_model(read_gguf(folder / "model-f16.gguf"))
    rounded = {name: p.half().float() if p.dim() > 1 else p for name, p in model.state_dict().items()}
    reference, _ = tiny_text_model()
    reference.load_state_dict(rounded)
    torch.testing.assert_close(logits(again, tokenizer, PROMPTS[1]), logits(reference, tokenizer, PROMPTS[1]),
                               rtol=0, atol=1e-5)


def test_the_rebuilt_tokenizer_tokenizes_as_llama_cpp(tiny):
    llama_cpp = pytest.importorskip("llama_cpp")  # noqa: F841
    from mmllm.formats.llama_cpp import LlamaCppText

    _, _, folder = tiny
    read = read_gguf(folder / "model-f32.gguf")
    runner = LlamaCppText(folder / "model-f32.gguf", n_ctx=128)
    try:
        for text in [*PROMPTS, "1234567890", "  \n\n\t x", "<|im_end|><|im_start|>assistant\n"]:
            assert read.tokenizer.encode(text).ids == runner.tokenize(text), text
    finally:
        runner.close()


# llama.cpp's quantizer writes each type from the F32 file; the reader's dequantisation (gguf's own) is checked
# against transformers' GGUF loader, which dequantises with code of its own.
QUANT_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", QUANT_TYPES)
def test_every_tensor_type_reads_as_transformers_reads_it(tiny, tmp_path, kind):
    llama_cpp = pytest.importorskip("llama_cpp")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, tokenizer, folder = tiny
    path = tmp_path / f"model-{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    assert llama_cpp.llama_model_quantize(str(folder / "model-f32.gguf").encode(), str(path).encode(), params) == 0
    read = read_gguf(path)
    types = {tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors}
    assert types - {"F32"}, types  # the matrices were quantised
    ours = text_only_model(read)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-4)


def test_a_file_that_is_not_gguf_is_refused_by_name_and_bytes(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(UsageError, match=r"model\.gguf is not a GGUF file: bytes 0-3 are b'PK\\x03\\x04'"):
        read_gguf(path)


def test_a_truncated_file_is_refused_naming_the_tensor_and_the_byte_where_it_ends(tiny, tmp_path):
    _, _, folder = tiny
    whole = (folder / "model-f16.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 1000])
    with pytest.raises(UsageError, match=rf"cut\.gguf is truncated: tensor \S+ needs bytes up to {len(whole)}, but "
                                         rf"the file ends at byte {len(whole) - 1000}"):
        read_gguf(cut)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(whole[:64])
    with pytest.raises(UsageError, match=r"header\.gguf is not a readable GGUF file: its header is cut short"):
        read_gguf(header_only)


def rewritten(source: Path, out: Path, **changes) -> Path:
    """A copy of a GGUF with some metadata changed (key -> value) and its tensors as they were."""
    reader = gguf.GGUFReader(source)
    arch = changes.pop("general.architecture", reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(out, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture",):
            continue
        value = changes.pop(key, field.contents())
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key.replace(reader.fields["general.architecture"].contents(), arch), value)
        else:
            writer.add_key_value(key.replace(reader.fields["general.architecture"].contents(), arch), value, kind)
    for key, value in changes.items():
        writer.add_string(key, value)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("changes, message", [
    ({"general.architecture": "phi2"}, r"architecture 'phi2' is not supported"),
    ({"tokenizer.ggml.pre": "deepseek-coder"}, r"pre-tokenizer 'deepseek-coder' has no mapping here"),
    ({"tokenizer.ggml.model": "bert"}, r"tokenizer model 'bert' is not supported"),
    ({"llama.rope.scaling.type": "yarn"}, r"rope scaling 'yarn' is not supported"),
])
def test_what_cannot_be_mapped_is_refused_in_one_line_and_nothing_is_written(tiny, tmp_path, changes, message):
    _, _, folder = tiny
    path = rewritten(folder / "model-f16.gguf", tmp_path / "odd.gguf", **changes)
    with pytest.raises(UsageError, match=message):
        read_gguf(path)
    result = run_mmllm("build", "--lm", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "odd.gguf" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_tensor_type_mmllm_does_not_read_is_refused_naming_it(tiny, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, _, folder = tiny
    path = tmp_path / "iq4.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL
    assert llama_cpp.llama_model_quantize(str(folder / "model-f32.gguf").encode(), str(path).encode(), params) == 0
    with pytest.raises(UsageError, match=r"iq4\.gguf: tensor \S+ is of type IQ4_NL, which mmllm does not read"):
        read_gguf(path)


def test_build_refuses_a_tokenizer_or_vision_for_a_text_only_model_in_one_line(tiny, tmp_path):
    _, _, folder = tiny
    shutil.copy(folder / "model-f16.gguf", tmp_path / "m.gguf")
    result = run_mmllm("build", "--lm", tmp_path / "m.gguf", "--tokenizer", tmp_path / "t.json", "--out", tmp_path / "o")
    assert result.returncode == 2 and "keeps its own tokenizer" in result.stderr
