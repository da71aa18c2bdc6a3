"""Smoke tests of the benchmark harness: quick runs of every loader, without asserting any speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mploader.arena import shm_directory
from mploader.benchmark import run_bench_cli
from mploader.benchmark._report import markdown_section
from mploader.benchmark._suites import SUITES, TARGETS, evaluate_targets, suite_workloads

BENCH_RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"
MINDSPORE_LOADERS = {"mindspore", "mindspore-async", "mindspore-aes", "mindspore-lenet"}
TARGET_FIGURES = [
    "mploader default ÷ the shared-memory floor",
    "mploader default ÷ mindspore.load_checkpoint 2.10",
    "mploader default ÷ safetensors.numpy.load_file",
    "peak memory ÷ tensor bytes",
    "choice_func keeping 10 % of the bytes ÷ full load",
    "AES-GCM load, 2 workers ÷ 1 worker",
    "AES-GCM load ÷ mindspore.load_checkpoint with the key",
    "LeNet-size file (0.5 MB), warm call ÷ MindSpore (warm call = second call in the same process)",
    "cold cache ÷ one sequential read of the file",
    "huge-page shared-memory directory ÷ one readinto (where one can be mounted)",
]


def _mounted_paths() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        return {line.split()[4] for line in file}


def _check_runs_cleaned_up(record: dict[str, Any]) -> None:
    for run in record["runs"]:
        assert run["ok"], f"{run['workload']} {run['loader']}: {run['error']}"
        assert not run["leftover_shm_files"], run["loader"]
        assert not run["killed_stragglers"], run["loader"]
    owned = tuple(f"{prefix}{run['pid']}-" for run in record["runs"]
                  for prefix in ("mploader-", "mploader-bench-floor-"))
    assert not [name for name in os.listdir(shm_directory()) if name.startswith(owned)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run ``bench/run.py --quick`` (the all suite) once, without MindSpore; return the record and Markdown."""
    directory = tmp_path_factory.mktemp("bench")
    json_path = directory / "record.json"
    markdown_path = directory / "BENCHMARKS.md"
    command = [
        sys.executable, str(BENCH_RUN), "--quick",
        "--dir", str(directory / "cache"),
        "--json", str(json_path),
        "--markdown", str(markdown_path),
        "--mindspore-python", str(directory / "no-such-python"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    record = json.loads(json_path.read_text(encoding="utf-8"))
    return record, markdown_path.read_text(encoding="utf-8")


def test_quick_run_every_loader(quick_run: tuple[dict[str, Any], str]) -> None:
    record, _ = quick_run
    hugeshm_skipped = "mploader-hugeshm" in record["skipped"]
    for workload in SUITES["all"]:
        summary = record["workloads"][workload.name]["summary"]
        for loader in workload.loaders:
            if loader in MINDSPORE_LOADERS or (loader == "mploader-hugeshm" and hugeshm_skipped):
                assert loader not in summary, loader
                continue
            entry = summary[loader]
            assert entry["ok_runs"] == 1, f"{workload.name} {loader}: {entry['first_error']}"
            assert entry["median_seconds"] > 0, loader
            assert entry["median_peak_bytes"] > 0, loader
    _check_runs_cleaned_up(record)


def test_quick_run_skips_mindspore(quick_run: tuple[dict[str, Any], str]) -> None:
    record, markdown = quick_run
    assert set(record["skipped"]) - {"mploader-hugeshm"} == MINDSPORE_LOADERS
    for loader in MINDSPORE_LOADERS:
        assert "no-such-python" in record["skipped"][loader]
        assert f"`{loader}` skipped" in markdown
    assert not [run for run in record["runs"] if run["loader"] in MINDSPORE_LOADERS]


def test_quick_run_workload_calls(quick_run: tuple[dict[str, Any], str]) -> None:
    record, _ = quick_run
    for run in record["runs"]:
        expected_calls = 2 if run["workload"] == "lenet" else 1
        assert len(run["calls"]) == expected_calls, run["loader"]
    cold = record["workloads"]["cold"]
    assert cold["cold"]
    sequential = cold["summary"]["sequential-read"]
    assert sequential["loaded_bytes"] == record["files"]["ckpt"]["tensor_bytes"]
    lenet = record["workloads"]["lenet"]["summary"]["mploader-lenet"]
    assert lenet["figure_call"] == 1
    assert lenet["median_seconds"] == lenet["median_second_call_seconds"]
    assert record["files"]["lenet"]["file_bytes"] < 600_000


def test_quick_run_choice_keeps_tenth(quick_run: tuple[dict[str, Any], str]) -> None:
    record, _ = quick_run
    choice = record["choice"]
    assert choice["kept_fraction"] >= 0.10
    assert record["workloads"]["plain"]["summary"]["mploader-choice10"]["loaded_bytes"] == choice["kept_bytes"]


def test_quick_run_hugeshm_unmounted(quick_run: tuple[dict[str, Any], str]) -> None:
    record, markdown = quick_run
    hugeshm = record["hugeshm"]
    if "mploader-hugeshm" in record["skipped"]:
        assert hugeshm["skip_reason"]
        assert "`mploader-hugeshm` skipped" in markdown
        return
    assert "huge=always" in hugeshm["mount_options"]
    assert hugeshm["path"] not in _mounted_paths()
    assert not os.path.exists(hugeshm["path"])


def test_quick_run_targets_table(quick_run: tuple[dict[str, Any], str]) -> None:
    record, markdown = quick_run
    assert [row["figure"] for row in record["targets"]] == TARGET_FIGURES
    assert "#### Targets" in markdown
    for figure in TARGET_FIGURES:
        assert f"| {figure} |" in markdown
    rows = {row["figure"]: row for row in record["targets"]}
    assert rows["mploader default ÷ mindspore.load_checkpoint 2.10"]["measured"] is None
    assert "`mindspore` skipped" in rows["mploader default ÷ mindspore.load_checkpoint 2.10"]["reason"]
    assert rows["cold cache ÷ one sequential read of the file"]["measured"] > 0
    assert rows["AES-GCM load, 2 workers ÷ 1 worker"]["measured"] > 0


def test_bench_cli_short_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    status = run_bench_cli(["--quick", "--loaders", "readinto,shm-floor", "--dir", str(tmp_path / "cache")])
    assert status == 0
    output = capsys.readouterr().out
    assert "suite `short`" in output
    assert "| readinto |" in output
    assert "#### Targets" not in output
    # mploader bench prints its section and writes no Markdown or JSON file unless requested.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"]


def test_bench_cli_rejects_unknown_loader(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        run_bench_cli(["--loaders", "mindspore"])
    assert raised.value.code == 2
    assert "not in the short suite" in capsys.readouterr().err


def test_suite_loader_filter() -> None:
    workloads, unknown = suite_workloads("targets", ["mploader-default", "no-such-loader"], cold=False,
                                         warm_pool=False)
    assert unknown == ["no-such-loader"]
    assert [workload.name for workload in workloads] == ["plain", "cold"]
    assert all(workload.loaders == ("mploader-default",) for workload in workloads)


def test_targets_met_and_missed() -> None:
    def entry(seconds: float, peak_ratio: float = 1.0) -> dict[str, Any]:
        return {"ok_runs": 1, "median_seconds": seconds, "median_peak_ratio": peak_ratio, "ratio_to": {}}

    plain = {"mploader-default": entry(1.0, peak_ratio=1.2), "shm-floor": entry(0.9)}
    plain["mploader-default"]["ratio_to"]["shm-floor"] = 1.0 / 0.9
    rows = {row["figure"]: row for row in evaluate_targets({"plain": plain}, {"mindspore": "not installed"})}

    floor = rows["mploader default ÷ the shared-memory floor"]
    assert floor["met"] is True
    assert floor["measured"] == pytest.approx(1.111, abs=1e-3)
    peak = rows["peak memory ÷ tensor bytes"]
    assert peak["met"] is False
    assert peak["measured"] == 1.2
    assert rows["mploader default ÷ mindspore.load_checkpoint 2.10"]["reason"] == "`mindspore` skipped"
    assert "not run" in rows["AES-GCM load, 2 workers ÷ 1 worker"]["reason"]
    assert len(rows) == len(TARGETS)


def test_targets_table_cells() -> None:
    targets = [
        {**row, "measured": measured, "met": met, "reason": None}
        for row, measured, met in [
            ({"figure": "a", "target": "≤ 1.15", "limit": 1.15}, 1.0, True),
            ({"figure": "b", "target": "≤ 1.0", "limit": 1.0}, 1.25, False),
        ]
    ]
    targets.append({"figure": "c", "target": "≤ 0.9", "limit": 0.9, "measured": None, "met": None,
                    "reason": "`safetensors` skipped"})
    record = {
        "date": "2026-01-01 00:00 UTC", "command": "bench", "suite": "targets",
        "machine": {"cpu_model": "cpu", "cpus_in_affinity_mask": 2, "cpus_online": 2, "memory_bytes": 2**30,
                    "kernel": "Linux", "thp_enabled": "never", "thp_shmem_enabled": "never", "python": "CPython",
                    "numpy": "2", "load_average_1min": 0.0},
        "files": {"ckpt": {"path": "/tmp/x.ckpt", "file_bytes": 2**20, "tensor_count": 1, "tensor_bytes": 2**20,
                           "filesystem": "ext4"}},
        "settings": {"seed": 0, "runs": 1, "warmup_runs": 0, "sample_interval_ms": 5.0},
        "skipped": {}, "workloads": {}, "targets": targets,
    }
    markdown = markdown_section(record)
    assert "| a | ≤ 1.15 | 1.000 | met, 0.150 below the target |" in markdown
    assert "| b | ≤ 1.0 | 1.250 | missed by 0.250 (+25%) |" in markdown
    assert "| c | ≤ 0.9 | - | not measured: `safetensors` skipped |" in markdown
