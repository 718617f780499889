"""Static-cache decoding (fixed shapes, what torch.compile and CUDA graphs need) against the eager path and full
recomputation: the same greedy tokens for single prompts and left-padded batches whose rows stop at different
steps; the compiled step gives them too, and a second generation of the same bucket does not compile again."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmllm.model.generation import STATIC_BUCKET, generate, static_shapes, stream
from test_generation import greedy_by_recomputation, left_pad


def test_static_shapes_bucket_rows_to_powers_of_two_and_positions_to_the_bucket():
    assert static_shapes(1, 10, 512) == (1, STATIC_BUCKET)
    assert static_shapes(3, STATIC_BUCKET, 512) == (4, STATIC_BUCKET)
    assert static_shapes(5, STATIC_BUCKET + 1, 512) == (8, 2 * STATIC_BUCKET)
    assert static_shapes(2, 500, 512) == (2, 512)  # never past max_seq_len ...
    assert static_shapes(2, 511, 511) == (2, 511)  # ... nor under the length asked for


@pytest.mark.parametrize("attention", ["causal", "prefix"])
def test_static_decoding_gives_the_greedy_tokens_of_full_recomputation(attention, make_model, make_prompt,
                                                                      make_images):
    model = make_model(attention)
    prompt = make_prompt(model, 10, 2)
    pixel_values = make_images(2)
    steps = 24
    expected = greedy_by_recomputation(model, prompt, pixel_values, steps)[len(prompt):].tolist()
    assert len(set(expected)) > 3
    for decode in ("eager", "static"):
        assert generate(model, prompt[None], pixel_values=pixel_values, max_new_tokens=steps, stop_ids=[],
                        decode=decode) == [expected], decode


def _batch(model, make_prompt, make_images):
    prompts = [make_prompt(model, 3, 1, seed=1), make_prompt(model, 9, 0, seed=2), make_prompt(model, 5, 2, seed=3)]
    images = [make_images(1, seed=1), None, make_images(2, seed=3)]
    stop_id = generate(model, prompts[0][None], pixel_values=images[0], max_new_tokens=6, stop_ids=[])[0][5]
    input_ids, attention_mask = left_pad(prompts)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.cat([images[0], images[2]]),
                  image_counts=torch.tensor([1, 0, 2]))
    return inputs, dict(max_new_tokens=20, stop_ids=[stop_id])


def test_a_static_left_padded_batch_stops_rows_where_eager_does(make_model, make_prompt, make_images):
    model = make_model()
    inputs, options = _batch(model, make_prompt, make_images)
    eager = generate(model, **inputs, **options)
    assert len(eager[0]) < 20  # row 0 stops early: the static batch keeps it but stops yielding it
    assert generate(model, **inputs, **options, decode="static") == eager
    static_steps = list(stream(model, **inputs, **options, decode="static"))
    assert static_steps == list(stream(model, **inputs, **options))
    with pytest.raises(ValueError, match="unknown decode"):
        generate(model, **inputs, decode="fast")


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_the_compiled_step_gives_eager_greedy_tokens_and_compiles_once_per_bucket(make_model, make_prompt,
                                                                                  make_images):
    import torch._dynamo

    torch._dynamo.reset()
    model = make_model()
    inputs, options = _batch(model, make_prompt, make_images)
    eager = generate(model, **inputs, **options)
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert generate(model, **inputs, **options, decode="compiled") == eager
    compiled_once = counters["stats"]["unique_graphs"]
    assert compiled_once >= 1
    # another batch of the same buckets (3 rows -> 4, length -> 64): no new graph
    shorter = dict(options, max_new_tokens=12)
    assert generate(model, **inputs, **shorter, decode="compiled") == generate(model, **inputs, **shorter)
    assert counters["stats"]["unique_graphs"] == compiled_once
