"""`mmllm fit | validate | test`: LightningCLI over the VLM module and the mixture data module.

The data module's tokenizer decides the vocabulary size, the special-token ids and the image size; they reach
the model through a linked argument, so a config never states them twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mmllm.train.callbacks import ExportModel
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule


class MMLLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.model_inputs", "model.model_inputs", apply_on="instantiate")
        # Always-present, configurable callbacks: `checkpoint:` and `export:` sections of a config.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.filename": "step{step:06d}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
        })
        parser.add_lightning_class_args(ExportModel, "export")


def run_lightning_cli(argv: list[str]) -> int:
    sys.argv = [f"{Path(sys.argv[0]).name}"] + list(argv)  # LightningCLI reads the command line itself
    MMLLMCLI(
        VLMModule,
        VLMDataModule,
        trainer_defaults={"callbacks": [LearningRateMonitor(logging_interval="step")]},
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
    return 0
