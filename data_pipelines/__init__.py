"""Everything between a user's raw files and batched tensors: tokenizer, chat template, images, shards, loaders.

This package never imports `mmllm`; `mmllm` imports it.
"""

from data_pipelines import moved as _moved

_moved.install()  # old module paths keep working, with a warning, for one release
