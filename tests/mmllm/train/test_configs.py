"""Every config in configs/ parses (`mmllm fit --config X --print_config`), and so does no config at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmllm.cli.main import main

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))


def print_config(argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *argv, "--print_config"])
    assert stopped.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_configs_folder_holds_every_stage():
    assert {path.stem for path in CONFIGS} >= {"shapes-tiny", "align", "finetune", "text-only", "gpu-small"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_parses_and_prints(config, shapes_data, capsys):
    # Parsing needs no data; the tokenizer override shows a command-line value wins over the file.
    tokenizer = str(shapes_data / "tokenizer.json")
    printed = print_config(["--config", str(config), "--data.tokenizer", tokenizer], capsys)
    written = yaml.safe_load(config.read_text())
    assert printed["data"]["tokenizer"] == tokenizer
    assert printed["data"]["sources"] == [{"weight": 1.0, "single_turn": 0.0, "objective": "causal", **source}
                                          for source in written["data"]["sources"]]
    assert printed["trainer"]["max_steps"] == written["trainer"]["max_steps"]
    assert printed["export"]["out"] == written["export"]["out"]


def test_print_config_without_a_config_prints_the_defaults(capsys):
    printed = print_config([], capsys)
    assert printed["model"]["preset"] == "tiny" and printed["checkpoint"]["save_last"] is True
    assert printed["trainer"]["plugins"][0]["class_path"] == "mmllm.train.checkpoint_io.AtomicCheckpointIO"


def test_stage_configs_start_from_the_previous_stage():
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in CONFIGS}
    assert configs["align"]["model"]["freeze"] == ["vision", "lm"]
    assert {s["kind"] for s in configs["align"]["data"]["sources"]} == {"caption"}
    assert configs["finetune"]["model"]["init_from"] == configs["align"]["export"]["out"]
    assert not configs["finetune"]["model"]["freeze"]
    assert {s["kind"] for s in configs["finetune"]["data"]["sources"]} == {"chat", "caption", "text"}
    assert {s["kind"] for s in configs["text-only"]["data"]["sources"]} == {"text"}
    gpu = configs["gpu-small"]
    assert gpu["model"]["preset"] == "small" and gpu["trainer"]["precision"] == "bf16-mixed"
    assert gpu["data"]["resampled"] and gpu["trainer"]["devices"] == "auto"
