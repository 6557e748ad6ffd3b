"""Run configs: the schema (every key, with the built-in recipe's defaults), loading with
overrides and clear errors, the algorithm preset resolved into `rl`, and the built-in recipe."""
