"""Everything between a user's raw files and batched tensors: tokenizer, chat template, images, shards, loaders.

This package never imports `mmllm`; `mmllm` imports it.
"""
