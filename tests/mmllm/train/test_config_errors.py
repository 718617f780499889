"""A wrong config fails with LightningCLI's message (status 2, the key named), never a traceback from the model."""

from __future__ import annotations

import pytest
from fit_helpers import fit_config, write_config

from mmllm.cli.main import main


@pytest.fixture
def good_config(shapes_data, tmp_path) -> dict:
    return fit_config(shapes_data, tmp_path / "run")


def fit_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *argv])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


def error_lines(stderr: str) -> list[str]:
    """stderr without Lightning's INFO lines (printed when no earlier test has quietened its logger)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("INFO: ")]


@pytest.mark.parametrize(("section", "key", "value"), [
    ("model", "learning_rate", 0.1),       # a key the module does not take
    ("trainer", "max_stepz", 10),
    ("data", "batchsize", 4),
])
def test_unknown_key_in_a_config_file_names_the_key(good_config, tmp_path, capsys, section, key, value):
    good_config[section][key] = value
    error = fit_error(["--config", str(write_config(good_config, tmp_path / "bad.yaml"))], capsys)
    assert key in error


@pytest.mark.parametrize(("option", "value", "named"), [
    ("--model.lr", "fast", "model.lr"),
    ("--trainer.max_steps", "many", "trainer.max_steps"),
    ("--model.freeze", "[vision, eyes]", "model.freeze"),     # not a part of the model
    ("--model.lm", "{n_layer: 2}", "n_layer"),                # a misspelt field of the LM shape
    ("--data.sources", "{kind: chat}", "data.sources"),       # not a list of sources
])
def test_wrong_type_on_the_command_line_names_the_key(good_config, tmp_path, capsys, option, value, named):
    config = write_config(good_config, tmp_path / "good.yaml")
    assert named in fit_error(["--config", str(config), option, value], capsys)


def test_missing_tokenizer_file_is_one_line_not_a_traceback(good_config, tmp_path, capsys):
    good_config["data"]["tokenizer"] = str(tmp_path / "missing.json")
    error = fit_error(["--config", str(write_config(good_config, tmp_path / "bad.yaml"))], capsys)
    assert error_lines(error) == [f"mmllm fit: error: no tokenizer file at {tmp_path / 'missing.json'}"]


def test_schedule_by_time_without_max_time_is_refused_before_training(good_config, tmp_path, capsys):
    good_config["model"]["schedule_by_time"] = True
    error = fit_error(["--config", str(write_config(good_config, tmp_path / "bad.yaml"))], capsys)
    assert error_lines(error) == ["mmllm fit: error: model.schedule_by_time needs trainer.max_time (the budget the "
                                  "schedule ends with)"]


@pytest.mark.parametrize(("lm", "vision", "named"), [
    ({"n_heads": 0}, {}, "lm.n_heads must be a positive integer, got 0"),
    ({"dim": 60, "n_heads": 8}, {}, "LM dim 60 is not divisible by n_heads 8"),
    ({}, {"patch_size": 5}, "image_size 32 is not a multiple of patch_size 5"),
])
def test_a_bad_shape_value_fails_once_naming_the_field(good_config, tmp_path, capsys, lm, vision, named):
    good_config["model"]["lm"] = {**good_config["model"]["lm"], **lm}
    good_config["model"]["vision"] = {**good_config["model"]["vision"], **vision}
    error = fit_error(["--config", str(write_config(good_config, tmp_path / "bad.yaml"))], capsys)
    assert error_lines(error) == [f"mmllm fit: error: {named}"]


def test_presets_are_built_and_checked_the_same_way_by_build_and_fit():
    from mmllm.config import LMConfig, VisionConfig, VLMConfig
    from mmllm.train.module import LMShape, VisionShape

    # The trainer's typed shape options are the dataclasses' fields (the vocabulary comes from the tokenizer).
    assert set(LMShape.__annotations__) == {f for f in LMConfig.__dataclass_fields__} - {"vocab_size"}
    assert set(VisionShape.__annotations__) == set(VisionConfig.__dataclass_fields__)
    reshaped = VLMConfig.from_preset("tiny", lm={"dim": 64, "n_heads": 4}, vision={"n_layers": 1})
    assert reshaped.lm.head_dim == 16 and reshaped.vision.n_layers == 1 and reshaped.vision.dim == 128
    with pytest.raises(ValueError, match="lm config has no field n_layer"):
        VLMConfig.from_preset("tiny", lm={"n_layer": 2})
    with pytest.raises(ValueError, match="model.pixel_shuffle must be a positive integer"):
        VLMConfig.from_preset("tiny", pixel_shuffle=0)
