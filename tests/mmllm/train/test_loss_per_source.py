"""Loss per source kind: with packing (several kinds in one row) it equals one sample per row, recomputed."""

from __future__ import annotations

import itertools

import torch
from fit_helpers import MICRO_LM, MICRO_VISION

from data_pipelines.batching import collate, pack
from data_pipelines.read.loader import MixtureDataset
from data_pipelines.read.shards import KINDS
from mmllm.processing import processor_for
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule, forward_inputs, loss_sums_by_kind, samples_by_kind


def test_packed_loss_per_kind_equals_unpacked_recomputation(shapes_data):
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), sources=[], image_size=32)
    torch.manual_seed(0)
    model = VLMModule(lm=dict(MICRO_LM), vision=dict(MICRO_VISION), model_inputs=data.model_inputs).model.eval()
    processor = processor_for(model.config, data.tokenizer)
    sources = [{"kind": "caption", "path": str(shapes_data / "train" / "captions")},
               {"kind": "chat", "path": str(shapes_data / "train" / "chat")}]
    samples = list(itertools.islice(MixtureDataset(sources, processor, rank=0, world_size=1, seed=1), 6))
    assert {sample.kind for sample in samples} == {"caption", "chat"}

    def per_kind(batch):
        with torch.no_grad():
            output = model(**forward_inputs(batch))
        sums, samples = loss_sums_by_kind(output.token_losses, batch), samples_by_kind(batch)
        return {kind: (float(sums[i, 0] / sums[i, 1]), samples[kind]) for i, kind in enumerate(KINDS)
                if sums[i, 1] > 0}

    # The reference: each sample alone through VLM.forward, its mean loss weighted by its supervised tokens.
    reference = {}
    for sample in samples:
        alone = collate([sample], pad_id=processor.pad_id)
        with torch.no_grad():
            loss = model(**forward_inputs(alone)).loss
        tokens = int((alone["labels"][:, 1:] != -100).sum())
        total, count, n = reference.get(sample.kind, (0.0, 0, 0))
        reference[sample.kind] = (total + float(loss) * tokens, count + tokens, n + 1)

    longest = max(len(sample.input_ids) for sample in samples)
    packed = pack(samples, max_length=min(2 * longest, model.config.lm.max_seq_len), pad_id=processor.pad_id)
    assert "mixed" in packed["kinds"]  # at least one row holds both kinds
    assert set(per_kind(packed)) == {"caption", "chat"}
    one_per_row = per_kind(collate(samples, pad_id=processor.pad_id, padding_side="right"))
    for kind, (loss, count) in per_kind(packed).items():
        total, tokens, n = reference[kind]
        assert count == one_per_row[kind][1] == n
        assert abs(loss - total / tokens) < 1e-4, (kind, loss, total / tokens)
        assert abs(one_per_row[kind][0] - total / tokens) < 1e-4
