"""Callbacks of a training run: export the trained model folder when fit ends."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L


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
        if not trainer.is_global_zero or trainer.interrupted:
            return
        from mmllm.checkpoint_export import export_checkpoint
        from mmllm.model_folder import save_model_folder

        out = Path(self.out or Path(trainer.log_dir or trainer.default_root_dir) / "model")
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if self.use_best and best and Path(best).is_file():
            export_checkpoint(best, out)
            source = f"best checkpoint {best}"
        else:
            save_model_folder(pl_module.model, pl_module.tokenizer, out)
            source = f"weights at step {trainer.global_step}"
        print(f"exported {source} to {out}")
