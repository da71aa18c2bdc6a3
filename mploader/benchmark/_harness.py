"""Command line, schedule and summary of the benchmark harness.

Every loader runs in a fresh subprocess (``_runner.py``, started by path), one or more warm-up runs
and then ``--runs`` measured runs each, interleaved round-robin over all workloads so that machine
noise hits all loaders alike. A sampler thread in this process records the memory of the
subprocess tree (see ``_memory.py``). The record goes to a JSON file, and a Markdown section with
the machine, the target table and one table of medians and ratios per workload is printed and
appended to a Markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import _report, _runner
from ._checkpoints import (
    ENCRYPTION_KEY_HEX,
    ENCRYPTION_MODE,
    PreparedFile,
    choice_expectation,
    describe_file,
    prepare_encrypted_copy,
    prepare_lenet_checkpoint,
    prepare_llm_checkpoint,
    prepare_safetensors_copy,
    runner_expectation,
)
from ._hugeshm import HugePageDirectory, huge_page_directory
from ._memory import MemorySample, TreeMemorySampler
from ._suites import (
    CHOICE_FRACTION,
    DEFAULT_SUITE,
    SUITE_DESCRIPTIONS,
    SUITES,
    Workload,
    evaluate_targets,
    file_kind,
    suite_workloads,
)

__all__ = ["HarnessDefaults", "build_parser", "main", "run_bench_cli"]

RUNNER_PATH = Path(_runner.__file__).resolve()
DEFAULT_CACHE_DIRECTORY = "/tmp/mploader-bench"
QUICK_SIZE = "8MiB"
# Seconds to wait for the processes a runner started (forkserver, workers) to exit after it does.
_GROUP_EXIT_SECONDS = 10.0


@dataclass(frozen=True)
class HarnessDefaults:
    """Option defaults that differ between ``bench/run.py`` and ``mploader bench``.

    ``markdown`` and ``results_directory`` None mean that nothing is written unless ``--markdown``
    or ``--json`` requests it.
    """

    suite: str = DEFAULT_SUITE
    size: str = "1GiB"
    runs: int = 5
    warmup: int = 1
    markdown: Path | None = None
    results_directory: Path | None = None


CLI_DEFAULTS = HarnessDefaults(suite="short", size="64MiB", runs=3, warmup=1)


def build_parser(prog: str | None = None, defaults: HarnessDefaults = HarnessDefaults()) -> argparse.ArgumentParser:
    suites = "; ".join(f"{name}: {text}" for name, text in SUITE_DESCRIPTIONS.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time mploader and baseline loaders on synthetic checkpoints, each run in a fresh process, "
        "and record medians, ratios, peak memory and the target table.",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default=defaults.suite,
                        help=f"which workloads and loaders to run (default: {defaults.suite}). {suites}")
    parser.add_argument("--size", default=None,
                        help=f"size of the LLM-shaped checkpoint, such as 64MiB or 1GiB (default: {defaults.size}; "
                        f"{QUICK_SIZE} with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic checkpoints (default: 0)")
    parser.add_argument("--dir", default=DEFAULT_CACHE_DIRECTORY,
                        help="directory where checkpoints are written and reused, keyed by size and seed "
                        f"(default: {DEFAULT_CACHE_DIRECTORY})")

    parser.add_argument("--runs", type=int, default=None,
                        help=f"measured runs per loader, each in a fresh process (default: {defaults.runs}; 1 with "
                        "--quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"unmeasured runs per loader before the measured ones (default: {defaults.warmup}; 0 "
                        "with --quick)")

    parser.add_argument("--loaders", default=None,
                        help="comma-separated loaders of the suite to run (default: all of the suite's loaders)")
    parser.add_argument("--mindspore-python", default=None, metavar="PATH",
                        help="Python interpreter that can import mindspore, for the mindspore loaders "
                        "(default: this interpreter, if it can)")
    parser.add_argument("--hugeshm-dir", default=None, metavar="DIR",
                        help="directory on a tmpfs mounted with huge=always, for mploader-hugeshm (default: the "
                        "harness mounts one if it runs as root)")

    parser.add_argument("--cold", action="store_true",
                        help="evict the file from the page cache before each timed call of the plain workload "
                        "instead of reading it (throughput and short suites; the others have a cold workload)")
    parser.add_argument("--warm-pool", action="store_true",
                        help="also time a second call in the same process in every workload and report it")

    parser.add_argument("--sample-ms", type=float, default=5.0,
                        help="memory sampling interval in milliseconds; 0 disables memory sampling (default: 5)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds after which one run is killed and counted as failed (default: 600)")

    results = defaults.results_directory
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="where to write the JSON record (default: "
                        + (f"{results}/DATE-SIZE.json)" if results else "not written)"))
    parser.add_argument("--markdown", default=None if defaults.markdown is None else str(defaults.markdown),
                        metavar="PATH",
                        help="Markdown file the results section is appended to (default: "
                        + (f"{defaults.markdown})" if defaults.markdown else "none; the section is printed)"))
    parser.add_argument("--no-markdown", action="store_true", help="do not append to any Markdown file")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="write a PNG of throughput against worker count (needs matplotlib)")

    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SIZE}, 1 run, no warm-up, unless those options are given")
    return parser


def _hold_seconds(args: argparse.Namespace) -> float:
    """Return how long a runner holds each result, so that at least three memory samples see it."""
    return max(0.03, 3 * args.sample_ms / 1000)


def _resolve_options(args: argparse.Namespace, parser: argparse.ArgumentParser, defaults: HarnessDefaults) -> None:
    from mploader.cli import parse_size

    if args.size is None:
        args.size = QUICK_SIZE if args.quick else defaults.size
    try:
        args.size_bytes = parse_size(args.size)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--size: {exc}")
    if args.runs is None:
        args.runs = 1 if args.quick else defaults.runs
    if args.warmup is None:
        args.warmup = 0 if args.quick else defaults.warmup
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    if args.sample_ms < 0:
        parser.error(f"--sample-ms must be 0 or more, got {args.sample_ms}")
    if args.cold and any(workload.cold for workload in SUITES[args.suite]):
        parser.error(f"--cold applies to the throughput and short suites; the {args.suite} suite measures a cold "
                     "page cache in its cold workload")

    selected = None
    if args.loaders is not None:
        selected = list(dict.fromkeys(name.strip() for name in args.loaders.split(",") if name.strip()))
        if not selected:
            parser.error("--loaders: no loader names given")
    workloads, unknown = suite_workloads(args.suite, selected, args.cold, args.warm_pool)
    if unknown:
        in_suite = sorted({loader for workload in SUITES[args.suite] for loader in workload.loaders})
        parser.error(f"--loaders: {','.join(unknown)} not in the {args.suite} suite; choose from {','.join(in_suite)}")
    args.workloads = workloads


def find_mindspore_python(option: str | None) -> tuple[str | None, str | None]:
    """Return (interpreter that imports mindspore, None), or (None, reason it is unavailable)."""
    if option is None:
        if importlib.util.find_spec("mindspore") is None:
            return None, f"{sys.executable} cannot import mindspore; pass --mindspore-python PATH"
        return sys.executable, None
    if not (os.path.isfile(option) and os.access(option, os.X_OK)):
        return None, f"--mindspore-python {option} is not an executable file"
    try:
        completed = subprocess.run(
            [option, "-c", "import mindspore, numpy"], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{option} failed to import mindspore: {exc}"
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no error output"])[-1]
        return None, f"{option} cannot import mindspore: {last_line}"
    return option, None


def _choose_interpreters(loaders: list[str], mindspore_option: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Return the interpreter of each loader that can run, and the reason for each that cannot."""
    pythons = {loader: sys.executable for loader in loaders}
    skipped: dict[str, str] = {}
    if any(loader in _runner.MINDSPORE_LOADERS for loader in loaders):
        mindspore_python, reason = find_mindspore_python(mindspore_option)
        for loader in _runner.MINDSPORE_LOADERS:
            if loader not in pythons:
                continue
            if mindspore_python is None:
                skipped[loader] = reason or "mindspore is unavailable"
                del pythons[loader]
            else:
                pythons[loader] = mindspore_python
    for loader in _runner.SAFETENSORS_LOADERS:
        if loader in pythons and importlib.util.find_spec("safetensors") is None:
            skipped[loader] = f"{sys.executable} cannot import safetensors; pip install 'mploader[bench]'"
            del pythons[loader]
    return pythons, skipped


