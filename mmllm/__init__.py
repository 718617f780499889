"""mmllm: build, train, evaluate and run small vision-language models."""

__version__ = "0.1.0"
