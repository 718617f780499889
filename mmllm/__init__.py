"""mmllm: build, train, evaluate and run small vision-language models.

`mmllm.load(path)` returns a ready model (see mmllm.inference); it is imported on first use, so
`import mmllm` stays light (no torch until a model is loaded).
"""

__version__ = "0.1.0"

import data_pipelines as _data_pipelines  # noqa: F401,E402 (installs the old module paths of data_pipelines.moved)

__all__ = ["load", "VisionLanguageModel", "__version__"]


def __getattr__(name: str):
    if name in ("load", "VisionLanguageModel"):
        from mmllm import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mmllm' has no attribute {name!r}")
