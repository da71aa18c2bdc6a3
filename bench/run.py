"""Run the benchmark harness from a source checkout: ``python bench/run.py --help``.

The harness lives in :mod:`mploader.benchmark`, so that ``mploader bench`` works from an installed
package. Run from here, it appends its results section to ``BENCHMARKS.md`` and writes the JSON
record to ``bench/results/`` by default. Other code can call :func:`main` with an argument list,
for example ``main(["--quick"])``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from mploader.benchmark import HarnessDefaults
from mploader.benchmark import main as run_harness

__all__ = ["main"]

REPOSITORY = Path(__file__).resolve().parent.parent
CHECKOUT_DEFAULTS = HarnessDefaults(
    markdown=REPOSITORY / "BENCHMARKS.md", results_directory=REPOSITORY / "bench" / "results"
)


def main(argv: Sequence[str] | None = None, prog: str = "python bench/run.py") -> int:
    """Run the benchmark with command-line arguments ``argv``; return the exit status."""
    return run_harness(argv, prog=prog, defaults=CHECKOUT_DEFAULTS)


if __name__ == "__main__":
    sys.exit(main())
