"""`trainer.precision: auto` (mmllm.train.precision): bf16-mixed where the machine multiplies bf16 fast, 32-true where
it does not, said in one line; a named precision is never replaced."""

import pytest

import mmllm.train.precision as precision


@pytest.mark.parametrize("has_bf16, chosen", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_cpu_follows_its_bf16_matrix_instructions(monkeypatch, capsys, has_bf16, chosen):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: has_bf16)
    assert precision.resolve_precision("auto", "auto") == chosen
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and f"trainer.precision auto: {chosen}" in said


@pytest.mark.parametrize("named", ["32-true", "bf16-mixed", "16-mixed", 32, None])
def test_a_named_precision_is_kept(monkeypatch, capsys, named):
    monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: True)
    assert precision.resolve_precision(named, "cpu") == named
    assert capsys.readouterr().err == ""


def test_the_trainer_takes_auto_and_builds_that_precision(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: False)
    trainer = precision.Trainer(precision="auto", accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    assert trainer.precision == "32-true"
