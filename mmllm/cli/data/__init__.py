"""The `mmllm data ...` commands."""
