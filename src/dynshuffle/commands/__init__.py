"""Subcommands of the `dynshuffle` CLI: each module has `configure(parser)` and `run(args) -> int`."""
