"""Distillation (`model.teacher`): each KD loss against a hand computation on small logits, and fits with a
teacher: the student's distribution moves toward the teacher's, the teacher stays as it was, a checkpoint
resumes, and a teacher with another tokenizer is refused in one line."""

from __future__ import annotations

import math

import pytest
import torch
from fit_helpers import column, fit_config, read_metrics, write_config

from mmllm.cli.main import main
from mmllm.train.distill import distillation_loss, token_divergence

STUDENT = [[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]]
TEACHER = [[1.0, 1.0, 0.0], [-2.0, 1.0, 1.0]]


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_kd_loss_equals_the_hand_computed_divergence(temperature):
    for s_row, t_row in zip(STUDENT, TEACHER):
        q, p = softmax(s_row, temperature), softmax(t_row, temperature)
        beta = 0.3
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
        expected = {"forward_kl": kl(p, q), "reverse_kl": kl(q, p), "jsd": beta * kl(p, m) + (1 - beta) * kl(q, m)}
        for loss, value in expected.items():
            ours = token_divergence(torch.tensor(s_row), torch.tensor(t_row), loss, temperature, beta)
            assert ours.item() == pytest.approx(value * temperature**2, rel=1e-5), loss


def test_the_kd_loss_averages_supervised_next_token_positions_only():
    student = torch.tensor([[STUDENT[0], STUDENT[1], [9.0, 9.0, 9.0]]])  # (1, 3, 3): position t predicts t + 1
    teacher = torch.tensor([[TEACHER[0], TEACHER[1], [0.0, 5.0, 0.0]]])
    labels = torch.tensor([[-100, 2, -100]])  # only position 0 (predicting label 1) is supervised
    expected = kl(softmax(TEACHER[0], 1.0), softmax(STUDENT[0], 1.0))
    assert distillation_loss(student, teacher, labels).item() == pytest.approx(expected, rel=1e-5)
    same = distillation_loss(teacher, teacher, torch.tensor([[-100, 2, 1]]), "jsd")
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    disjoint = token_divergence(torch.tensor([50.0, -50.0]), torch.tensor([-50.0, 50.0]), "jsd", beta=0.5)
    assert disjoint.item() == pytest.approx(math.log(2), rel=1e-4)  # the JSD's bound


@pytest.fixture(scope="module")
def teacher_folder(shapes_data, tmp_path_factory):
    """A micro model trained a little on the shapes shards: the teacher."""
    run = tmp_path_factory.mktemp("teacher")
    config = fit_config(shapes_data, run, trainer={"max_steps": 20, "val_check_interval": 20})
    assert main(["fit", "--config", str(write_config(config, run / "config.yaml"))]) == 0
    return run / "model"


def test_distillation_alone_moves_the_student_toward_the_teacher(shapes_data, teacher_folder, tmp_path):
    from safetensors.torch import load_file

    before = load_file(teacher_folder / "model.safetensors")
    config = fit_config(shapes_data, tmp_path, model={"teacher": str(teacher_folder), "kd_weight": 1.0,
                                                      "kd_loss": "forward_kl", "kd_temperature": 1.0, "lr": 3e-3},
                        trainer={"max_steps": 16, "val_check_interval": 16})
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    kd = [value for _, value in column(read_metrics(tmp_path), "train/kd_loss")]
    assert len(kd) == 16 and sum(kd[-4:]) / 4 < 0.7 * sum(kd[:4]) / 4, kd  # KL(teacher || student) falls
    after = load_file(teacher_folder / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)  # the teacher was not trained


def test_a_fit_with_a_teacher_resumes_from_its_checkpoint(shapes_data, teacher_folder, tmp_path):
    teacher = {"teacher": str(teacher_folder), "kd_weight": 0.5, "kd_loss": "jsd"}
    first = fit_config(shapes_data, tmp_path, model=teacher, trainer={"max_steps": 6, "val_check_interval": 6})
    assert main(["fit", "--config", str(write_config(first, tmp_path / "config.yaml"))]) == 0
    longer = fit_config(shapes_data, tmp_path, model=teacher, trainer={"max_steps": 10, "val_check_interval": 10})
    assert main(["fit", "--config", str(write_config(longer, tmp_path / "config.yaml")),
                 "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    steps = [step for step, _ in column(read_metrics(tmp_path), "train/kd_loss")]
    assert len(steps) == 4, steps  # the resumed run trained steps 7-10 only, with its teacher loaded again
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 10 and not any(key.startswith("teacher") for key in last["state_dict"])


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(shapes_data, teacher_folder, tmp_path, capsys):
    from data_pipelines.read.shards import find_shards, shard_texts
    from data_pipelines.chat.tokenizer import train_tokenizer

    other = tmp_path / "other-tokenizer.json"
    train_tokenizer(shard_texts(find_shards([shapes_data / "train"])), vocab_size=280).save(str(other))
    config = fit_config(shapes_data, tmp_path, model={"teacher": str(teacher_folder)}, data={"tokenizer": str(other)})
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))])
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "another tokenizer" in lines[0]
