"""Where a run's files go: every path follows trainer.default_root_dir unless the config names its own, so a second
experiment started with another root never writes into the first one's folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fit_helpers import fit_config, write_config

from mmllm.cli.main import main

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def unplaced_config(shapes_data, run_dir):
    """The micro fit config as a user writes it: no logger folders, no checkpoint folder."""
    config = fit_config(shapes_data, run_dir, trainer={"max_steps": 2, "val_check_interval": 2})
    del config["trainer"]["logger"], config["checkpoint"]
    del config["trainer"]["default_root_dir"]
    return config


def test_logs_and_checkpoints_follow_default_root_dir(shapes_data, tmp_path):
    config = write_config(unplaced_config(shapes_data, tmp_path), tmp_path / "config.yaml")
    for root in ("first", "second"):
        assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / root)]) == 0
    for root in ("first", "second"):
        assert (tmp_path / root / "logs/version_0/metrics.csv").is_file()  # version_0 in each: nothing shared
        assert not (tmp_path / root / "logs/version_1").exists()
        assert (tmp_path / root / "checkpoints/last.ckpt").is_file()


def test_a_logger_folder_the_config_names_is_kept(shapes_data, tmp_path):
    config = unplaced_config(shapes_data, tmp_path)
    config["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                    "init_args": {"save_dir": str(tmp_path / "mine"), "name": "csv"}}]
    config["trainer"]["default_root_dir"] = str(tmp_path / "root")
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    assert (tmp_path / "mine/csv/version_0/metrics.csv").is_file()
    assert not (tmp_path / "root/logs").exists() and (tmp_path / "root/checkpoints/last.ckpt").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_leave_every_run_path_to_default_root_dir(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["trainer"].get("default_root_dir")
    assert "logger" not in config["trainer"] and "dirpath" not in (config.get("checkpoint") or {})
