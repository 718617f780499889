"""The training step reads nothing back from the device (on a GPU a host read stalls the launch queue at every
step): its forward pass, loss weighting and per-kind loss sums run under a mode that counts the calls that read
a tensor on the host or build one from Python values, with the model told it is on an accelerator. The one read
left is the chunked loss's count of supervised positions (listed in docs/training.md with its reason)."""

from __future__ import annotations

import itertools

import pytest
import torch
from fit_helpers import MICRO_LM, MICRO_VISION
from torch.overrides import TorchFunctionMode

import mmllm.model.vlm as vlm_module
from data_pipelines.batching import collate, pack
from data_pipelines.read.loader import MixtureDataset
from mmllm.processing import processor_for
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.loss_weighting import weighted_loss
from mmllm.train.module import VLMModule, forward_inputs, loss_sums_by_kind

HOST_READS = {torch.Tensor.__bool__: "bool", torch.Tensor.item: "item", torch.Tensor.__int__: "int",
              torch.Tensor.__float__: "float", torch.Tensor.__index__: "index", torch.Tensor.tolist: "tolist",
              torch.Tensor.nonzero: "nonzero", torch.nonzero: "nonzero", torch.tensor: "tensor from Python"}


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.calls.append(HOST_READS[func])
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def setup(shapes_data):
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), sources=[], image_size=32)
    torch.manual_seed(0)
    module = VLMModule(lm=dict(MICRO_LM), vision=dict(MICRO_VISION), model_inputs=data.model_inputs)
    processor = processor_for(module.model.config, data.tokenizer)
    sources = [{"kind": "caption", "path": str(shapes_data / "train" / "captions")},
               {"kind": "chat", "path": str(shapes_data / "train" / "chat")}]
    samples = list(itertools.islice(MixtureDataset(sources, processor, rank=0, world_size=1, seed=1), 6))
    return module, processor, samples


def step_reads(module, batch, loss_chunk=None, weighting="sample") -> list[str]:
    reads = HostReads()
    with reads:
        output = module.model(**forward_inputs(batch), loss_chunk=loss_chunk)
        loss = weighted_loss(output.token_losses, batch["labels"], batch.get("segment_ids"), weighting)
        loss.backward()
        loss_sums_by_kind(output.token_losses, batch)
    return reads.calls


@pytest.mark.parametrize("packed", [False, True])
def test_a_training_step_reads_nothing_back_from_the_device(setup, monkeypatch, packed):
    module, processor, samples = setup
    monkeypatch.setattr(vlm_module, "reads_host_for_free", lambda tensor: False)  # as on a GPU
    raw = (pack(samples, max_length=256, pad_id=processor.pad_id) if packed
           else collate(samples, pad_id=processor.pad_id, padding_side="right"))
    batch = module.on_before_batch_transfer(dict(raw), 0)  # the host's share, before the batch moves
    assert step_reads(module, batch) == []
    assert step_reads(module, batch, loss_chunk=16) == ["nonzero"]  # the one listed: how many positions to score
    # the count can fail: the same step on the batch as collated reads the device back
    assert step_reads(module, dict(raw)) != []


def test_the_host_check_names_a_sample_whose_placeholders_do_not_match_its_images(setup):
    module, processor, samples = setup
    batch = collate(samples, pad_id=processor.pad_id, padding_side="right")
    batch["image_counts"] = batch["image_counts"] + 1
    with pytest.raises(ValueError, match="image_counts add up to 12 but there are 6 images"):
        module.on_before_batch_transfer(batch, 0)
