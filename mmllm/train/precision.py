"""`trainer.precision: auto`: bf16-mixed where this machine multiplies bf16 fast, 32-true where it does not.

Lightning's precision is one fixed string, but whether bf16 pays depends on the machine: a GPU or a CPU with bf16
matrix units (Intel AMX, AVX512-BF16) runs bf16 matmuls several times faster than float32, and a CPU without them
runs bf16 through slow reference kernels (tens of times slower). `auto` picks per machine at start-up and says
which; a config that names a precision gets exactly that one.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Optional, Union, get_type_hints

import lightning as L
import torch

from mmllm.machine import cpu_has_bf16_matmul

Precision = Union[get_type_hints(L.Trainer.__init__)["precision"], Literal["auto"]]


def resolve_precision(precision: Any, accelerator: Any) -> Any:
    """`auto` -> bf16-mixed on a bf16-capable GPU or CPU, else 32-true; any other value unchanged."""
    if precision != "auto":
        return precision
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda", None)
    if cuda:
        chosen, why = ("bf16-mixed", "this GPU has bf16") if torch.cuda.is_bf16_supported() else \
            ("32-true", "this GPU has no bf16")
    elif cpu_has_bf16_matmul():
        chosen, why = "bf16-mixed", "this CPU has bf16 matrix instructions: AMX or AVX512-BF16"
    else:
        chosen, why = "32-true", "this CPU has no bf16 matrix instructions: bf16 would run slow reference kernels"
    print(f"trainer.precision auto: {chosen} ({why})", file=sys.stderr)
    return chosen


class Trainer(L.Trainer):
    """Lightning's Trainer, whose `precision` also takes `auto` (resolve_precision)."""

    def __init__(self, *args, precision: Optional[Precision] = None, accelerator: Any = "auto", **kwargs) -> None:
        super().__init__(*args, precision=resolve_precision(precision, accelerator), accelerator=accelerator,
                         **kwargs)
