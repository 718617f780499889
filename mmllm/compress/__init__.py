"""Smaller and faster models: quantisation (and its weights on disk) and structured pruning."""
