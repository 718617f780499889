"""Prompts: special tokens and their ids, the tokenizer, conversations and the chat templates that render them.

Until 2026-12-05 `data_pipelines.chat` was one module; its names still resolve here, with a warning, for one
release (data_pipelines.moved).
"""

from data_pipelines.moved import name_getter

__getattr__ = name_getter(__name__)
