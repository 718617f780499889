"""Prefix attention (`model.attention: prefix`, UniLM's and T5-as-decoder's seq2seq mask) on text-only chats, through
the processor and collate as training builds batches: the source (every turn before the supervised answer) is read
bidirectionally, the target causally, and generation reads a conversation with history as training did."""

from __future__ import annotations

import torch
from tiny_models import tiny_text_model

from data_pipelines.batching import collate
from mmllm.processing import processor_for

PAIR = [{"role": "user", "content": "Translate to German: the dog sleeps"}, {"role": "assistant", "content": "der Hund"}]


def chat_model(attention: str):
    model, tokenizer = tiny_text_model(dim=32)
    model.config.attention = attention
    return model, processor_for(model.config, tokenizer)


def forward_logits(model, batch: dict, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"] if input_ids is None else input_ids, attention_mask=batch["attention_mask"],
                     prefix_mask=batch["prefix_mask"]).logits[0]


def changed(input_ids: torch.Tensor, position: int) -> torch.Tensor:
    other = input_ids.clone()
    other[0, position] = (other[0, position] + 17) % 200 + 10
    return other


def test_text_chat_prefix_is_the_whole_templated_source_and_matches_the_generation_prompt():
    _, processor = chat_model("prefix")
    sample = processor.encode_conversation(PAIR)
    prompt = processor.encode_prompt(PAIR[:1])
    assert sample.input_ids[:sample.prefix_length] == prompt.input_ids  # user turn and the assistant header
    assert prompt.prefix_length == len(prompt.input_ids)
    assert all(label == -100 for label in sample.labels[:sample.prefix_length])
    assert sample.labels[sample.prefix_length] != -100  # the first target token is the first supervised one


def test_prefix_mode_source_tokens_see_later_source_tokens_and_never_the_target():
    for attention in ("prefix", "causal"):
        model, processor = chat_model(attention)
        batch = collate([processor.encode_conversation(PAIR)], pad_id=processor.pad_id)
        prefix = int(batch["prefix_mask"].sum())
        base = forward_logits(model, batch)
        later_source = forward_logits(model, batch, changed(batch["input_ids"], prefix - 4))  # a source word
        moved = (later_source[1] - base[1]).abs().max()  # the second source position
        assert moved > 1e-3 if attention == "prefix" else moved == 0, attention
        for target_position in range(prefix, batch["input_ids"].size(1)):
            later_target = forward_logits(model, batch, changed(batch["input_ids"], target_position))
            torch.testing.assert_close(later_target[:target_position], base[:target_position], rtol=0, atol=0)


def greedy_by_recomputation(model, ids: list[int], prefix_length: int, steps: int) -> list[int]:
    ids = list(ids)
    for _ in range(steps):
        prefix_mask = torch.zeros(1, len(ids), dtype=torch.bool)
        prefix_mask[0, :prefix_length] = True
        with torch.no_grad():
            logits = model(torch.tensor([ids]), prefix_mask=prefix_mask).logits[0, -1]
        logits[model.config.image_token_id] = float("-inf")  # as generation does
        ids.append(int(logits.argmax()))
    return ids[-steps:]


def test_generation_reads_a_conversation_with_history_with_the_training_prefix(tmp_path):
    import mmllm
    from mmllm.formats.model_folder import save_model_folder

    model, processor = chat_model("prefix")
    save_model_folder(model, processor.tokenizer, tmp_path / "model")
    conversation = [*PAIR, {"role": "user", "content": "Translate to German: the cat"}]
    prompt = processor.encode_prompt(conversation)
    assert prompt.prefix_length < len(prompt.input_ids)  # only the turns before the first answer
    expected = greedy_by_recomputation(model, prompt.input_ids, prompt.prefix_length, steps=6)
    whole_prompt = greedy_by_recomputation(model, prompt.input_ids, len(prompt.input_ids), steps=6)
    assert expected != whole_prompt  # the two readings differ for this model: the check below can tell them apart
    vlm = mmllm.load(tmp_path / "model")
    assert vlm.config.attention == "prefix"
    stop = set(vlm.config.eos_token_ids)
    answer = vlm.chat(conversation, max_new_tokens=6)
    tokens = expected[:next((i for i, t in enumerate(expected) if t in stop), len(expected))]
    assert answer == processor.decode(tokens).strip()


def test_the_serving_engine_reads_a_conversation_with_history_as_chat_does(tmp_path):
    import json
    import threading

    import mmllm
    from mmllm.formats.model_folder import save_model_folder
    from mmllm.serving.api import Limits, parse_completion
    from mmllm.serving.engine import Engine

    model, processor = chat_model("prefix")
    save_model_folder(model, processor.tokenizer, tmp_path / "model")
    vlm = mmllm.load(tmp_path / "model")
    conversation = [*PAIR, {"role": "user", "content": "Translate to German: the cat"}]
    request, _, _ = parse_completion(json.dumps({"messages": conversation, "max_tokens": 6}).encode(), vlm, Limits())
    done, answer = threading.Event(), []
    request.emit = lambda event: (answer.append(event[1]), done.set()) if event[0] in ("done", "error") else None
    engine = Engine(vlm, max_batch=2)
    engine.start()
    try:
        engine.submit(request)
        assert done.wait(timeout=60)
    finally:
        engine.stop()
    assert answer == [vlm.chat(conversation, max_new_tokens=6)]
