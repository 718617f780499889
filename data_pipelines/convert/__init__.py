"""Writing shards: from folders, LLaVA files and text, and the synthetic shapes set."""
