"""Benchmark harness: time mploader against MindSpore, safetensors and plain reads of the same file.

``mploader bench`` (through :func:`run_bench_cli`), ``python -m mploader.benchmark`` and, in a source
checkout, ``python bench/run.py`` run it; ``--help`` lists the options. BENCHMARKS.md describes the
suites, the workloads and how each figure is computed.
"""

from __future__ import annotations

from ._harness import CLI_DEFAULTS, HarnessDefaults, build_parser, main, run_bench_cli

__all__ = ["CLI_DEFAULTS", "HarnessDefaults", "build_parser", "main", "run_bench_cli"]
