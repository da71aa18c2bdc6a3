"""Helpers for testing and benchmarking code that reads checkpoints."""
