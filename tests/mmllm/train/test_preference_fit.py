"""`mmllm fit` with model.preference on preference shards: the first step's loss is log 2 (the policy starts as its
reference), the reference stays where it started while the rewards' margin grows, a run resumes, LoRA's
adapters_off reference works the same way, and the wrong combinations are refused in one line."""

from __future__ import annotations

import json
import math

import pytest
from fit_helpers import column, fit_config, read_metrics, write_config

from mmllm.cli.main import main


@pytest.fixture(scope="module")
def preferences(shapes_data, tmp_path_factory):
    """(preference shards with one lesson, "no" over "yes" to whether an object is there, and a micro model
    trained 12 steps on the shapes chats)."""
    from data_pipelines.convert.from_preferences import convert_preferences

    root = tmp_path_factory.mktemp("preference-data")
    rows = [{"prompt": f"Is there a {colour} {shape}?", "chosen": "no", "rejected": "yes"}
            for colour in ("red", "green", "blue", "yellow") for shape in ("circle", "square", "star", "triangle")]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    for split in ("train", "val"):
        convert_preferences(root / "pairs.jsonl", None, root / split / "preference", report=lambda *_: None)
    run = tmp_path_factory.mktemp("preference-base")
    assert main(["fit", "--config", str(write_config(fit_config(shapes_data, run), run / "config.yaml"))]) == 0
    return root, run / "model"


def preference_config(shapes_data, data, base, run, model=None, trainer=None):
    sources = {"sources": [{"kind": "preference", "path": str(data / "train" / "preference")}],
               "val_sources": [{"kind": "preference", "path": str(data / "val" / "preference")}],
               "val_vqa_questions": 0}
    return fit_config(shapes_data, run, data=sources,
                      model={"init_from": str(base), "lr": 1e-3, "warmup_steps": 1, **(model or {})},
                      trainer={"max_steps": 8, "val_check_interval": 8, **(trainer or {})})


def test_dpo_moves_the_policy_away_from_its_frozen_reference_and_resumes(shapes_data, preferences, tmp_path):
    data, base = preferences
    dpo = {"preference": {"loss": "dpo", "beta": 0.5, "reference": "frozen"}}
    config = preference_config(shapes_data, data, base, tmp_path, model=dpo)
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    rows = read_metrics(tmp_path)
    losses = column(rows, "train/loss")
    assert len(losses) == 8 and losses[0][1] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    margins = [value for _, value in column(rows, "train/rewards_margin")]
    assert margins[0] == pytest.approx(0, abs=1e-4) and margins == sorted(margins), margins  # the reference stood
    assert margins[-1] > 0.5 and column(rows, "val/preference_accuracy")[-1][1] == 1  # still: the margin only grows
    assert column(rows, "val/preference_accuracy") and column(rows, "val/rewards_chosen")
    longer = preference_config(shapes_data, data, base, tmp_path, model=dpo, trainer={"max_steps": 11})
    assert main(["fit", "--config", str(write_config(longer, tmp_path / "config.yaml")),
                 "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    resumed = column(read_metrics(tmp_path), "train/rewards_margin")
    assert [step for step, _ in resumed] == [8, 9, 10] and resumed[0][1] > margins[-1]  # measured from the start


def test_ipo_under_lora_measures_against_the_adapters_switched_off(shapes_data, preferences, tmp_path):
    data, base = preferences
    model = {"preference": {"loss": "ipo", "beta": 0.5, "reference": "adapters_off"}, "lr": 1e-2,
             "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "up_proj"]}}
    config = preference_config(shapes_data, data, base, tmp_path, model=model, trainer={"max_steps": 6})
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    rows = read_metrics(tmp_path)
    first = column(rows, "train/loss")[0][1]
    assert first == pytest.approx((1 / (2 * 0.5)) ** 2, abs=1e-4)  # IPO at the start: (0 - 1 / (2 beta))^2
    assert column(rows, "train/rewards_margin")[-1][1] > 0


@pytest.mark.parametrize("model, sources, said", [
    ({}, "preference", "train them with model.preference"),
    ({"preference": {"loss": "dpo"}}, "chat", "preference sources alone"),
    ({"preference": {"reference": "adapters_off"}}, "preference", "give model.lora"),
])
def test_wrong_combinations_are_refused_in_one_line(shapes_data, preferences, tmp_path, capsys, model, sources,
                                                    said):
    data, base = preferences
    config = preference_config(shapes_data, data, base, tmp_path, model=model)
    if sources == "chat":
        config["data"]["sources"] = [{"kind": "chat", "path": str(shapes_data / "train" / "chat")}]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert stopped.value.code == 2 and len(lines) == 1 and said in lines[0], err
