"""mmllm: build, train, evaluate and run small vision-language models.

`mmllm.load(path)` returns a ready model (see mmllm.inference); it is imported on first use, so
`import mmllm` stays light (no torch until a model is loaded).
"""

__version__ = "0.1.0"

import os as _os

import data_pipelines as _data_pipelines  # noqa: F401,E402 (installs the old module paths of data_pipelines.moved)
from mmllm.cache_folder import cache_folder as _cache_folder

# torch.compile's kernels (the compiled decode step, compiled training blocks) are kept in mmllm's cache folder, not
# the temporary directory, so they outlive a reboot (mmllm.model.compiled_decode). Set before Inductor first reads
# it; a folder the user chose is kept.
_os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_cache_folder() / "inductor"))

__all__ = ["load", "VisionLanguageModel", "__version__"]


def __getattr__(name: str):
    if name in ("load", "VisionLanguageModel"):
        from mmllm import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mmllm' has no attribute {name!r}")
