"""Prompts: special tokens and their ids, the tokenizer, conversations and the chat templates that render them."""
