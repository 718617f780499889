"""The masked-LM objective in training: sources choose it, the loader masks reproducibly, packed MLM samples lose
as they would alone, and a fit that mixes MLM captions with causal chats exports a model that fills masks and still
answers; bad options exit 2 with one line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from fit_helpers import MICRO_LM, MICRO_VISION, fit_config, write_config

from data_pipelines.batching import collate, pack
from data_pipelines.read.loader import MixtureDataset
from mmllm.cli.main import main
from mmllm.processing import processor_for
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule, forward_inputs


def _mixture(shapes_data, seed: int):
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), image_size=32, sources=[
        {"kind": "caption", "path": str(shapes_data / "train" / "captions"), "objective": "mlm"},
        {"kind": "chat", "path": str(shapes_data / "train" / "chat")}])
    torch.manual_seed(0)
    model = VLMModule(lm=dict(MICRO_LM), vision=dict(MICRO_VISION), model_inputs=data.model_inputs).model.eval()
    processor = processor_for(model.config, data.tokenizer)
    samples = list(itertools.islice(MixtureDataset(data.sources, processor, rank=0, world_size=1, seed=seed), 8))
    return model, processor, samples


def test_the_loader_masks_mlm_sources_reproducibly_and_packed_losses_equal_alone(shapes_data):
    model, processor, samples = _mixture(shapes_data, seed=1)
    assert {(s.kind, s.objective) for s in samples} == {("caption", "mlm"), ("chat", "causal")}
    def ids(samples):
        return [(s.input_ids, s.labels) for s in samples]

    assert ids(samples) == ids(_mixture(shapes_data, seed=1)[2])  # the stream's RNG: the same masks again
    assert ids(samples) != ids(_mixture(shapes_data, seed=2)[2])
    mlm = [s for s in samples if s.objective == "mlm"]
    assert all(processor.mask_id in s.input_ids or any(l != -100 for l in s.labels) for s in mlm)

    def losses(batch):
        with torch.no_grad():
            output = model(**forward_inputs(batch))
        return output.token_losses.sum(), (batch["labels"][:, 1:] != -100).sum()

    alone = [losses(collate([s], pad_id=processor.pad_id)) for s in samples]
    packed = pack(samples, max_length=model.config.lm.max_seq_len, pad_id=processor.pad_id)
    assert packed["input_ids"].size(0) < len(samples)  # several samples per row
    total, count = losses(packed)
    assert count == sum(c for _, c in alone)
    torch.testing.assert_close(total, sum(t for t, _ in alone), rtol=1e-4, atol=1e-4)


def test_a_mixed_fit_fills_masks_and_still_answers(shapes_data, tmp_path, capsys):
    caption = str(shapes_data / "train" / "captions")
    config = fit_config(shapes_data, tmp_path / "run", trainer={"max_steps": 2, "val_check_interval": 2},
                        data={"packing": True, "max_length": 128, "val_vqa_questions": 0,
                              "sources": [{"kind": "caption", "path": caption, "objective": "mlm"},
                                          {"kind": "chat", "path": str(shapes_data / "train" / "chat")}]},
                        model={"mlm": {"rate": 0.3}})
    assert main(["fit", "--config", str(write_config(config, tmp_path / "fit.yaml"))]) == 0
    model = str(tmp_path / "run" / "model")
    capsys.readouterr()
    assert main(["fill-mask", "--model", model, "a red <mask> at the top left.", "--json", "--top-k", "3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    fills = json.loads(line)["fills"]
    assert len(fills) == 3 and fills[0]["score"] >= fills[1]["score"] >= fills[2]["score"]
    assert fills[0]["sequence"].startswith("a red") and "<mask>" not in fills[0]["sequence"]
    assert main(["generate", "--model", model, "a red", "--max-new-tokens", "3"]) == 0


def test_lora_on_a_model_folder_learns_mlm_with_a_mask_token_it_lacked(model_without_mask, shapes_data, tmp_path,
                                                                        capsys):
    """init_from a folder whose tokenizer has no <mask>, with LoRA: the run adds <mask> and trains adapters only; the
    exported model fills masks."""
    from mmllm.formats.checkpoint import model_from_checkpoint

    config = fit_config(shapes_data, tmp_path / "run", trainer={"max_steps": 2, "val_check_interval": 2},
                        data={"val_vqa_questions": 0, "sources": [
                            {"kind": "caption", "path": str(shapes_data / "train" / "captions"), "objective": "mlm"}]},
                        model={"init_from": str(model_without_mask), "lr": 1e-2, "warmup_steps": 1,
                               "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}, "mlm": {"rate": 0.3}})
    del config["model"]["lm"], config["model"]["vision"]
    assert main(["fit", "--config", str(write_config(config, tmp_path / "fit.yaml"))]) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] and all(".lora_" in name for name in checkpoint["state_dict"])
    assert "<mask>" in checkpoint["mmllm_tokenizer"]
    tuned, _, _ = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", merge_lora=False)
    assert any(layer.abs().sum() > 0 for name, layer in tuned.named_parameters() if ".lora_B." in name)
    capsys.readouterr()
    assert main(["fill-mask", "--model", str(tmp_path / "run" / "model"), "a red <mask> at the top left.",
                 "--json"]) == 0
    fills = json.loads(capsys.readouterr().out.splitlines()[-1])["fills"]
    assert fills and all("<mask>" not in fill["sequence"] for fill in fills)
    # the grown <mask> row is not in the adapters: an adapter-only export is refused, a merged one is the model's
    assert main(["export", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "a")]) == 2
    assert "--merge-lora" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "phrase"), [
    (["fill-mask", "--model", "{model}", "a red circle"], "no <mask>"),
    (["fill-mask", "--model", "{model}", "a <mask>", "--top-k", "0"], "--top-k must be at least 1"),
    (["fill-mask", "--model", "{model}", "a.png", "b.png", "a <mask>"], "expected [IMAGE] TEXT"),
    (["fill-mask", "--model", "{model}", "{missing}", "a <mask>"], "does not exist"),
    (["eval", "--model", "{model}", "--data", "{missing}", "--task", "fill-mask"], "no <mask> token"),
])
def test_bad_fill_mask_input_exits_2_in_one_line(model_without_mask, tmp_path, capsys, args, phrase):
    args = [a.format(model=model_without_mask, missing=tmp_path / "missing.png") for a in args]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO")]
    assert len(lines) == 1 and phrase in lines[0], lines


@pytest.mark.parametrize(("section", "value", "phrase"), [
    ("sources", [{"kind": "chat", "path": "P", "objective": "bert"}], "objective 'bert' is not one a chat source"),
    ("mlm", {"rate": 1.5}, "model.mlm.rate"),
    ("mlm", {"ratio": 0.2}, "model.mlm"),
])
def test_bad_mlm_options_exit_2_in_one_line(shapes_data, tmp_path, capsys, section, value, phrase):
    config = fit_config(shapes_data, tmp_path / "run")
    if section == "sources":
        config["data"]["sources"] = [{**value[0], "path": str(shapes_data / "train" / "chat")}]
    else:
        config["model"]["mlm"] = value
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(write_config(config, tmp_path / "bad.yaml"))])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and phrase in error


@pytest.fixture(scope="module")
def model_without_mask(tmp_path_factory, shapes_data):
    """A causal model folder (mmllm build: no training), whose tokenizer has no <mask>."""
    root = tmp_path_factory.mktemp("no-mask")
    assert main(["build", "--preset", "tiny", "--tokenizer", str(shapes_data / "tokenizer.json"),
                 "--out", str(root / "model")]) == 0
    return root / "model"
