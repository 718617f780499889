"""Generation: KV-cache decoding against full recomputation, left-padded batches against one prompt at a
time, stopping, streaming and sampling."""

from __future__ import annotations

import pytest
import torch

from mmllm.model.generation import KVCache, decode_step, generate, prefill, sample_next_token, stream


def full_forward_logits(model, sequence, pixel_values, prompt_len):
    """Reference: the whole sequence through VLM.forward (prompt = prefix in prefix mode). (T, V)."""
    prefix_mask = (torch.arange(len(sequence)) < prompt_len)[None]
    with torch.no_grad():
        return model(sequence[None], pixel_values, prefix_mask=prefix_mask).logits[0]


def greedy_by_recomputation(model, prompt, pixel_values, steps):
    """Reference: prompt + `steps` greedy tokens, recomputing the whole sequence every step (image id never
    generated)."""
    sequence = prompt
    for _ in range(steps):
        next_logits = full_forward_logits(model, sequence, pixel_values, len(prompt))[-1]
        next_logits[model.config.image_token_id] = float("-inf")
        sequence = torch.cat([sequence, next_logits.argmax()[None]])
    return sequence


def left_pad(prompts, pad_id=0):
    T = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), T), pad_id)
    attention_mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, T - len(p) :] = p
        attention_mask[row, T - len(p) :] = 1
    return input_ids, attention_mask


