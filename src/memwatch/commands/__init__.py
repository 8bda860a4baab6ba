"""Subcommands of the `memwatch` CLI, one module each (see memwatch.cli)."""
