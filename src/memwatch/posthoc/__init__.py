"""Checkpoint-suite evaluation and analysis (`memwatch eval`, `memwatch analyze`)."""