@pytest.mark.parametrize("attention,qk_norm", [("causal", False), ("prefix", False), ("causal", True)])
def test_kv_cache_decoding_matches_full_recomputation(attention, qk_norm, make_model, make_prompt, make_images):
    model = make_model(attention, qk_norm=qk_norm)
    prompt = make_prompt(model, 10, 2)  # 8 image tokens + 10 text tokens
    pixel_values = make_images(2)
    steps = 32

    sequence = greedy_by_recomputation(model, prompt, pixel_values, steps)
    expected_tokens = sequence[len(prompt) :].tolist()
    assert len(set(expected_tokens)) > 3  # a sequence worth comparing, not one token repeated

    assert generate(model, prompt[None], pixel_values=pixel_values, max_new_tokens=steps, stop_ids=[]) == [
        expected_tokens
    ]

    # Logits at every step: prefill + decode steps fed the reference tokens vs the full forward.
    full = full_forward_logits(model, sequence, pixel_values, len(prompt))  # (T + steps, V)
    cache = KVCache(model.config.lm, batch_size=1, max_len=len(sequence))
    with torch.no_grad():
        step_logits = [prefill(model, model.embed(prompt[None], pixel_values), torch.ones(1, len(prompt)), cache)]
        for i, token in enumerate(expected_tokens[:-1]):
            position = torch.tensor([len(prompt) + i])
            step_logits.append(decode_step(model, torch.tensor([token]), position, cache))
    torch.testing.assert_close(torch.cat(step_logits), full[len(prompt) - 1 : -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["causal", "prefix"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(attention, make_model, make_prompt, make_images):
    model = make_model(attention)
    prompts = [make_prompt(model, 3, 1, seed=1), make_prompt(model, 9, 0, seed=2), make_prompt(model, 5, 2, seed=3)]
    images = [make_images(1, seed=1), None, make_images(2, seed=3)]
    # A stop id that row 0 really produces early, so rows finish at different steps.
    stop_id = generate(model, prompts[0][None], pixel_values=images[0], max_new_tokens=6, stop_ids=[])[0][5]
    options = dict(max_new_tokens=20, stop_ids=[stop_id])

    alone = [generate(model, p[None], pixel_values=im, **options)[0] for p, im in zip(prompts, images)]
    input_ids, attention_mask = left_pad(prompts)
    batched = generate(model, input_ids, attention_mask, torch.cat([images[0], images[2]]), torch.tensor([1, 0, 2]),
                       **options)
    assert batched == alone
    assert len(alone[0]) < 20  # row 0 stopped early and left the batch


def test_finished_rows_leave_the_batch_and_the_stream(make_model, make_prompt):
    model = make_model()
    prompts = [make_prompt(model, 6, seed=1), make_prompt(model, 8, seed=2)]
    stop_id = generate(model, prompts[0][None], max_new_tokens=3, stop_ids=[])[0][2]
    decode_batch_sizes = []
    hook = model.lm.register_forward_hook(lambda module, args, out: decode_batch_sizes.append(out.size(0)))
    input_ids, attention_mask = left_pad(prompts)
    steps = list(stream(model, input_ids, attention_mask, max_new_tokens=10, stop_ids=[stop_id]))
    hook.remove()
    stop_step = next(i for i, step in enumerate(steps) if step.get(0) == stop_id)
    assert all(0 in step for step in steps[: stop_step + 1])
    assert all(list(step) == [1] for step in steps[stop_step + 1 :])
    assert decode_batch_sizes[stop_step + 1 :] == [1] * (len(decode_batch_sizes) - stop_step - 1)
    assert decode_batch_sizes[: stop_step + 1] == [2] * (stop_step + 1)  # prefill and steps before the stop


def test_generate_collects_the_stream_without_the_stop_token(make_model, make_prompt):
    model = make_model()
    prompt = make_prompt(model, 6)[None]
    streamed = [step[0] for step in stream(model, prompt, max_new_tokens=12, stop_ids=[])]
    stop_id = streamed[4]
    stop_at = streamed.index(stop_id)
    assert generate(model, prompt, max_new_tokens=12, stop_ids=[stop_id]) == [streamed[:stop_at]]
    assert [step[0] for step in stream(model, prompt, max_new_tokens=12, stop_ids=[stop_id])] == streamed[: stop_at + 1]
    assert generate(model, prompt, max_new_tokens=12, stop_ids=[]) == [streamed]


def test_default_stop_ids_are_the_config_eos_ids(make_model, make_prompt):
    model = make_model()
    prompt = make_prompt(model, 6)[None]
    free_run = generate(model, prompt, max_new_tokens=8, stop_ids=[])[0]
    model.config.eos_token_ids = [free_run[3]]
    assert generate(model, prompt, max_new_tokens=8) == [free_run[: free_run.index(free_run[3])]]


def test_generation_ends_at_max_seq_len(make_model, make_prompt):
    model = make_model()  # max_seq_len 96
    prompt = make_prompt(model, 90)[None]
    assert len(generate(model, prompt, max_new_tokens=20, stop_ids=[])[0]) == 6


def test_bad_prompts_raise_value_errors(make_model, make_prompt, make_images):
    model = make_model()
    with pytest.raises(ValueError, match="4 longer than max_seq_len 96"):
        generate(model, make_prompt(model, 100)[None])
    with pytest.raises(ValueError, match=r"found 4 image tokens but 2 images need 8"):
        generate(model, make_prompt(model, 5, 1)[None], pixel_values=make_images(2))
    input_ids, attention_mask = left_pad([make_prompt(model, 3), make_prompt(model, 5)])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, input_ids, attention_mask.flip(1))


def test_seeded_sampling_is_reproducible(make_model, make_prompt):
    model = make_model()
    prompt = make_prompt(model, 6)[None]
    options = dict(max_new_tokens=16, temperature=1.5, stop_ids=[])
    first = generate(model, prompt, seed=7, **options)
    assert generate(model, prompt, seed=7, **options) == first
    assert any(generate(model, prompt, seed=s, **options) != first for s in (8, 9, 10))


def test_top_k_1_and_tiny_top_p_sample_the_greedy_tokens(make_model, make_prompt, make_images):
    model = make_model()
    prompt = make_prompt(model, 6, 1)[None]
    options = dict(pixel_values=make_images(1), max_new_tokens=16, stop_ids=[])
    greedy = generate(model, prompt, **options)
    assert generate(model, prompt, temperature=1.0, top_k=1, seed=0, **options) == greedy
    assert generate(model, prompt, temperature=1.0, top_p=1e-6, seed=0, **options) == greedy


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    logits = probs.log().expand(2000, 5)
    generator = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, 1.0, top_k=2, generator=generator)
    assert set(top2.tolist()) == {1, 3}
    # top_p 0.6: 0.4 (< 0.6 so far), then 0.3 reaches it; 0.15 and below are dropped.
    nucleus = sample_next_token(logits, 1.0, top_p=0.6, generator=generator)
    assert set(nucleus.tolist()) == {1, 3}
    share_of_best = (nucleus == 1).float().mean().item()
    assert abs(share_of_best - 0.4 / 0.7) < 0.05  # renormalised over the nucleus
    everything = sample_next_token(logits, 1.0, generator=generator)
    assert set(everything.tolist()) == {0, 1, 2, 3, 4}


def test_images_are_encoded_once_in_prefill(make_model, make_prompt, make_images):
    model = make_model()
    calls = []
    hook = model.vision.register_forward_hook(lambda module, args, out: calls.append(out.size(0)))
    generate(model, make_prompt(model, 4, 2)[None], pixel_values=make_images(2), max_new_tokens=8, stop_ids=[])
    hook.remove()
    assert calls == [2]


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_a_text_only_model_can_generate_the_last_token_of_its_vocabulary(decode):
    """A text-only model's image_token_id is -1: no slot to mask, and -1 must not mask the vocabulary's last token."""
    from tiny_models import tiny_text_model

    model, _ = tiny_text_model()
    last = model.config.lm.vocab_size - 1
    head = model.lm.logits
    bonus = torch.zeros(model.config.lm.vocab_size)
    bonus[last] = 100.0
    model.lm.logits = lambda hidden: head(hidden) + bonus  # the model prefers the last token everywhere
    out = generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=2, decode=decode)
    assert out == [[last, last]]
