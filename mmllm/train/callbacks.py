"""Callbacks of a training run: checkpoints whose `last` holds the final step, a progress bar that counts
steps, the model summary with the model's FLOPs, the learning rates logged (when there is a logger), the model
folder export, a checkpoint when the job is preempted, and a warning when validation loss keeps rising."""

from __future__ import annotations


import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import (LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar,
                                         RichProgressBar, Timer)
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last` checkpoint also holds the final step when fit ends between two saves.

    Lightning writes `last` only on its schedule (every_n_train_steps, validation, epoch end), so a run
    stopped by max_steps would otherwise leave `last` some steps behind the weights it exports, and a
    `--ckpt_path last` with a larger max_steps would redo those steps.
    """

    def __init__(self, *args, overwrite: bool = False, **kwargs) -> None:
        """overwrite: a new fit deletes the checkpoints an earlier run left in `dirpath` and writes its own
        (otherwise it stops with an error, see mmllm.train.guards); every other argument is ModelCheckpoint's."""
        super().__init__(*args, **kwargs)
        self.overwrite = overwrite

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.interrupted and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class FlopsSummary(ModelSummary):
    """Lightning's model summary, with the forward FLOPs of one sample (a full-length sequence with one image,
    mmllm.model.flops) where Lightning would print "0 Total FLOPs", and without its per-module FLOPs column (zeros:
    Lightning counts FLOPs only by running an example batch the module does not have)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table, summarize
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        from mmllm.model.flops import forward_flops, tiles_per_image

        if not self._max_depth or not trainer.is_global_zero or not hasattr(pl_module, "config"):
            return super().on_fit_start(trainer, pl_module)
        summary = summarize(pl_module, max_depth=self._max_depth)
        config = pl_module.config
        columns = [column for column in summary._get_summary_data() if column[0] != "FLOPs"]
        table = _format_summary_table(summary.total_parameters, summary.trainable_parameters, summary.model_size,
                                      summary.total_training_modes, 0, *columns)
        tiles = tiles_per_image(config) if config.reads_images else 0
        flops = forward_flops(config, batch_size=1, seq_len=config.lm.max_seq_len, n_images=tiles)
        image = "no image" if not tiles else "1 image" + (f" in {tiles} tiles" if tiles > 1 else "")
        line = f"{flops / 1e9:<12.3g}GFLOPs forward per sample ({config.lm.max_seq_len} tokens, {image})"
        rank_zero_info("\n" + "\n".join(line if row.rstrip().endswith("Total Flops") else row
                                         for row in table.splitlines()))


class LearningRates(LearningRateMonitor):
    """Lightning's LearningRateMonitor, idle in a run without a logger (`trainer.logger: false`), where
    Lightning's own stops the fit with an error."""

    def on_train_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        self.idle = not trainer.loggers
        if not self.idle:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if not self.idle:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if not self.idle:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, saying "Epoch 2 · step 1200/3000" when max_steps, not epochs, ends the run.

    (Lightning writes "Epoch 2/-2" there.) The bar's length is the epoch's batches, or the steps left if fewer.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs not in (None, -1) or trainer.max_steps in (None, -1):
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} · step {trainer.global_step}/{trainer.max_steps}"
        return f"{description:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)


class LineProgress(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (CI logs, `nohup`, `| tee`), where a live bar
    prints nothing: one line every `every` steps and one after each validation, with the losses, the speed and
    the time left (to max_steps, or to max_time when that comes first).

    Args:
        every: training steps between two lines.
    """

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        self.every = every
        self.enabled = True
        self._start = (0.0, 0)  # (time, step) when this fit started

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and trainer.is_global_zero and (step % self.every == 0 or step == trainer.max_steps):
            print(self.train_line(trainer), flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero and not trainer.sanity_checking:
            metrics = _numbers(trainer.callback_metrics, "val/")
            print(f"validation at step {trainer.global_step}: {metrics}", flush=True)

    def train_line(self, trainer: L.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        started, first_step = self._start
        elapsed = time.perf_counter() - started
        rate = (step - first_step) / elapsed if elapsed > 0 else 0.0
        left = (total - step) / rate if rate > 0 and total and total > 0 else float("inf")
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining() is not None:
            left = min(left, timer.time_remaining())
        eta = "?" if left == float("inf") else f"{int(left // 60)}:{int(left % 60):02d}"
        where = f"step {step}/{total}" if total and total > 0 else f"step {step}"
        return f"{where} · {_numbers(trainer.callback_metrics, 'train/loss')} · {rate:.2f} it/s · {eta} left"


def _numbers(metrics: dict, prefix: str) -> str:
    """'name value' pairs of the scalar metrics under prefix, e.g. 'loss 0.512 · loss_chat 0.431'."""
    items = [(name.split("/", 1)[-1], float(value)) for name, value in sorted(metrics.items())
             if name.startswith(prefix) and getattr(value, "numel", lambda: 1)() == 1]
    return " · ".join(f"{name} {value:.4g}" for name, value in items) or "no metrics yet"


class ExportModel(L.Callback):
    """At the end of `fit`, write a model folder that `mmllm caption/ask/eval` and `init_from` can load.

    Args:
        out: the model folder to write (default: `model/` inside the run's log directory).
        use_best: export the best checkpoint by the monitored metric when there is one, else the last weights.
    """

    def __init__(self, out: Optional[str] = None, use_best: bool = True) -> None:
        self.out = out
        self.use_best = use_best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted:
            return
        from mmllm.formats.checkpoint import export_checkpoint
        from mmllm.formats.model_folder import save_model_folder
        from mmllm.train.fsdp import is_sharded

        out = Path(self.out or Path(trainer.log_dir or trainer.default_root_dir) / "model")
        checkpoint = trainer.checkpoint_callback
        # Without a monitored metric "best" is only the newest scheduled save: the final weights are newer.
        best = getattr(checkpoint, "best_model_path", "") if getattr(checkpoint, "monitor", None) else ""
        use_best = self.use_best and best and Path(best).is_file()
        model = pl_module.model
        if not use_best and is_sharded(trainer.strategy):
            model = _gathered_model(trainer, pl_module)  # every rank takes part; rank 0 gets the weights
        if not trainer.is_global_zero:
            return
        if use_best:
            export_checkpoint(best, out)
            source = f"best checkpoint {best}"
        else:
            from mmllm.model import VLM
            from mmllm.model.lora import lora_modules, merged_state_dict

            if lora_modules(model):  # a LoRA run: its adapters merged into a plain model, the trained one unchanged
                plain = VLM(model.config)
                plain.load_state_dict(merged_state_dict(model))
                model = plain
            save_model_folder(model, pl_module.tokenizer, out)
            source = f"weights at step {trainer.global_step}" + (" (LoRA adapters merged)" if
                                                                  getattr(pl_module, "lora", None) else "")
        print(f"exported {source} to {out}")
        plot_curves(trainer)


def _gathered_model(trainer: L.Trainer, pl_module: L.LightningModule):
    """The whole model from an FSDP run's shards: the strategy gathers the full state dict (a collective, so every
    rank calls this) and rank 0 loads it into a fresh VLM of the same config (None on the other ranks)."""
    from mmllm.model import VLM

    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    model = VLM(pl_module.config)
    model.load_state_dict({name.removeprefix("model."): tensor for name, tensor in state.items()
                           if name.startswith("model.")})
    return model.to(next(iter(state.values())).dtype)


class OverfitWarning(L.Callback):
    """Says once, in one line on stderr, when validation loss has risen `patience` validations in a row: the run
    is past its best weights, and the fix is a flag away (export the best checkpoint, or stop early)."""

    def __init__(self, monitor: str = "val/loss", patience: int = 3) -> None:
        self.monitor, self.patience = monitor, patience
        self.history: list[tuple[int, float]] = []  # (step, loss) of each validation of this fit
        self.said = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or self.said or trainer.state.fn != TrainerFn.FITTING:
            return
        self.history.append((trainer.global_step, float(value)))
        recent = self.history[-(self.patience + 1):]
        if len(recent) <= self.patience or not all(b[1] > a[1] for a, b in zip(recent, recent[1:])):
            return
        self.said = True
        if trainer.is_global_zero:
            best_step, best = min(self.history, key=lambda item: item[1])
            losses = " -> ".join(f"{loss:.4g}" for _, loss in recent)
            print(f"mmllm fit: {self.monitor} has risen {self.patience} validations in a row ({losses}, steps "
                  f"{recent[0][0]}-{recent[-1][0]}; best {best:.4g} at step {best_step}): the model is overfitting; "
                  f"export the best weights with --export.use_best true, or stop early with Lightning's EarlyStopping "
                  f"(--trainer.callbacks+=EarlyStopping --trainer.callbacks.monitor {self.monitor})",
                  file=sys.stderr, flush=True)

    def state_dict(self) -> dict:
        return {"history": self.history, "said": self.said}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(item) for item in state_dict.get("history", [])]
        self.said = state_dict.get("said", False)


def plot_curves(trainer: L.Trainer) -> None:
    """curves.png in the CSV logger's folder when matplotlib is installed (`mmllm plot` draws it again later)."""
    from lightning.pytorch.loggers import CSVLogger

    from mmllm.evaluation.plots import plot_run

    # the logger's own folder (trainer.log_dir is a collective under DDP, and only rank 0 gets here)
    folders = [logger.log_dir for logger in trainer.loggers if isinstance(logger, CSVLogger)]
    if not folders:
        return
    try:
        print(f"learning curves: {plot_run(folders[0])}")
    except ImportError:  # plotting is an optional extra; the CSV log is there either way
        return
    except (FileNotFoundError, ValueError) as error:  # nothing logged yet
        every, steps = trainer.log_every_n_steps, trainer.global_step
        if every > steps:  # a CSVLogger was there: it had nothing to write yet
            error = f"nothing was logged: trainer.log_every_n_steps ({every}) is more than the {steps} steps trained"
        print(f"no learning curves drawn: {error}")


class Preemption(L.Callback):
    """SIGTERM (a scheduler stopping the job) or SIGUSR1 (SLURM's warning before the time limit, `--signal=USR1@90`)
    during fit: finish the current step, write `last.ckpt` where `--ckpt_path last` finds it, and stop.

    SIGTERM is Lightning's own: it sets `trainer.received_sigterm` and raises SIGTERMException after the batch;
    here, in `on_exception`, the checkpoint is written. SIGUSR1 is turned into the same path, except under SLURM
    with auto-requeue, where Lightning's handler saves its own checkpoint and requeues the job.
    """

    def __init__(self) -> None:
        self.signal: Optional[int] = None  # the signal that stopped the run
        self.checkpoint: Optional[str] = None  # where its checkpoint went

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has installed its handlers by now (after on_fit_start); USR1 is ours unless SLURM's took it.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._remember(signal.getsignal(signal.SIGTERM)))
            if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGUSR1, self._as_sigterm)

    def _remember(self, lightning_handler):
        def handler(signum, frame):
            self.signal = self.signal or signum
            if callable(lightning_handler):
                lightning_handler(signum, frame)
        return handler

    def _as_sigterm(self, signum, frame) -> None:
        self.signal = signum
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: stop after this batch, on every rank

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or os.path.join(trainer.default_root_dir,
                                                                                       "checkpoints")
        self.checkpoint = os.path.join(folder, "last.ckpt")
        trainer.save_checkpoint(self.checkpoint)  # every rank takes part; rank 0 writes
        self.signal = self.signal or signal.SIGTERM
