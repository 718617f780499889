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
