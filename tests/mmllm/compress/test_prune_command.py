"""`mmllm prune` on the trained tiny model (its command line, in process): a smaller folder that `ask` loads and that
`mmllm fit --config configs/shapes-tiny.yaml --model.init_from` takes with the demo config's shape fields
(which describe it); a field that does not is refused, named; a share that leaves nothing exits 2 in one line."""

from __future__ import annotations

import pytest
import yaml
from inference_helpers import REPO

from mmllm.cli.main import main
from mmllm.inference import load
from mmllm.formats.model_folder import load_model_folder
from mmllm.compress.pruning import lm_parameters


def test_mmllm_prune_writes_a_folder_every_command_loads_and_fit_fine_tunes(trained, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(trained.model), "--data", str(trained.data / "train" / "chat"), "--attention-heads",
                 "0.34", "--mlp-channels", "0.3", "--layers", "1", "--samples", "32", "--out", str(out)]) == 0
    assert "fewer" in capsys.readouterr().out
    model, _, config = load_model_folder(out)
    full, _, full_config = load_model_folder(trained.model)
    assert (config.lm.n_layers, config.lm.n_heads) == (full_config.lm.n_layers - 1, 4)
    assert lm_parameters(model) < 0.75 * lm_parameters(full)
    assert isinstance(load(out, device="cpu").ask(trained.image, "What colour is the circle?", max_new_tokens=4), str)

    from mmllm.train.datamodule import VLMDataModule
    from mmllm.train.module import VLMModule

    demo = yaml.safe_load((REPO / "configs" / "shapes-tiny.yaml").read_text())["model"]
    shape = {key: demo[key] for key in ("lm", "vision", "pixel_shuffle")}
    inputs = VLMDataModule(str(out / "tokenizer.json"), sources=[], image_size=48).model_inputs
    module = VLMModule(init_from=str(out), model_inputs=inputs, **shape)
    assert module.config == config
    batch = next(iter(_batches(module, trained)))
    module.model.train()
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "image_counts")
    loss = module.model(**{k: batch[k] for k in keys if batch.get(k) is not None}).loss
    loss.backward()  # the pruned model trains
    assert loss.isfinite() and module.model.lm.layers[0].mlp.down_proj.weight.grad is not None
    with pytest.raises(ValueError, match=r"model.lm.mlp_dim is 512 but \d+ there"):
        VLMModule(init_from=str(out), model_inputs=inputs, lm={"mlp_dim": 512})

    capsys.readouterr()
    assert main(["prune", str(trained.model), "--data", str(trained.data / "train" / "chat"), "--attention-heads", "1",
                 "--out", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _batches(module, trained):
    import argparse

    from mmllm.cli.prune import calibration_batches

    args = argparse.Namespace(data=str(trained.data / "train" / "chat"), kind="chat", samples=4, batch_size=4)
    return calibration_batches(module.model, module.tokenizer, args)
