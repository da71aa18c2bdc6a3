"""Workloads, suites and target figures of the benchmark.

A workload is a set of loaders timed on the same kind of call (file, page-cache state, first or
second call), so that ratios between its loaders are meaningful. A suite is the list of workloads
one command runs. A target is one figure of the target table: a ratio between two loaders of one
workload, or a loader's peak memory over its tensor bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT_SUITE",
    "LOADER_FILES",
    "SUITES",
    "SUITE_DESCRIPTIONS",
    "TARGETS",
    "Target",
    "Workload",
    "evaluate_targets",
    "file_kind",
    "suite_workloads",
]

DEFAULT_SUITE = "all"
# Fraction of the tensor bytes that mploader-choice10's choice_func keeps, at least.
CHOICE_FRACTION = 0.10

# The file each loader reads; loaders not listed read the plain LLM-shaped .ckpt ("ckpt").
LOADER_FILES = {
    "safetensors": "safetensors",
    "mploader-safetensors-default": "safetensors",
    "mploader-aes-w1": "aes",
    "mploader-aes-w2": "aes",
    "mploader-aes-default": "aes",
    "mindspore-aes": "aes",
    "mploader-lenet": "lenet",
    "mindspore-lenet": "lenet",
}


def file_kind(loader: str) -> str:
    """Return the kind of file ``loader`` reads: ckpt, safetensors, aes or lenet."""
    return LOADER_FILES.get(loader, "ckpt")


@dataclass(frozen=True)
class Workload:
    """Loaders whose times are compared with each other.

    ``figure_call`` is 0 to compare the first call in a fresh process, or 1 to compare the second
    call in the same process. ``baselines`` are the loaders that get a "÷" column in the report.
    """

    name: str
    description: str
    loaders: tuple[str, ...]
    baselines: tuple[str, ...]
    cold: bool = False
    warm_pool: bool = False
    figure_call: int = 0


@dataclass(frozen=True)
class Target:
    """One row of the target table: ``loader`` ÷ ``baseline`` in ``workload`` must be at most ``limit``.

    With ``baseline`` None the figure is the loader's median peak memory ÷ its tensor bytes.
    """

    figure: str
    limit: float
    limit_text: str
    workload: str
    loader: str
    baseline: str | None


_THROUGHPUT_LOADERS = (
    "mploader-w1", "mploader-w2", "mploader-default", "mploader-inprocess", "shm-floor", "readinto", "mindspore",
    "mindspore-async",
)
_TARGET_PLAIN_LOADERS = (
    "mploader-default", "shm-floor", "readinto", "mindspore", "safetensors", "mploader-safetensors-default",
    "mploader-choice10", "mploader-hugeshm",
)
_PLAIN_BASELINES = ("readinto", "shm-floor", "mindspore", "safetensors")
_PLAIN_DESCRIPTION = "the LLM-shaped checkpoint, warm page cache, first call in a fresh process"


def _plain(loaders: tuple[str, ...]) -> Workload:
    return Workload("plain", _PLAIN_DESCRIPTION, loaders, _PLAIN_BASELINES)


_AES = Workload(
    "aes", "the AES-GCM encrypted copy of the LLM-shaped checkpoint, warm page cache, first call in a fresh process",
    ("mploader-aes-w1", "mploader-aes-w2", "mploader-aes-default", "mindspore-aes"),
    ("mploader-aes-w1", "mindspore-aes"),
)
_LENET = Workload(
    "lenet", "the LeNet-size checkpoint, warm page cache, second call in the same process",
    ("mploader-lenet", "mindspore-lenet"), ("mindspore-lenet",), warm_pool=True, figure_call=1,
)
_COLD = Workload(
    "cold", "the LLM-shaped checkpoint, evicted from the page cache before each call, first call in a fresh process",
    ("mploader-default", "sequential-read"), ("sequential-read",), cold=True,
)

SUITES: dict[str, tuple[Workload, ...]] = {
    "all": (_plain(tuple(dict.fromkeys(_THROUGHPUT_LOADERS + _TARGET_PLAIN_LOADERS))), _AES, _LENET, _COLD),
    "targets": (_plain(_TARGET_PLAIN_LOADERS), _AES, _LENET, _COLD),
    "throughput": (_plain(_THROUGHPUT_LOADERS),),
    "short": (_plain(("mploader-default", "shm-floor", "readinto")),),
}
SUITE_DESCRIPTIONS = {
    "all": "every loader of the throughput and targets suites",
    "targets": "the loaders that the target table needs, in the workloads plain, aes, lenet and cold",
    "throughput": "mploader with 1, 2, automatic and no workers against the baselines, on the plain checkpoint",
    "short": "mploader-default, shm-floor and readinto on the plain checkpoint",
}

TARGETS = (
    Target("mploader default ÷ the shared-memory floor", 1.15, "≤ 1.15", "plain", "mploader-default", "shm-floor"),
    Target("mploader default ÷ mindspore.load_checkpoint 2.10", 1 / 6, "≤ 1/6 (0.167)", "plain", "mploader-default",
           "mindspore"),
    Target("mploader default ÷ safetensors.numpy.load_file", 0.9, "≤ 0.9", "plain", "mploader-default",
           "safetensors"),
    Target("peak memory ÷ tensor bytes", 1.10, "≤ 1.10", "plain", "mploader-default", None),
    Target("choice_func keeping 10 % of the bytes ÷ full load", 0.15, "≤ 0.15", "plain", "mploader-choice10",
           "mploader-default"),
    Target("AES-GCM load, 2 workers ÷ 1 worker", 0.6, "≤ 0.6", "aes", "mploader-aes-w2", "mploader-aes-w1"),
    Target("AES-GCM load ÷ mindspore.load_checkpoint with the key", 1 / 8, "≤ 1/8 (0.125)", "aes",
           "mploader-aes-default", "mindspore-aes"),
    Target("LeNet-size file (0.5 MB), warm call ÷ MindSpore (warm call = second call in the same process)", 1.0,
           "≤ 1.0", "lenet", "mploader-lenet", "mindspore-lenet"),
    Target("cold cache ÷ one sequential read of the file", 1.1, "≤ 1.1", "cold", "mploader-default",
           "sequential-read"),
    Target("huge-page shared-memory directory ÷ one readinto (where one can be mounted)", 1.0, "≤ 1.0", "plain",
           "mploader-hugeshm", "readinto"),
)


def suite_workloads(
    suite: str, selected: list[str] | None, cold: bool, warm_pool: bool
) -> tuple[list[Workload], list[str]]:
    """Return the workloads of ``suite`` limited to the ``selected`` loaders, and the names it lacks.

    ``cold`` makes the plain workload cold, and ``warm_pool`` makes every workload time a second call.
    Workloads left without loaders are dropped.
    """
    workloads = []
    known: set[str] = set()
    for workload in SUITES[suite]:
        known.update(workload.loaders)
        loaders = workload.loaders if selected is None else tuple(name for name in workload.loaders if name in selected)
        if not loaders:
            continue
        changes: dict[str, Any] = {"loaders": loaders}
        if cold and workload.name == "plain":
            changes["cold"] = True
            changes["description"] = workload.description.replace("warm page cache",
                                                                   "evicted from the page cache before each call")
        if warm_pool:
            changes["warm_pool"] = True
        workloads.append(replace(workload, **changes))
    unknown = [] if selected is None else [name for name in selected if name not in known]
    return workloads, unknown


def _unmeasured_reason(
    target: Target, summaries: dict[str, dict[str, Any]], skipped: dict[str, str]
) -> str | None:
    """Return why ``target`` cannot be computed, or None when it can."""
    summary = summaries.get(target.workload)
    for loader in (target.loader, target.baseline):
        if loader is None:
            continue
        if loader in skipped:
            return f"`{loader}` skipped"
        entry = summary.get(loader) if summary is not None else None
        if entry is None:
            return f"`{loader}` not run in the `{target.workload}` workload"
        if entry["ok_runs"] == 0:
            return f"every run of `{loader}` failed"
    return None


def evaluate_targets(summaries: dict[str, dict[str, Any]], skipped: dict[str, str]) -> list[dict[str, Any]]:
    """Return one row per target: the measured figure and whether it meets the limit.

    ``summaries`` maps a workload name to its per-loader summary, and ``skipped`` maps a loader to
    the reason it did not run.
    """
    rows = []
    for target in TARGETS:
        row: dict[str, Any] = {
            "figure": target.figure,
            "target": target.limit_text,
            "limit": target.limit,
            "workload": target.workload,
            "loader": target.loader,
            "baseline": target.baseline,
            "measured": None,
            "met": None,
            "reason": _unmeasured_reason(target, summaries, skipped),
        }
        if row["reason"] is None:
            entry = summaries[target.workload][target.loader]
            if target.baseline is None:
                measured = entry["median_peak_ratio"]
            else:
                measured = entry["ratio_to"].get(target.baseline)
            if measured is None:
                row["reason"] = "no memory samples" if target.baseline is None else "no median time"
            else:
                row["measured"] = measured
                row["met"] = measured <= target.limit
        rows.append(row)
    return rows
