"""Loss per source kind: with packing (several kinds in one row) it equals one sample per row, recomputed."""

from __future__ import annotations

import itertools

import torch
from fit_helpers import MICRO_LM, MICRO_VISION

from data_pipelines.collate import collate, pack
from data_pipelines.mixture import MixtureDataset
from mmllm.processing import processor_for
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule, loss_per_kind


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
        inputs = {k: v for k, v in batch.items() if k not in ("segment_sources", "skipped")}
        with torch.no_grad():
            output = model(**inputs)
        return {kind: (float(loss), count) for kind, (loss, count) in loss_per_kind(output.token_losses, batch).items()}

    longest = max(len(sample.input_ids) for sample in samples)
    packed = pack(samples, max_length=min(2 * longest, model.config.lm.max_seq_len), pad_id=processor.pad_id)
    assert "mixed" in packed["sources"]  # at least one row holds both kinds
    assert set(per_kind(packed)) == {"caption", "chat"}
    one_per_row = per_kind(collate(samples, pad_id=processor.pad_id, padding_side="right"))
    for kind, (loss, count) in per_kind(packed).items():
        assert count == one_per_row[kind][1]
        assert abs(loss - one_per_row[kind][0]) < 1e-4, (kind, loss, one_per_row[kind][0])
