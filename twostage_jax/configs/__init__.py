"""The launcher's built-in configs: `--config=NAME[:variants]` with NAME one of these modules,
each with `get_config(variants) -> LaunchConfig`."""