# One run: a runner subprocess, sampled from here.


def _peak_in_window(samples: list[MemorySample], call: dict[str, Any]) -> dict[str, Any]:
    window = [sample for sample in samples if call["start"] <= sample.time <= call["hold_end"]]
    before = [sample for sample in samples if call["baseline_start"] <= sample.time < call["start"]]
    if not window:
        return {"peak_bytes": None, "baseline_bytes": None, "added_bytes": None, "samples_in_window": 0}
    peak = max(window, key=lambda sample: sample.total_bytes)
    baseline = before[-1].total_bytes if before else None
    return {
        "peak_bytes": peak.total_bytes,
        "peak_anonymous_bytes": peak.anonymous_bytes,
        "peak_shared_memory_bytes": peak.shared_memory_bytes,
        "baseline_bytes": baseline,
        "added_bytes": None if baseline is None else peak.total_bytes - baseline,
        "samples_in_window": len(window),
    }


def _remove_leftovers(runner_pid: int, shm_directory: str) -> list[str]:
    """Remove shared-memory files that the runner ``runner_pid`` left; return their names."""
    owned = (f"mploader-{runner_pid}-", f"{_runner.FLOOR_PREFIX}{runner_pid}-")
    removed: list[str] = []
    try:
        names = os.listdir(shm_directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(owned):
            try:
                os.unlink(os.path.join(shm_directory, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    return removed


def _kill_group(group_id: int) -> None:
    try:
        os.killpg(group_id, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(group_id: int) -> bool:
    """Wait for the processes of the runner's group to exit; kill them after a grace period.

    Returns True when some had to be killed.
    """
    deadline = time.monotonic() + _GROUP_EXIT_SECONDS
    while _group_alive(group_id):
        if time.monotonic() > deadline:
            _kill_group(group_id)
            return True
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to run one loader of one workload: interpreter, runner config, environment."""

    workload: str
    loader: str
    python: str
    config: dict[str, Any]
    shm_directory: str
    environment: dict[str, str] | None = None


def run_once(spec: RunSpec, sample_seconds: float, timeout: float) -> dict[str, Any]:
    """Run ``spec``'s loader once in a fresh process and return the run record."""
    command = [spec.python, str(RUNNER_PATH), json.dumps({**spec.config, "loader": spec.loader})]
    started = time.monotonic()
    # A new session puts the runner, its forkserver and its workers in one process group to clean up.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env=spec.environment)
    sampler = TreeMemorySampler(child.pid, sample_seconds, spec.shm_directory) if sample_seconds else None
    if sampler is not None:
        sampler.start()
    error = None
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid)
        stdout, stderr = child.communicate()
        error = f"timed out after {timeout:g} s and was killed"
    except BaseException:
        _kill_group(child.pid)
        child.communicate()
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        killed_stragglers = _reap_group(child.pid)
        leftovers = _remove_leftovers(child.pid, spec.shm_directory)

    record: dict[str, Any] = {
        "workload": spec.workload,
        "loader": spec.loader,
        "pid": child.pid,
        "exit_status": child.returncode,
        "wall_seconds": time.monotonic() - started,
        "leftover_shm_files": leftovers,
        "killed_stragglers": killed_stragglers,
        "sampler_cpu_seconds": sampler.cpu_seconds if sampler is not None else None,
        "max_process_count": sampler.max_process_count if sampler is not None else None,
    }
    if error is None and child.returncode != 0:
        last_lines = "\n".join(stderr.strip().splitlines()[-5:])
        error = f"exited with status {child.returncode}: {last_lines}"
    if error is None and leftovers:
        error = f"left shared-memory files behind in {spec.shm_directory}, removed by the harness: {leftovers}"
    if error is None and killed_stragglers:
        error = f"left processes running {_GROUP_EXIT_SECONDS:g} s after it exited; the harness killed them"
    if error is None:
        report = json.loads(stdout)
        samples = sampler.samples if sampler is not None else []
        calls = []
        for call in report["calls"]:
            calls.append({**call, **_peak_in_window(samples, call)})
        record.update({
            "calls": calls,
            "versions": report["versions"],
            "python": report["python"],
            "ru_maxrss_self_bytes": report["ru_maxrss_self_bytes"],
        })
    record["ok"] = error is None
    record["error"] = error
    return record


# Schedule and summary.


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summarize_loader(ok_runs: list[dict[str, Any]], failed: list[dict[str, Any]], figure_call: int,
                      loaded_bytes: int) -> dict[str, Any]:
    calls = [run["calls"][figure_call] for run in ok_runs if len(run["calls"]) > figure_call]
    seconds = [call["seconds"] for call in calls]
    peaks = [call["peak_bytes"] for call in calls if call["peak_bytes"] is not None]
    added = [call["added_bytes"] for call in calls if call["added_bytes"] is not None]
    median_seconds = _median(seconds)
    return {
        "ok_runs": len(ok_runs),
        "failed_runs": len(failed),
        "first_error": failed[0]["error"] if failed else None,
        "figure_call": figure_call,
        "loaded_bytes": loaded_bytes,
        "seconds": seconds,
        "median_seconds": median_seconds,
        "min_seconds": min(seconds) if seconds else None,
        "max_seconds": max(seconds) if seconds else None,
        "gigabytes_per_second": loaded_bytes / median_seconds / 1e9 if median_seconds else None,
        "median_peak_bytes": _median(peaks),
        "median_peak_ratio": _median([peak / loaded_bytes for peak in peaks]),
        "median_added_ratio": _median([value / loaded_bytes for value in added]),
        "median_first_call_seconds": _median([run["calls"][0]["seconds"] for run in ok_runs]),
        "median_second_call_seconds": _median([run["calls"][1]["seconds"] for run in ok_runs if len(run["calls"]) > 1]),
        "median_ru_maxrss_self_bytes": _median([run["ru_maxrss_self_bytes"] for run in ok_runs]),
        "median_system_disk_read_bytes": _median([call.get("system_disk_read_bytes", 0) for call in calls]),
        "median_system_steal_seconds": _median([call.get("system_steal_seconds", 0.0) for call in calls]),
        "median_system_shmem_huge_bytes": _median([call["system_shmem_huge_bytes"] for call in calls
                                                   if "system_shmem_huge_bytes" in call]),
        "median_sampler_cpu_share": _median([
            run["sampler_cpu_seconds"] / run["wall_seconds"]
            for run in ok_runs
            if run["sampler_cpu_seconds"] is not None and run["wall_seconds"] > 0
        ]),
        "workers": calls[0].get("workers") if calls else None,
        "ratio_to": {},
    }


def summarize_runs(runs: list[dict[str, Any]], workload: Workload, loaded_bytes: dict[str, int]) -> dict[str, Any]:
    """Return per-loader medians, ranges, ratios and memory figures of ``workload``'s measured runs.

    Times, memory and ratios come from the workload's figure call. Each ratio divides one loader's
    median by another's, for every pair of loaders in the workload.
    """
    summary: dict[str, Any] = {}
    for loader in workload.loaders:
        measured = [run for run in runs
                    if run["workload"] == workload.name and run["loader"] == loader and not run["warmup"]]
        if not measured:
            continue
        ok_runs = [run for run in measured if run["ok"]]
        failed = [run for run in measured if not run["ok"]]
        summary[loader] = _summarize_loader(ok_runs, failed, workload.figure_call, loaded_bytes[loader])
    for entry in summary.values():
        for other, reference in summary.items():
            if entry["median_seconds"] and reference["median_seconds"]:
                entry["ratio_to"][other] = entry["median_seconds"] / reference["median_seconds"]
    return summary


def _schedule(specs: list[RunSpec], warmup: int, runs: int) -> list[tuple[int, bool, RunSpec]]:
    """Return (round, is_warmup, spec) in run order: round-robin, rotated by one spec per round."""
    order = []
    for round_index in range(warmup + runs):
        shift = round_index % len(specs)
        for spec in specs[shift:] + specs[:shift]:
            order.append((round_index, round_index < warmup, spec))
    return order


def _progress_line(run: dict[str, Any], position: str) -> str:
    name = f"{run['workload']} {run['loader']}"
    if not run["ok"]:
        return f"{position} {name}: FAILED: {run['error']}"
    times = ", ".join(f"{call['seconds']:.4f} s" for call in run["calls"])
    peak = run["calls"][0].get("peak_bytes")
    peak_text = f", peak {peak / 2**20:,.0f} MiB" if peak is not None else ""
    return f"{position} {name}: {times}{peak_text}"


# Files and run specifications.


def _prepare_files(args: argparse.Namespace, kinds: set[str]) -> dict[str, PreparedFile]:
    directory = Path(args.dir)
    files: dict[str, PreparedFile] = {}
    if kinds & {"ckpt", "safetensors", "aes"}:
        files["ckpt"] = prepare_llm_checkpoint(directory, args.size_bytes, args.seed)
    if "safetensors" in kinds:
        files["safetensors"] = prepare_safetensors_copy(files["ckpt"])
    if "aes" in kinds:
        files["aes"] = prepare_encrypted_copy(files["ckpt"], args.size_bytes, args.seed)
    if "lenet" in kinds:
        files["lenet"] = prepare_lenet_checkpoint(directory, args.seed)
    return files


def _loader_config(loader: str, files: dict[str, PreparedFile], keep_names: list[str] | None,
                   choice_expected: dict[str, Any] | None) -> dict[str, Any]:
    """Return the runner config entries that depend on the loader: file, expectations, key, choice."""
    prepared = files[file_kind(loader)]
    config: dict[str, Any] = {"path": str(prepared.path), "expected": runner_expectation(prepared.expected)}
    if loader == "mploader-choice10":
        config["keep_names"] = keep_names
        config["expected"] = choice_expected
    if file_kind(loader) == "aes":
        config["dec_key_hex"] = ENCRYPTION_KEY_HEX
        config["dec_mode"] = ENCRYPTION_MODE
    return config


def _build_specs(
    workloads: list[Workload],
    pythons: dict[str, str],
    files: dict[str, PreparedFile],
    args: argparse.Namespace,
    hugeshm: HugePageDirectory | None,
    shm_path: str,
) -> tuple[list[RunSpec], dict[str, Any] | None]:
    """Return one spec per (workload, loader) that can run, and the choice_func record if any."""
    hold_seconds = _hold_seconds(args)
    choice: dict[str, Any] | None = None
    keep_names = choice_expected = None
    if "mploader-choice10" in pythons:
        keep_names, choice_expected = choice_expectation(files["ckpt"], args.size_bytes, CHOICE_FRACTION)
        choice = {
            "names": keep_names,
            "tensor_count": files["ckpt"].expected["tensor_count"],
            "kept_bytes": choice_expected["tensor_bytes"],
            "kept_fraction": choice_expected["tensor_bytes"] / files["ckpt"].expected["tensor_bytes"],
        }
    specs = []
    for workload in workloads:
        for loader in workload.loaders:
            if loader not in pythons:
                continue
            config = {"cold": workload.cold, "warm_pool": workload.warm_pool, "hold_seconds": hold_seconds,
                      **_loader_config(loader, files, keep_names, choice_expected)}
            environment = None
            shm_directory = shm_path
            if loader == "mploader-hugeshm":
                assert hugeshm is not None and hugeshm.path is not None
                shm_directory = hugeshm.path
                environment = {**os.environ, "MPLOADER_SHM_DIR": hugeshm.path}
            specs.append(RunSpec(workload.name, loader, pythons[loader], config, shm_directory, environment))
    return specs, choice


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the context is active, so that cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signal_number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signal_number)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_schedule(specs: list[RunSpec], args: argparse.Namespace, prog: str) -> list[dict[str, Any]] | None:
    """Run every spec ``args.warmup + args.runs`` times; return the run records, or None if interrupted."""
    runs: list[dict[str, Any]] = []
    order = _schedule(specs, args.warmup, args.runs)
    for number, (round_index, warmup, spec) in enumerate(order, start=1):
        try:
            run = run_once(spec, args.sample_ms / 1000, args.timeout)
        except KeyboardInterrupt:
            # run_once has killed the runner's process group; nothing is recorded for a partial benchmark.
            print(f"{prog}: interrupted during run {number} of {len(order)}; no results written", file=sys.stderr)
            return None
        run["round"] = round_index
        run["warmup"] = warmup
        runs.append(run)
        label = "warm-up" if warmup else f"round {round_index - args.warmup + 1}/{args.runs}"
        print(_progress_line(run, f"[{number}/{len(order)} {label}]"), file=sys.stderr)
    return runs


def _loaded_bytes(loader: str, files: dict[str, PreparedFile], choice: dict[str, Any] | None) -> int:
    """Return the tensor bytes that ``loader`` returns; raw reads count the tensor bytes of the checkpoint."""
    if loader == "mploader-choice10" and choice is not None:
        kept_bytes: int = choice["kept_bytes"]
        return kept_bytes
    tensor_bytes: int = files[file_kind(loader)].expected["tensor_bytes"]
    return tensor_bytes


def _build_record(
    args: argparse.Namespace,
    arguments: list[str],
    prog: str,
    started: datetime.datetime,
    machine: dict[str, Any],
    files: dict[str, PreparedFile],
    runs: list[dict[str, Any]],
    skipped: dict[str, str],
    choice: dict[str, Any] | None,
    hugeshm: HugePageDirectory | None,
) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for workload in args.workloads:
        loaded = {loader: _loaded_bytes(loader, files, choice) for loader in workload.loaders
                  if loader not in skipped}
        workloads[workload.name] = {
            "description": workload.description,
            "loaders": list(workload.loaders),
            "baselines": list(workload.baselines),
            "cold": workload.cold,
            "warm_pool": workload.warm_pool,
            "figure_call": workload.figure_call,
            "file_kinds": sorted({file_kind(loader) for loader in loaded}),
            "summary": summarize_runs(runs, workload, loaded),
        }
    loader_versions = {}
    for run in runs:
        if run["ok"] and run["loader"] not in loader_versions:
            loader_versions[run["loader"]] = {"python": run["python"], **run["versions"]}
    has_targets = args.suite in ("targets", "all")
    summaries = {name: workload["summary"] for name, workload in workloads.items()}
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([*shlex.split(prog), *arguments]),
        "suite": args.suite,
        "machine": machine,
        "files": {kind: describe_file(prepared) for kind, prepared in files.items()},
        "settings": {
            "requested_bytes": args.size_bytes,
            "seed": args.seed,
            "runs": args.runs,
            "warmup_runs": args.warmup,
            "sample_interval_ms": args.sample_ms,
            "hold_seconds": _hold_seconds(args),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "choice": choice,
        "hugeshm": None if hugeshm is None else {
            "path": hugeshm.path,
            "mounted_by_harness": hugeshm.mounted_by_harness,
            "mount_options": hugeshm.mount_options,
            "skip_reason": hugeshm.skip_reason,
        },
        "skipped": skipped,
        "loader_versions": loader_versions,
        "targets": evaluate_targets(summaries, skipped) if has_targets else None,
        "workloads": workloads,
        "runs": runs,
    }


def _write_outputs(record: dict[str, Any], args: argparse.Namespace, defaults: HarnessDefaults,
                   started: datetime.datetime) -> None:
    json_path = Path(args.json) if args.json else None
    if json_path is None and defaults.results_directory is not None:
        json_path = defaults.results_directory / f"{started.strftime('%Y%m%d-%H%M%S')}-{args.size_bytes}.json"
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {json_path}", file=sys.stderr)

    if args.plot:
        note = _report.write_plot(record, Path(args.plot))
        print(note or f"wrote {args.plot}", file=sys.stderr)
    section = _report.markdown_section(record)
    if args.markdown and not args.no_markdown:
        _report.append_markdown(Path(args.markdown), section)
        print(f"appended the results to {args.markdown}", file=sys.stderr)
    print(section)


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m mploader.benchmark",
    defaults: HarnessDefaults = HarnessDefaults(),
) -> int:
    """Run the benchmark with command-line arguments ``argv``; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog, defaults)
    args = parser.parse_args(arguments)
    _resolve_options(args, parser, defaults)

    from mploader.arena import shm_directory

    shm_path = shm_directory()
    loaders = list(dict.fromkeys(loader for workload in args.workloads for loader in workload.loaders))
    pythons, skipped = _choose_interpreters(loaders, args.mindspore_python)
    if not pythons:
        print(f"{prog}: error: no loader can run: {skipped}", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.timezone.utc)
    machine = _report.describe_machine(shm_path)
    files = _prepare_files(args, {file_kind(loader) for loader in pythons})

    with contextlib.ExitStack() as stack:
        stack.enter_context(_exit_on_sigterm())
        hugeshm = None
        if "mploader-hugeshm" in pythons:
            hugeshm = stack.enter_context(huge_page_directory(files["ckpt"].expected["file_bytes"], args.hugeshm_dir))
            if hugeshm.path is None:
                skipped["mploader-hugeshm"] = hugeshm.skip_reason or "no huge-page tmpfs"
                del pythons["mploader-hugeshm"]
        if not pythons:
            print(f"{prog}: error: no loader can run: {skipped}", file=sys.stderr)
            return 1
        specs, choice = _build_specs(args.workloads, pythons, files, args, hugeshm, shm_path)
        runs = _run_schedule(specs, args, prog)
    if runs is None:
        return 130

    record = _build_record(args, arguments, prog, started, machine, files, runs, skipped, choice, hugeshm)
    _write_outputs(record, args, defaults, started)
    return 0 if all(run["ok"] for run in runs) else 1


def run_bench_cli(argv: list[str]) -> int:
    """Run ``mploader bench ARGS``: by default the short suite, 64 MiB, 3 runs, printed and not saved."""
    return main(argv, prog="mploader bench", defaults=CLI_DEFAULTS)
