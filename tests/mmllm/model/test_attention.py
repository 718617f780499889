"""Who sees whom: causality, prefix-LM, padding and packed segments, checked on the model's logits and on
the mask builder against a per-pair reference."""

from __future__ import annotations

import itertools

import torch

from mmllm.model.vlm import build_attention_mask, default_position_ids


def logits(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids, **kwargs).logits


def test_causal_logits_at_t_ignore_later_tokens(make_model, make_prompt, make_images):
    model = make_model()
    input_ids = make_prompt(model, 16, 1)[None]  # 4 image tokens + 16 text
    changed = input_ids.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % 90 + 4
    before = logits(model, input_ids, pixel_values=make_images(1))
    after = logits(model, changed, pixel_values=make_images(1))
    torch.testing.assert_close(before[:, :12], after[:, :12], rtol=0, atol=1e-6)
    assert (before[:, 12:] - after[:, 12:]).abs().max() > 1e-2


def test_prefix_mode_prompt_is_bidirectional_and_answer_causal(make_model, make_prompt, make_images):
    model = make_model("prefix")
    input_ids = make_prompt(model, 16, 1)[None]  # positions 0..11 are the prompt, 12..19 the answer
    prefix_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prefix_mask[0, :12] = True
    pixel_values = make_images(1)
    base = logits(model, input_ids, pixel_values=pixel_values, prefix_mask=prefix_mask)

    later_prompt_token = input_ids.clone()
    later_prompt_token[0, 10] = (later_prompt_token[0, 10] + 5) % 90 + 4
    changed = logits(model, later_prompt_token, pixel_values=pixel_values, prefix_mask=prefix_mask)
    assert (changed[0, 5] - base[0, 5]).abs().max() > 1e-2  # an earlier prompt position sees position 10
    assert (changed[0, :4] - base[0, :4]).abs().max() > 1e-2  # so do the image tokens

    later_answer = input_ids.clone()
    later_answer[0, 16:] = (later_answer[0, 16:] + 5) % 90 + 4
    changed = logits(model, later_answer, pixel_values=pixel_values, prefix_mask=prefix_mask)
    torch.testing.assert_close(changed[0, :16], base[0, :16], rtol=0, atol=1e-6)  # nobody sees the future

    causal = logits(model, input_ids, pixel_values=pixel_values)  # no prefix_mask: plain causal
    assert (causal[0, 5] - base[0, 5]).abs().max() > 1e-2


def test_causal_mode_ignores_prefix_mask(make_model, make_prompt):
    model = make_model("causal")
    input_ids = make_prompt(model, 12)[None]
    prefix_mask = torch.ones_like(input_ids, dtype=torch.bool)
    torch.testing.assert_close(logits(model, input_ids, prefix_mask=prefix_mask), logits(model, input_ids))


def test_left_and_right_padding_give_the_unpadded_logits(make_model, make_prompt, make_images):
    for attention in ("causal", "prefix"):
        model = make_model(attention)
        sample = make_prompt(model, 10, 1)
        prefix = torch.zeros(14, dtype=torch.bool)
        prefix[:8] = True
        alone = logits(model, sample[None], pixel_values=make_images(1), prefix_mask=prefix[None])
        pad = torch.zeros(5, dtype=torch.long)
        for padded, real in [(torch.cat([pad, sample]), slice(5, 19)), (torch.cat([sample, pad]), slice(0, 14))]:
            mask = torch.zeros(19, dtype=torch.long)
            mask[real] = 1
            padded_prefix = torch.zeros(19, dtype=torch.bool)
            padded_prefix[real] = prefix
            out = logits(model, padded[None], pixel_values=make_images(1), attention_mask=mask[None],
                         prefix_mask=padded_prefix[None])
            torch.testing.assert_close(out[0, real], alone[0], atol=1e-5, rtol=1e-5)


def test_packed_sample_gives_the_same_logits_as_alone(make_model, make_prompt, make_images):
    for attention in ("causal", "prefix"):
        model = make_model(attention)
        samples = [make_prompt(model, 9, 1, seed=1), make_prompt(model, 7, 0, seed=2), make_prompt(model, 5, 2, seed=3)]
        pixel_values = make_images(3)
        image_batches = [pixel_values[:1], None, pixel_values[1:]]
        prefixes = [torch.arange(len(s)) < len(s) // 2 for s in samples]
        packed = torch.cat(samples + [torch.zeros(3, dtype=torch.long)])[None]  # 3 trailing pads
        segment_ids = torch.cat([torch.full((len(s),), i + 1) for i, s in enumerate(samples)] + [torch.zeros(3)])
        packed_prefix = torch.cat(prefixes + [torch.zeros(3, dtype=torch.bool)])[None]
        out = logits(model, packed, pixel_values=pixel_values, image_counts=torch.tensor([3]),
                     segment_ids=segment_ids.long()[None], prefix_mask=packed_prefix)
        start = 0
        for sample, images, prefix in zip(samples, image_batches, prefixes):
            alone = logits(model, sample[None], pixel_values=images, prefix_mask=prefix[None])
            torch.testing.assert_close(out[0, start : start + len(sample)], alone[0], atol=1e-5, rtol=1e-5)
            start += len(sample)


def test_position_ids_restart_in_each_segment_and_skip_left_padding():
    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert default_position_ids(segment_ids, segment_ids=segment_ids).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    attention_mask = torch.tensor([[0, 0, 1, 1, 1]])
    assert default_position_ids(attention_mask, attention_mask).tolist() == [[0, 0, 0, 1, 2]]


def packed_masks() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(segment_ids, attention_mask, prefix_mask) of 3 rows of 9: packed, one sample, left-padded; random prefixes."""
    generator = torch.Generator().manual_seed(0)
    segment_ids = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 2, 2, 2]])
    return segment_ids, (segment_ids > 0).long(), torch.rand(3, 9, generator=generator) < 0.5


def test_mask_builder_matches_the_rule_pair_by_pair():
    segment_ids, attention_mask, prefix_mask = packed_masks()
    B, T = segment_ids.shape
    mask = build_attention_mask(T, attention_mask, segment_ids, prefix_mask)
    assert mask.shape == (B, 1, T, T)
    for b, q, k in itertools.product(range(B), range(T), range(T)):
        same_segment = segment_ids[b, q] == segment_ids[b, k]
        order = k <= q or bool(prefix_mask[b, q] and prefix_mask[b, k])
        expected = (bool(attention_mask[b, k]) and bool(same_segment) and order) or q == k
        assert bool(mask[b, 0, q, k]) == expected, (b, q, k)


def test_mask_builder_uses_the_causal_fast_path_only_when_exact():
    right_padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert build_attention_mask(4) is None
    assert build_attention_mask(4, right_padded) is None
    assert build_attention_mask(4, left_padded) is not None
    assert build_attention_mask(4, segment_ids=right_padded) is not None
    assert build_attention_mask(4, prefix_mask=right_padded.bool()) is not None
