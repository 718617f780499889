"""`mmllm serve`: an OpenAI-compatible chat API over a model folder, with continuous batching and a chat page."""
