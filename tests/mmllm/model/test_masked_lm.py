"""The masked-LM objective in the model, checked by gradients: an MLM sample attends both ways over its whole
sample (image tokens included) in any attention mode, never across a packed neighbour, and its loss comes only
from its masked positions, predicted in place; causal samples beside it stay causal."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.batching import collate, pack
from data_pipelines.processor import EncodedSample
from mmllm.train.module import forward_inputs, loss_sums_by_kind, token_kinds, KINDS

IGNORE = -100
IMAGE = 3  # tiny_models' image token id


def _embedding_gradients(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d input embeddings summed over the width: (B, T)); every image input too."""
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeds"] = output

    handle = model.lm.embed_tokens.register_forward_hook(keep)
    try:
        output = model(**forward_inputs(batch))
        output.loss.backward()
    finally:
        handle.remove()
    return output.loss, captured["embeds"].grad.abs().sum(-1)


def _mlm_sample(model, masked_at: int, n_text: int = 10, image: bool = True) -> EncodedSample:
    """[4 image tokens] + text, the token at `masked_at` hidden as id 5 with target 42."""
    ids = [IMAGE] * (model.config.tokens_per_image if image else 0) + list(range(10, 10 + n_text))
    labels = [IGNORE] * len(ids)
    labels[masked_at] = 42
    ids[masked_at] = 5
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) if image else None
    return EncodedSample(ids, labels, pixels, 0, "caption", "mlm")


@pytest.mark.parametrize("attention", ["causal", "prefix"])
def test_the_mlm_loss_at_a_masked_position_reaches_later_tokens_and_image_tokens(make_model, attention):
    model = make_model(attention).train()
    sample = _mlm_sample(model, masked_at=6)
    _, grads = _embedding_gradients(model, collate([sample], pad_id=0))
    assert (grads[0, 7:] > 0).all()  # tokens after the mask inform it: bidirectional
    causal = EncodedSample(sample.input_ids, sample.labels, sample.pixel_values, 0, "caption")  # same row, causal
    _, causal_grads = _embedding_gradients(model, collate([causal], pad_id=0))
    assert (causal_grads[0, 7:] == 0).all()  # (a causal row predicting at 5 the token at 6 sees nothing later)


def test_image_tokens_of_an_mlm_sample_see_the_text_after_them(make_model):
    model = make_model().eval()
    sample = _mlm_sample(model, masked_at=6)
    batch = collate([sample], pad_id=0)

    def image_output_gradients(bidirectional: bool) -> torch.Tensor:
        captured = {}
        hooks = [model.lm.embed_tokens.register_forward_hook(lambda m, i, out: captured.update(embeds=out)),
                 model.lm.norm.register_forward_hook(lambda m, i, out: captured.update(hidden=out))]
        inputs = {k: v for k, v in forward_inputs(batch).items() if k != "labels"}
        if not bidirectional:
            inputs.pop("bidirectional")
        model(**inputs)
        for hook in hooks:
            hook.remove()
        (grad,) = torch.autograd.grad(captured["hidden"][0, :4].sum(), captured["embeds"])  # the 4 image outputs
        return grad.abs().sum(-1)[0]

    assert (image_output_gradients(True)[4:] > 0).all()  # every text token, after the image, informs it
    assert (image_output_gradients(False)[4:] == 0).all()  # (causally it would not)


def test_the_loss_covers_only_the_masked_positions_predicted_in_place(make_model):
    model = make_model().train()
    sample = _mlm_sample(model, masked_at=8, image=False)  # text only: 10 tokens, 42 hidden at 8
    batch = collate([sample], pad_id=0)
    output = model(**forward_inputs(batch))
    logits = output.logits.detach()
    expected = torch.nn.functional.cross_entropy(logits[0, 8][None], torch.tensor([42]))
    torch.testing.assert_close(output.loss, expected)  # the logits at the masked position itself, nothing else
    # d loss / d logits is zero at every other position
    logits = output.logits
    logits.retain_grad()
    output.loss.backward()
    touched = (logits.grad.abs().sum(-1)[0] > 0).nonzero().flatten().tolist()
    assert touched == [8]


def test_packed_mlm_and_causal_samples_stay_apart_and_keep_their_own_attention(make_model):
    model = make_model().train()
    mlm = _mlm_sample(model, masked_at=2, n_text=6, image=False)
    ids = list(range(20, 26))
    causal = EncodedSample(ids, [IGNORE] * 5 + [ids[5]], None, 0, "text")  # one target: token 5 from 0..4
    batch = pack([mlm, causal], max_length=12, pad_id=0)
    model.zero_grad()
    only_mlm = dict(batch, labels=batch["labels"].clone())
    only_mlm["labels"][0, 6:] = IGNORE
    _, grads = _embedding_gradients(model, only_mlm)
    assert (grads[0, 3:6] > 0).all() and (grads[0, 6:] == 0).all()  # its own later tokens, never its neighbour's
    only_causal = dict(batch, labels=batch["labels"].clone())
    only_causal["labels"][0, :6] = IGNORE
    _, grads = _embedding_gradients(model, only_causal)
    assert (grads[0, :6] == 0).all() and (grads[0, 6:11] > 0).all() and grads[0, 11] == 0  # causal, alone


def test_mlm_tokens_are_their_own_loss_kind(make_model):
    model = make_model().train()
    mlm = _mlm_sample(model, masked_at=2, n_text=6, image=False)
    causal = EncodedSample(list(range(20, 26)), list(range(20, 26)), None, 0, "text")
    batch = pack([mlm, causal], max_length=12, pad_id=0)
    output = model(**forward_inputs(batch))
    sums = loss_sums_by_kind(output.token_losses, {**batch, "token_kinds": token_kinds(batch)})
    assert sums[KINDS.index("mlm"), 1] == 1 and sums[KINDS.index("text"), 1] == 5
