"""`mmllm fit` through the real command line, then `mmllm export` of its checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fit_helpers import column, fit_config, read_metrics, write_config
from PIL import Image

from mmllm.cli.main import main
from mmllm.model.flops import forward_flops
from mmllm.inference import VisionLanguageModel
from mmllm.formats.model_folder import load_model_folder, read_model_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted_run(finished_fit) -> Path:
    """A 12-step fit of the micro model (validation at steps 6 and 12), run as a user would run it.

    conftest starts it (`mmllm fit --config fit_helpers.fit_config(...)`) when the session begins.
    """
    result, run_dir = finished_fit("fit")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_fit_lowers_the_training_loss(fitted_run):
    losses = column(read_metrics(fitted_run), "train/loss_step") or column(read_metrics(fitted_run), "train/loss")
    assert [step for step, _ in losses] == list(range(len(losses))) and len(losses) == 12
    first, last = losses[0][1], sum(value for _, value in losses[-3:]) / 3
    assert last < first - 0.5, losses


def test_fit_logs_loss_per_source_kind_and_validation(fitted_run):
    rows = read_metrics(fitted_run)
    assert column(rows, "train/loss_caption") and column(rows, "train/loss_chat")
    assert [step for step, _ in column(rows, "val/loss")] == [5, 11]
    assert column(rows, "val/vqa_accuracy")


def test_exported_folder_loads_and_answers_as_greedy_recomputation_does(fitted_run, shapes_data):
    import torch

    model, tokenizer, config = load_model_folder(fitted_run / "model")
    assert config.vision.image_size == 32 and config.lm.dim == 64
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    vlm = VisionLanguageModel(model, tokenizer)
    answer = vlm.ask(image, "What colour is the circle?", max_new_tokens=4)
    # The reference: the prompt through the model's full forward pass, one argmax token at a time.
    prompt = vlm.processor.encode_question("What colour is the circle?", image)
    ids = list(prompt.input_ids)
    for _ in range(4):
        with torch.no_grad():
            logits = model(torch.tensor([ids]), pixel_values=prompt.pixel_values).logits[0, -1]
        token = int(logits.argmax())
        if token in config.eos_token_ids:
            break
        ids.append(token)
    assert answer == vlm.processor.decode(ids[len(prompt.input_ids):]).strip()


def test_fit_saves_the_resolved_config_and_last_checkpoint(fitted_run):
    saved = list((fitted_run / "logs").glob("version_*/config.yaml"))
    assert saved and "n_layers: 2" in saved[0].read_text()  # model.lm as given
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()


def test_export_command_writes_a_folder_equal_to_the_checkpoint(fitted_run, tmp_path):
    import torch

    checkpoint = fitted_run / "checkpoints" / "last.ckpt"
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    model, _, _ = load_model_folder(tmp_path / "exported")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name


def test_export_of_a_corrupt_checkpoint_exits_2_with_one_line_naming_it(fitted_run, tmp_path, capsys):
    corrupt = tmp_path / "broken.ckpt"
    corrupt.write_bytes((fitted_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])  # a save cut short
    assert main(["export", str(corrupt), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(corrupt) in error
    assert not (tmp_path / "out").exists()


def test_fit_prints_the_models_forward_flops_in_its_summary_not_zero(shapes_data, tmp_path, capfd):
    # Lightning logs the summary at INFO; read it with a handler of our own whatever an earlier test set.
    logger, records = logging.getLogger("lightning.pytorch.utilities.rank_zero"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 1, "limit_val_batches": 0,
                                                            "enable_model_summary": True})
        assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    summary = next(message for message in records if "Trainable params" in message)
    model_config = read_model_config(tmp_path / "model")
    expected = forward_flops(model_config, 1, model_config.lm.max_seq_len, 1) / 1e9
    assert "Total Flops" not in summary and "FLOPs" not in summary.splitlines()[1]  # no column of zeros
    printed = capfd.readouterr()
    assert "already configured with model summary" not in printed.out + printed.err  # Lightning's, about ours
    assert f"{expected:<12.3g}GFLOPs forward per sample ({model_config.lm.max_seq_len} tokens, 1 image)" in summary


def test_a_cpu_fit_with_flex_attention_stops_before_training_in_one_line(shapes_data, tmp_path, capsys):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 1, "limit_val_batches": 0})
    config["model"]["packed_attention"] = "flex"
    config["data"]["packing"] = True
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert stop.value.code == 2 and len(errors) == 1 and "packed_attention flex needs a GPU" in errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_refitting_into_the_same_folder_prints_no_lightning_warning_about_it(shapes_data, tmp_path, capsys, recwarn):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 1, "limit_val_batches": 0})
    path = write_config(config, tmp_path / "config.yaml")
    assert main(["fit", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", str(path), "--checkpoint.overwrite", "true"]) == 0
    captured = capsys.readouterr()
    shown = [str(w.message) for w in recwarn] + [captured.err, captured.out]
    assert not any("exists and is not empty" in text for text in shown)


def test_fit_prints_no_lightning_warning_about_the_modules_batch_hook(shapes_data, tmp_path, recwarn):
    """VLMModule's on_before_batch_transfer is the module's on purpose: Lightning's warning about it is not shown
    (cleared from Lightning's once-per-process cache first, so an earlier fit in this process cannot hide it)."""
    from lightning.pytorch.trainer.connectors import data_connector

    data_connector.warning_cache.clear()
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 1, "limit_val_batches": 0})
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    assert not [w for w in recwarn if "on_before_batch_transfer" in str(w.message)]


@pytest.mark.parametrize("mistake, said", [
    (["--model.lrr", "1e-3"], "unknown config key model.lrr; did you mean model.lr"),
    (["--model.lora.rnak", "3"], "unknown config key model.lora.rnak; did you mean model.lora.rank"),
    ("data:\n  batchsize: 8\n", "unknown config key data.batchsize; did you mean data.batch_size"),
])
def test_a_misspelt_config_key_is_one_line_naming_the_closest_keys(mistake, said, tmp_path, capsys):
    argv = ["fit", "--config", str(Path(__file__).parents[3] / "configs" / "shapes-tiny.yaml")]
    if isinstance(mistake, str):  # a YAML file's key
        (tmp_path / "mine.yaml").write_text(mistake)
        mistake = ["--config", str(tmp_path / "mine.yaml")]
    with pytest.raises(SystemExit) as stop:
        main(argv + mistake)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and said in err, err
