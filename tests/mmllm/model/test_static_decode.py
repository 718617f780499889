"""Static-cache decoding (fixed shapes, what torch.compile and CUDA graphs need) against the eager path and full
recomputation: the same greedy tokens for single prompts and left-padded batches whose rows stop at different
steps; the compiled step gives them too, and a second generation of the same bucket does not compile again."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmllm.model.generation import COMPILED_MIN_LENGTH, STATIC_BUCKET, generate, static_shapes, stream
from test_generation import greedy_by_recomputation, left_pad


def test_static_shapes_bucket_rows_to_powers_of_two_and_positions_to_the_bucket():
    assert static_shapes(1, 10, 512) == (1, STATIC_BUCKET)
    assert static_shapes(3, STATIC_BUCKET, 512) == (4, STATIC_BUCKET)
    assert static_shapes(5, STATIC_BUCKET + 1, 512) == (8, 2 * STATIC_BUCKET)
    assert static_shapes(2, 500, 512) == (2, 512)  # never past max_seq_len ...
    assert static_shapes(2, 511, 511) == (2, 511)  # ... nor under the length asked for
    # a compiled step's buckets double from COMPILED_MIN_LENGTH: few graphs for every length
    assert static_shapes(1, 10, 2048, compiled=True) == (1, COMPILED_MIN_LENGTH)
    assert static_shapes(1, 129, 2048, compiled=True) == (1, 256)
    assert static_shapes(1, 700, 2048, compiled=True) == (1, 1024)
    assert static_shapes(1, 700, 800, compiled=True) == (1, 800)


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
    # another batch of the same buckets (3 rows -> 4, length -> 128): no new graph
    shorter = dict(options, max_new_tokens=12)
    assert generate(model, **inputs, **shorter, decode="compiled") == generate(model, **inputs, **shorter)
    assert counters["stats"]["unique_graphs"] == compiled_once


def unmarked_mutated_inputs(step, model, cache, tokens, positions, key_is_real) -> list[str]:
    """Trace `step` with torch.compile and name the graph inputs it writes in place that are neither parameters,
    buffers nor marked static: the inputs that make Inductor skip CUDA graphs (its check_for_mutation)."""
    import operator

    import torch._dynamo

    found: list[str] = []

    def backend(gm, example_inputs):
        placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
        static = {node.name for node, tensor in zip(placeholders, example_inputs)
                  if isinstance(tensor, torch.nn.Parameter) or getattr(tensor, "_dynamo_static_input_type", None)}
        for node in gm.graph.nodes:
            writes = node.op == "call_function" and (node.target is operator.setitem or str(node.target).endswith("_"))
            target = node.args[0] if writes and node.args else None
            if getattr(target, "op", None) == "placeholder" and target.name not in static:
                found.append(target.name)
        return gm.forward

    torch._dynamo.reset()
    with torch.inference_mode():
        torch.compile(step, backend=backend, dynamic=False)(model, tokens, positions, cache, key_is_real)
    torch._dynamo.reset()
    return sorted(set(found))


def test_the_static_cache_is_one_allocation_marked_static_so_a_compiled_step_may_write_it(make_model):
    from mmllm.model.generation import StaticKVCache, static_decode_step

    model = make_model()
    lm = model.config.lm
    marked = StaticKVCache(lm, 2, 64, torch.float32, "cpu", compiled=True)
    base = marked.storage.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in (*marked.keys, *marked.values))  # one allocation
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in (*marked.keys, *marked.values))
    plain = StaticKVCache(lm, 2, 64, torch.float32, "cpu")  # eager static decoding: nothing to mark
    for cache in (marked, plain):
        cache.prefilled = True
    inputs = (torch.tensor([5, 6]), torch.tensor([3, 3]), torch.ones(2, 64, dtype=torch.bool))
    tokens, positions, key_is_real = inputs
    assert unmarked_mutated_inputs(static_decode_step, model, marked, tokens, positions, key_is_real) == []
    # the check can fail: the same step over an unmarked cache writes 2 * n_layers inputs in place
    flagged = unmarked_mutated_inputs(static_decode_step, model, plain, tokens, positions, key_is_real)
    assert len(flagged) == 2 * lm.n_layers
