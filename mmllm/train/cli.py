"""`mmllm fit | validate | test`: LightningCLI over the VLM module and the mixture data module.

The data module's tokenizer decides the vocabulary size, the special-token ids and the image size; they reach
the model through a linked argument, so a config never states them twice.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import warnings

import signal

from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data_pipelines.read.shards import UnreadableShard
from mmllm.errors import UsageError
from mmllm.train import guards
from mmllm.train.config_errors import OneLineArgumentParser, one_line
from mmllm.train.callbacks import Checkpoint, ExportModel, FlopsSummary, LearningRates, OverfitWarning, Preemption
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule
from mmllm.train.precision import Trainer


class MMLLMCLI(LightningCLI):
    def instantiate_classes(self) -> None:
        # A config the types accept can still be wrong (a missing tokenizer file, a model folder whose vocabulary
        # differs from the data's): the user's mistake, said in one line with status 2 like a type error.
        try:
            super().instantiate_classes()
            check_time_budget(self.model, self.trainer)
            check_packed_attention(self.model, self.trainer)
        except (ValueError, FileNotFoundError, UsageError) as error:
            print(f"mmllm {self.subcommand}: error: {one_line(str(error))}", file=sys.stderr)
            raise SystemExit(2) from None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of a --ckpt_path file before anything else: a truncated or
        # foreign file fails there, and is said in one line naming it.
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path")
            reason = str(error).splitlines()[0][:200]
            print(f"mmllm {subcommand}: error: checkpoint {path} is corrupt or truncated ({reason})", file=sys.stderr)
            raise SystemExit(2) from None

    def instantiate_trainer(self, **kwargs):
        # The step-counting progress bar, unless the config turns the bar off or brings its own.
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer_config.get("callbacks") or [])
        wants_bar = trainer_config.get("enable_progress_bar") is not False
        if wants_bar and not any(isinstance(callback, ProgressBar) for callback in callbacks):
            callbacks = callbacks + progress_bar()
        if trainer_config.get("enable_model_summary") is not False and not any(
                isinstance(callback, ModelSummary) for callback in callbacks):
            callbacks = callbacks + [FlopsSummary()]  # Lightning's would say "0 Total Flops"
        self.preemption = Preemption()
        kwargs["callbacks"] = callbacks + [self.preemption, OverfitWarning()]
        # Every file of a run goes under trainer.default_root_dir unless the config names another place: the
        # loggers' folders and the checkpoints' (a second experiment with another root never writes into the first).
        root = trainer_config.get("default_root_dir") or os.getcwd()
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = run_loggers(root)
        checkpoint = self._get(self.config_init, "checkpoint")
        if checkpoint is not None and checkpoint.dirpath is None:
            checkpoint.dirpath = os.path.realpath(os.path.join(root, "checkpoints"))
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        """The subcommand after its checks (mmllm.train.guards), with what can go wrong outside the code said in
        one line: a preempted fit (exit 128 + the signal), a file that cannot be written (exit 1), a bad
        checkpoint or shard (exit 2)."""
        lock = None
        try:
            if guards.is_first_process():
                checkpoint = self.trainer.checkpoint_callback
                folder = getattr(checkpoint, "dirpath", None)
                ckpt_path = self.config_init[subcommand].get("ckpt_path")
                resumed = guards.resolve_checkpoint(ckpt_path, folder)
                if resumed is not None:
                    guards.check_checkpoint_fits(resumed, self.model)
                if subcommand == "fit":
                    lock = guards.claim_checkpoint_folder(folder, resuming=ckpt_path is not None,
                                                          overwrite=getattr(checkpoint, "overwrite", False))
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            name = signal.Signals(self.preemption.signal or signal.SIGTERM).name
            wrote = (f"wrote {self.preemption.checkpoint}; continue with --ckpt_path last" if self.preemption.checkpoint
                     else "no checkpoint written")
            print(f"mmllm {subcommand}: stopped by {name} at step {self.trainer.global_step}: {wrote}",
                  file=sys.stderr)
            raise SystemExit(128 + (self.preemption.signal or signal.SIGTERM)) from None
        except (UsageError, UnreadableShard) as error:
            print(f"mmllm {subcommand}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as error:  # a full disk, a quota, a folder without write permission
            where = f" ({error.filename})" if error.filename else ""
            print(f"mmllm {subcommand}: error: {error.strerror or error}{where}; files already written are intact",
                  file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            if lock is not None:
                lock.release()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.model_inputs", "model.model_inputs", apply_on="instantiate")
        # Always-present, configurable callbacks: `checkpoint:` and `export:` sections of a config.
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.filename": "step{step:06d}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
        })
        parser.add_lightning_class_args(ExportModel, "export")


def run_loggers(root: str) -> list:
    """The loggers of a run whose config names none: metrics.csv under ROOT/logs (what `mmllm plot` and the learning
    curves read) and, when tensorboard is installed, ROOT/tensorboard."""
    from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(save_dir=root, name="logs")]
    if _TENSORBOARD_AVAILABLE:
        loggers.append(TensorBoardLogger(save_dir=root, name="tensorboard"))
    return loggers


def check_time_budget(model, trainer) -> None:
    """model.schedule_by_time follows trainer.max_time: said before training starts, not at the first step."""
    from lightning.pytorch.callbacks import Timer

    if getattr(model.hparams, "schedule_by_time", False) and not any(isinstance(c, Timer) for c in trainer.callbacks):
        raise ValueError("model.schedule_by_time needs trainer.max_time (the budget the schedule ends with)")


def check_packed_attention(model, trainer) -> None:
    """model.packed_attention flex trains only where torch has its backward (not on CPUs): said before training."""
    from mmllm.model.document_mask import check_trainable

    check_trainable(getattr(model.hparams, "packed_attention", "dense"), trainer.strategy.root_device)


# Messages of Lightning that say nothing about this run.
QUIET_WARNINGS = (
    # run_lightning_cli passes the arguments itself when called from Python (tests, notebooks).
    r"LightningCLI's args parameter is intended to run from within Python",
    # Lightning's own use of a torch API deprecated in newer torch releases.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # mmllm's guards already refuse a checkpoint folder holding another run's files (train.guards); what is left is
    # this run's own folder, resumed or overwritten on purpose.
    r"Checkpoint directory .* exists and is not empty",
    # VLMModule.on_before_batch_transfer checks each batch against the model (its image-token layout) and so belongs
    # to the module; the data module's own hook is on_after_batch_transfer. Lightning calls the module's, as meant.
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
)
QUIET_INFO = ("💡 Tip:",  # advertisements for hosted services
              "TPU available:", "HPU available:",  # hardware mmllm does not run on
              "Trainer already configured with model summary callbacks")  # ours replaces Lightning's default


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(QUIET_INFO)


def quiet_lightning() -> None:
    """Drop Lightning's advertisements; and point its stderr handler at the stderr of this call: Lightning binds
    the sys.stderr of the moment it was first imported, which a notebook cell or a test may have closed since
    (every later message would then be a 'Logging error' traceback)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers or [logging.getLogger(name)]:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream first
            handler.addFilter(_DropInfo())


