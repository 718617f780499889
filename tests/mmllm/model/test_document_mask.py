"""flex_attention document masks for packed rows: the block mask follows the dense mask's rule pair by pair and
gives the dense mask's logits and loss (forward only here: torch has no flex_attention backward on CPUs, so a
CPU fit with it is refused by name)."""

from __future__ import annotations

import itertools

import shutil

import pytest
import torch

from mmllm.model.document_mask import document_block_mask
from mmllm.model.vlm import build_attention_mask
from test_attention import packed_masks

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def test_the_block_mask_allows_exactly_the_pairs_of_the_dense_mask():
    segment_ids, attention_mask, prefix_mask = packed_masks()
    B, T = segment_ids.shape
    dense = build_attention_mask(T, attention_mask, segment_ids, prefix_mask)[:, 0]
    block = document_block_mask(T, attention_mask, segment_ids, prefix_mask, torch.device("cpu"))
    for b, q, k in itertools.product(range(B), range(T), range(T)):
        assert bool(block.mask_mod(torch.tensor(b), 0, torch.tensor(q), torch.tensor(k))) == bool(dense[b, q, k])


def _packed(model, make_prompt, make_images):
    samples = [make_prompt(model, 9, 1, seed=1), make_prompt(model, 7, 0, seed=2), make_prompt(model, 5, 2, seed=3)]
    packed = torch.cat(samples + [torch.zeros(3, dtype=torch.long)])[None]  # 3 trailing pads
    segment_ids = torch.cat([torch.full((len(s),), i + 1) for i, s in enumerate(samples)] + [torch.zeros(3)])
    prefix = torch.cat([torch.arange(len(s)) < len(s) // 2 for s in samples] + [torch.zeros(3, dtype=torch.bool)])
    return dict(input_ids=packed, pixel_values=make_images(3), image_counts=torch.tensor([3]),
                segment_ids=segment_ids.long()[None], prefix_mask=prefix[None], labels=packed.clone())


@pytest.mark.parametrize("attention", ["causal", "prefix"])
def test_flex_document_masks_give_the_dense_mask_logits_and_loss(attention, make_model, make_prompt, make_images):
    model = make_model(attention)
    inputs = _packed(model, make_prompt, make_images)
    outputs = {}
    for kernel in ("dense", "flex"):
        model.packed_attention = kernel
        with torch.no_grad():
            outputs[kernel] = model(**inputs)
    real = inputs["segment_ids"][0] > 0  # pads' own outputs are unused (and differ: they see nothing else)
    torch.testing.assert_close(outputs["flex"].logits[:, real], outputs["dense"].logits[:, real], atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(outputs["flex"].loss, outputs["dense"].loss, atol=1e-6, rtol=1e-6)


def test_a_cpu_fit_with_flex_attention_is_refused_by_name():
    from mmllm.model.document_mask import check_trainable

    with pytest.raises(ValueError, match="packed_attention flex needs a GPU"):
        check_trainable("flex", torch.device("cpu"))
    check_trainable("dense", torch.device("cpu"))
    check_trainable("flex", torch.device("cuda"))  # a device object is enough: nothing is allocated


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_the_compiled_block_mask_is_the_eager_one():
    # compiled is the default off a CPU: built tile by tile, without the (B, 1, T, T) intermediates of the eager
    # builder (bench/block_mask_memory.py: 793 MiB eagerly at T = 8192, nothing above compiling's own peak)
    from mmllm.model.document_mask import document_block_mask

    segment_ids = torch.tensor([[1] * 100 + [2] * 200 + [3] * 150 + [0] * 62])
    prefix = torch.zeros_like(segment_ids, dtype=torch.bool)
    prefix[:, 100:140] = True
    eager = document_block_mask(512, None, segment_ids, prefix, torch.device("cpu"), compiled=False)
    compiled = document_block_mask(512, None, segment_ids, prefix, torch.device("cpu"), compiled=True)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(eager, name), getattr(compiled, name)), name
