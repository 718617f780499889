"""VLM: images spliced into their placeholders, images reaching the logits and the gradients, the loss,
errors a caller can cause, parameter names and counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F



def batch_with_images(make_model, make_prompt, make_images, attention="causal"):
    """Two samples, 1 and 2 images, the same length."""
    model = make_model(attention)
    input_ids = torch.stack([make_prompt(model, 14, 1, seed=1), make_prompt(model, 10, 2, seed=2)])
    return model, input_ids, make_images(3), torch.tensor([1, 2])


def test_images_are_written_into_their_placeholder_blocks_in_reading_order(make_model, make_prompt, make_images):
    model, input_ids, pixel_values, counts = batch_with_images(make_model, make_prompt, make_images)
    with torch.no_grad():
        embeds = model.embed(input_ids, pixel_values, counts)
        image_embeds = model.encode_images(pixel_values)  # (3, 4, dim)
        text_embeds = model.lm.embed_tokens(input_ids)
    n = model.config.tokens_per_image
    torch.testing.assert_close(embeds[0, :n], image_embeds[0])
    torch.testing.assert_close(embeds[1, :n], image_embeds[1])
    torch.testing.assert_close(embeds[1, n : 2 * n], image_embeds[2])
    torch.testing.assert_close(embeds[0, n:], text_embeds[0, n:])
    torch.testing.assert_close(embeds[1, 2 * n :], text_embeds[1, 2 * n :])


def test_changing_the_image_changes_the_logits(make_model, make_prompt, make_images):
    model, input_ids, pixel_values, counts = batch_with_images(make_model, make_prompt, make_images)
    with torch.no_grad():
        before = model(input_ids, pixel_values, counts).logits
        after = model(input_ids, pixel_values + 0.5 * torch.randn_like(pixel_values), counts).logits
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-2


def test_gradients_reach_projector_and_vision_encoder(make_model, make_prompt, make_images):
    model, input_ids, pixel_values, counts = batch_with_images(make_model, make_prompt, make_images)
    labels = input_ids.clone()
    labels[input_ids == model.config.image_token_id] = -100
    model(input_ids, pixel_values, counts, labels=labels).loss.backward()
    for name in ("vision.embeddings.patch_embedding.weight", "vision.encoder.layers.0.self_attn.q_proj.weight",
                 "projector.fc1.weight", "projector.fc2.weight", "lm.layers.0.mlp.up_proj.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_qk_norm_weights_get_gradients_and_bound_the_attention_logits(make_model, make_prompt, make_images):
    model = make_model(qk_norm=True)
    attention = model.lm.layers[0].self_attn
    input_ids = make_prompt(model, 12)[None]
    model(input_ids, labels=input_ids).loss.backward()
    for norm in (attention.q_norm, attention.k_norm):
        assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    # Scaling the query and key projections 100x leaves the logits unchanged: the norms undo it.
    with torch.no_grad():
        before = model(input_ids).logits
        for layer in model.lm.layers:
            layer.self_attn.q_proj.weight.mul_(100)
            layer.self_attn.k_proj.weight.mul_(100)
        torch.testing.assert_close(model(input_ids).logits, before, atol=1e-4, rtol=1e-4)


def test_loss_is_mean_cross_entropy_of_supervised_next_tokens(make_model, make_prompt):
    model = make_model()
    input_ids = torch.stack([make_prompt(model, 12, seed=1), make_prompt(model, 12, seed=2)])
    labels = input_ids.clone()
    labels[0, :5] = -100
    labels[1, 8:] = -100
    out = model(input_ids, labels=labels)
    # Reference: a loop over every supervised (sample, position) pair.
    losses = [
        F.cross_entropy(out.logits[b, t - 1], labels[b, t])
        for b in range(2) for t in range(1, 12) if labels[b, t] != -100
    ]
    torch.testing.assert_close(out.loss, torch.stack(losses).mean())
    assert out.token_losses.shape == (2, 11)
    assert (out.token_losses[labels[:, 1:] == -100] == 0).all()
    torch.testing.assert_close(out.token_losses[0, 4], F.cross_entropy(out.logits[0, 4], labels[0, 5]))


def test_too_many_image_placeholders_raise_with_the_counts(make_model, make_prompt, make_images):
    model = make_model()
    input_ids = make_prompt(model, 6, 3)[None]  # 12 image tokens
    with pytest.raises(ValueError, match=r"found 12 image tokens but 2 images need 8 \(4 per image\)"):
        model(input_ids, make_images(2))
    with pytest.raises(ValueError, match=r"found 12 image tokens but 0 images need 0"):
        model(input_ids)


def test_image_counts_that_disagree_with_a_sample_raise(make_model, make_prompt, make_images):
    model, input_ids, pixel_values, _ = batch_with_images(make_model, make_prompt, make_images)
    with pytest.raises(ValueError, match=r"sample 0 has 4 image tokens but its 2 images need 8"):
        model(input_ids, pixel_values, torch.tensor([2, 1]))


def test_sequence_longer_than_max_seq_len_raises_saying_by_how_much(make_model):
    model = make_model()  # max_seq_len 96
    with pytest.raises(ValueError, match=r"sequence of 100 tokens is 4 longer than max_seq_len 96"):
        model(torch.full((1, 100), 5))


def test_parameter_names_follow_the_hf_layout(make_model):
    names = set(make_model().state_dict())
    for name in [
        "lm.embed_tokens.weight", "lm.layers.1.input_layernorm.weight", "lm.layers.1.self_attn.q_proj.weight",
        "lm.layers.1.self_attn.o_proj.weight", "lm.layers.1.post_attention_layernorm.weight",
        "lm.layers.1.mlp.gate_proj.weight", "lm.layers.1.mlp.up_proj.weight", "lm.layers.1.mlp.down_proj.weight",
        "lm.norm.weight", "vision.embeddings.patch_embedding.weight", "vision.embeddings.patch_embedding.bias",
        "vision.embeddings.position_embedding.weight", "vision.encoder.layers.1.layer_norm1.weight",
        "vision.encoder.layers.1.self_attn.out_proj.bias", "vision.encoder.layers.1.layer_norm2.bias",
        "vision.encoder.layers.1.mlp.fc1.weight", "vision.encoder.layers.1.mlp.fc2.bias",
        "vision.post_layernorm.weight", "projector.fc1.weight", "projector.fc2.bias",
    ]:
        assert name in names, name
    assert "lm.lm_head.weight" not in names  # tied by default
    assert "lm.layers.0.self_attn.q_proj.bias" not in names
    untied = set(make_model(tie_embeddings=False, attention_bias=True).state_dict())
    assert {"lm.lm_head.weight", "lm.layers.0.self_attn.q_proj.bias", "lm.layers.0.self_attn.v_proj.bias"} <= untied
    assert "lm.layers.0.self_attn.o_proj.bias" not in untied


def test_parameter_counts_by_part_add_up_and_follow_freezing(make_model):
    model = make_model()
    counts = model.num_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == counts["vision"] + counts["projector"] + counts["lm"]
    model.vision.requires_grad_(False)
    trainable = model.num_parameters(trainable_only=True)
    assert trainable["vision"] == 0 and trainable["lm"] == counts["lm"]
    summary = model.summary()
    assert all(part in summary for part in ("vision", "projector", "lm", "4 tokens"))



def test_repeated_images_are_encoded_once_without_changing_the_features(make_model, make_images):
    """Inference deduplicates identical images before the ViT; features equal encoding each one."""
    model = make_model().eval()
    pixel_values = make_images(2)[[0, 1, 0, 0]]  # (4, 3, S, S): image 0 three times
    calls = []
    model.vision.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        features = model.encode_images(pixel_values)
        reference = torch.cat([model.encode_images(image[None]) for image in pixel_values])
    assert calls[0] == 2  # the first call saw only the two distinct images
    torch.testing.assert_close(features, reference, rtol=1e-5, atol=1e-5)


def test_chunked_cross_entropy_equals_the_full_logits_loss_and_gradients(make_model, make_prompt, make_images):
    model = make_model()
    ids = torch.stack([make_prompt(model, 12, 2, seed=i) for i in range(3)])
    labels = ids.clone()
    labels[:, :10] = -100
    labels[1] = -100  # a row with nothing to learn
    pixels = make_images(6)
    full = model(ids, pixels, labels=labels)
    full.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    chunked = model(ids, pixels, labels=labels, loss_chunk=5)
    chunked.loss.backward()
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, full.loss)
    torch.testing.assert_close(chunked.token_losses, full.token_losses)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # no activation checkpointing needed without gradients; nothing supervised gives 0
        nothing = model(ids, pixels, labels=torch.full_like(labels, -100), loss_chunk=5)
    assert float(nothing.loss) == 0.0 and float(nothing.token_losses.abs().sum()) == 0.0
