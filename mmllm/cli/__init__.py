"""The `mmllm` command line: a thin map from subcommand to the function that does the work."""