def progress_bar() -> list:
    """On a terminal the step-counting progress bar when `rich` is installed (Lightning's TQDM bar otherwise);
    elsewhere (a pipe, a log file) plain progress lines."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    from mmllm.train.callbacks import LineProgress, StepProgressBar

    if not sys.stdout.isatty():
        return [LineProgress()]
    return [StepProgressBar()] if _RICH_AVAILABLE else []


def run_lightning_cli(argv: list[str]) -> int:
    quiet_lightning()
    # DDP starts the other ranks by running `python sys.argv[0] sys.argv[1:]` again, so sys.argv stays the
    # command line; LightningCLI is given argv only when called from Python with other arguments.
    try:
        MMLLMCLI(
            VLMModule,
            VLMDataModule,
            trainer_class=Trainer,  # Lightning's, with trainer.precision auto (mmllm.train.precision)
            parser_class=OneLineArgumentParser,
            trainer_defaults={
                "callbacks": [LearningRates(logging_interval="step")],
                "plugins": [{"class_path": "mmllm.train.checkpoint_io.AtomicCheckpointIO"}],
            },
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=None if list(argv) == sys.argv[1:] else list(argv),
        )
    except FloatingPointError as error:  # a diverged run: the message names the step and the batch's sources
        print(f"mmllm {argv[0]}: error: {error}", file=sys.stderr)
        return 1
    return 0
