"""Old import paths of modules that moved into rooms (2026-12-05), kept working for one release.

`import mmllm.hf_import` (or any name in MOVED) imports the module at its new path, binds it under the old
name too, and warns once per old name with a FutureWarning that gives the new path. Installed by
`data_pipelines/__init__.py` and `mmllm/__init__.py`; remove it, and this table, in the release after.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "data_pipelines.shards": "data_pipelines.read.shards",
    "data_pipelines.loader": "data_pipelines.read.loader",
    "data_pipelines.bad_samples": "data_pipelines.read.bad_samples",
    "data_pipelines.eval_samples": "data_pipelines.read.eval_samples",
    "data_pipelines.special_tokens": "data_pipelines.chat.special_tokens",
    "data_pipelines.tokenizer": "data_pipelines.chat.tokenizer",
    "data_pipelines.hf_chat": "data_pipelines.chat.jinja_template",
    "data_pipelines.smolvlm_format": "data_pipelines.chat.smolvlm_format",
    "data_pipelines.image_layout": "data_pipelines.chat.image_layout",
    "data_pipelines.writers": "data_pipelines.convert.writers",
    "data_pipelines.from_folder": "data_pipelines.convert.from_folder",
    "data_pipelines.from_llava": "data_pipelines.convert.from_llava",
    "data_pipelines.from_text": "data_pipelines.convert.from_text",
    "data_pipelines.shapes": "data_pipelines.convert.shapes",
    "data_pipelines.pii": "data_pipelines.privacy.pii",
    "data_pipelines.faces": "data_pipelines.privacy.faces",
    "data_pipelines.dedup": "data_pipelines.privacy.dedup",
    "data_pipelines.canaries": "data_pipelines.privacy.canaries",
    "mmllm.generation": "mmllm.model.generation",
    "mmllm.flops": "mmllm.model.flops",
    "mmllm.model_folder": "mmllm.formats.model_folder",
    "mmllm.checkpoint_export": "mmllm.formats.checkpoint",
    "mmllm.hf_import": "mmllm.formats.hf_llama",
    "mmllm.hf_idefics3": "mmllm.formats.hf_idefics3",
    "mmllm.gguf_export": "mmllm.formats.gguf",
    "mmllm.llama_cpp_runner": "mmllm.formats.llama_cpp",
    "mmllm.quantization": "mmllm.compress.quantization",
    "mmllm.quantized_weights": "mmllm.compress.quantized_weights",
    "mmllm.pruning": "mmllm.compress.pruning",
}
# Names that left a module which is still there: old module -> {name: the module that holds it now}.
# data_pipelines.chat was a module and is now a package; collate and pack left the processor for batching.
_CONVERSATION = "data_pipelines.chat.conversation"
MOVED_NAMES = {
    "data_pipelines.chat": {
        **dict.fromkeys(("IGNORE_INDEX", "Conversation", "Grid", "NoSupervisedTokens", "caption_conversation",
                         "question_conversation", "content_of_parts", "normalise_conversation",
                         "count_image_markers", "validate_conversation", "RenderedTurn"), _CONVERSATION),
        "ChatTemplate": "data_pipelines.chat.template",
    },
    "data_pipelines.processor": dict.fromkeys(("collate", "pack", "pack_rows", "FirstFit"), "data_pipelines.batching"),
}


def warn_moved(old: str, new: str) -> None:
    """One FutureWarning per old name and process."""
    if old not in _warned:
        _warned.add(old)
        warnings.warn(f"{old} moved to {new}; the old path goes in the next release", FutureWarning, stacklevel=3)


_warned: set[str] = set()


def name_getter(module: str):
    """A module `__getattr__` that resolves the names MOVED_NAMES lists for `module`, with a warning."""
    def __getattr__(name: str):
        if name in MOVED_NAMES[module]:
            warn_moved(f"{module}.{name}", f"{MOVED_NAMES[module][name]}.{name}")
            return getattr(importlib.import_module(MOVED_NAMES[module][name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warn_moved(spec.name, MOVED[spec.name])
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # the new module ran when it was imported


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
