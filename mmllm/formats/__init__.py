"""Weights on disk: model folders, Lightning checkpoints, Hugging Face and GGUF in and out, llama.cpp."""
