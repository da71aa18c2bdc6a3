"""Describe the machine, and write a benchmark record as a Markdown section and a plot."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["append_markdown", "describe_machine", "filesystem_type", "markdown_section", "write_plot"]

_THP_DIRECTORY = "/sys/kernel/mm/transparent_hugepage"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    text = _read_text("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _free_page_reporting() -> bool | None:
    """Return whether a virtio balloon reports free guest pages to the host, or None if no balloon.

    With free page reporting (virtio feature bit 5, VIRTIO_BALLOON_F_REPORTING), the host reclaims
    free guest memory, so the next first touch of that memory is slower by a varying amount.
    """
    devices = Path("/sys/bus/virtio/devices")
    if not devices.is_dir():
        return None
    for device in devices.iterdir():
        driver = device / "driver"
        if not driver.exists() or driver.resolve().name != "virtio_balloon":
            continue
        features = _read_text(str(device / "features")) or ""
        return len(features) > 5 and features[5] == "1"
    return None


def filesystem_type(path: str) -> str:
    """Return the type of the filesystem holding ``path`` (ext4, tmpfs, ...), from mountinfo."""
    target = os.path.realpath(path)
    best_mount = ""
    best_type = "unknown"
    text = _read_text("/proc/self/mountinfo") or ""
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        mount_point = fields[4]
        fs_type = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # Later lines mount over earlier ones at the same point, so >= keeps the last.
        if inside and len(mount_point) >= len(best_mount):
            best_mount, best_type = mount_point, fs_type
    return best_type


def describe_machine(shm_directory: str) -> dict[str, Any]:
    """Return the facts a benchmark result depends on."""
    import numpy as np

    try:
        shm = os.statvfs(shm_directory)
        shm_bytes: int | None = shm.f_blocks * shm.f_frsize
    except OSError:
        shm_bytes = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpus_in_affinity_mask": affinity,
        "cpus_online": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "thp_enabled": _read_text(f"{_THP_DIRECTORY}/enabled"),
        "thp_shmem_enabled": _read_text(f"{_THP_DIRECTORY}/shmem_enabled"),
        "thp_defrag": _read_text(f"{_THP_DIRECTORY}/defrag"),
        "free_page_reporting": _free_page_reporting(),
        "shm_directory": shm_directory,
        "shm_directory_bytes": shm_bytes,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "numpy": np.__version__,
        "load_average_1min": os.getloadavg()[0],
        "mploader_environment": {key: value for key, value in os.environ.items() if key.startswith("MPLOADER_")},
    }


def _format_size(size_bytes: int) -> str:
    if size_bytes >= 2**30:
        return f"{size_bytes / 2**30:.2f} GiB"
    return f"{size_bytes / 2**20:.1f} MiB"


def _format_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    # Millisecond calls, such as the LeNet-size loads, keep three significant digits.
    return f"{value:.3f}" if value >= 0.1 else f"{value:.3g}"


def _machine_line(machine: dict[str, Any]) -> str:
    memory = machine["memory_bytes"]
    memory_text = f"{memory / 2**30:.1f} GiB memory" if memory else "memory unknown"
    reporting = machine.get("free_page_reporting")
    if reporting is None:
        reporting_text = ""
    else:
        reporting_text = f"virtio-balloon free page reporting {'on' if reporting else 'off'}, "
    return (
        f"{machine['cpu_model']}, {machine['cpus_in_affinity_mask']} CPUs in the affinity mask "
        f"({machine['cpus_online']} online), {memory_text}, {machine['kernel']}, "
        f"THP enabled `{machine['thp_enabled']}`, shmem_enabled `{machine['thp_shmem_enabled']}`, "
        f"{reporting_text}{machine['python']}, numpy {machine['numpy']}, 1-minute load average "
        f"{machine['load_average_1min']:.2f} at the start"
    )


_FILE_LABELS = {
    "ckpt": "the LLM-shaped checkpoint",
    "safetensors": "its .safetensors copy",
    "aes": "its AES-GCM encrypted copy",
    "lenet": "the LeNet-size checkpoint",
}


def _files_line(record: dict[str, Any]) -> str:
    parts = []
    for kind, facts in record["files"].items():
        text = (f"{_FILE_LABELS.get(kind, kind)} `{Path(facts['path']).name}`: {facts['file_bytes']:,} bytes, "
                f"{facts['tensor_count']} tensors ({facts['tensor_bytes']:,} bytes of tensor data) on "
                f"{facts['filesystem']}")
        parts.append(text)
    settings = record["settings"]
    return (
        f"Files: {'; '.join(parts)}. The LLM-shaped tensors are float16 with seed {settings['seed']}. Warm-up runs "
        f"per loader: {settings['warmup_runs']}. Memory sampled every {settings['sample_interval_ms']:g} ms."
    )


def _target_result(row: dict[str, Any]) -> tuple[str, str]:
    """Return the measured and result cells of one target row."""
    if row["measured"] is None:
        return "-", f"not measured: {row['reason']}"
    measured = row["measured"]
    limit = row["limit"]
    if row["met"]:
        return f"{measured:.3f}", f"met, {limit - measured:.3f} below the target"
    return f"{measured:.3f}", f"missed by {measured - limit:.3f} ({measured / limit - 1:+.0%})"


def _targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["#### Targets", "", "| figure | target | measured | result |", "|---|---|---:|---|"]
    for row in rows:
        measured, result = _target_result(row)
        lines.append(f"| {row['figure']} | {row['target']} | {measured} | {result} |")
    lines.append("")
    return lines


def _workload_table(name: str, workload: dict[str, Any]) -> list[str]:
    summary = workload["summary"]
    baselines = [loader for loader in workload["baselines"] if summary.get(loader, {}).get("ok_runs")]
    second_call = workload["figure_call"] == 1
    header = ["loader", "2nd call median s" if second_call else "median s", "min–max s", "GB/s"]
    header += [f"÷ {loader}" for loader in baselines]
    header += ["peak MiB", "peak ÷ tensor bytes", "added ÷ tensor bytes"]
    if second_call:
        header.append("1st call median s")
    elif workload["warm_pool"]:
        header.append("2nd call median s")

    lines = [f"#### `{name}`: {workload['description']}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for loader, entry in summary.items():
        if entry["ok_runs"] == 0:
            continue
        cells = [
            loader,
            _format_seconds(entry["median_seconds"]),
            f"{_format_seconds(entry['min_seconds'])}–{_format_seconds(entry['max_seconds'])}",
            f"{entry['gigabytes_per_second']:.2f}",
        ]
        cells += [_format_ratio(entry["ratio_to"].get(baseline)) for baseline in baselines]
        cells += [
            _format_mib(entry["median_peak_bytes"]),
            _format_ratio(entry["median_peak_ratio"]),
            _format_ratio(entry["median_added_ratio"]),
        ]
        if second_call:
            cells.append(_format_seconds(entry["median_first_call_seconds"]))
        elif workload["warm_pool"]:
            cells.append(_format_seconds(entry["median_second_call_seconds"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown_section(record: dict[str, Any]) -> str:
    """Return the Markdown section for one benchmark record."""
    settings = record["settings"]
    checkpoint = record["files"].get("ckpt") or next(iter(record["files"].values()))
    runs = settings["runs"]
    lines = [
        f"### {record['date']}: suite `{record['suite']}`, {_format_size(checkpoint['file_bytes'])} checkpoint, "
        f"{runs} measured run{'s' if runs != 1 else ''} per loader",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Machine: {_machine_line(record['machine'])}.",
        "",
        _files_line(record),
        "",
    ]
    if record.get("targets"):
        lines += _targets_table(record["targets"])
    for name, workload in record["workloads"].items():
        lines += _workload_table(name, workload)

    notes = _notes(record)
    if notes:
        lines.extend(f"- {note}" for note in notes)
        lines.append("")
    return "\n".join(lines)


def _notes(record: dict[str, Any]) -> list[str]:
    notes = []
    for loader, reason in record["skipped"].items():
        notes.append(f"`{loader}` skipped: {reason}")
    for name, workload in record["workloads"].items():
        for loader, entry in workload["summary"].items():
            if entry["failed_runs"]:
                failed = entry["failed_runs"]
                total = failed + entry["ok_runs"]
                notes.append(f"`{name}` `{loader}`: {failed} of {total} runs failed; first error: "
                             f"{entry['first_error']}")
    for name, workload in record["workloads"].items():
        note = _disk_read_note(name, workload, record["files"])
        if note:
            notes.append(note)
    entries = [entry for workload in record["workloads"].values() for entry in workload["summary"].values()
               if entry["ok_runs"]]
    shares = [entry["median_sampler_cpu_share"] for entry in entries if entry["median_sampler_cpu_share"] is not None]
    if shares:
        notes.append(f"The memory sampler used at most {max(shares):.0%} of one CPU (median per loader) while a run "
                     "was sampled.")
    notes += _loader_notes(record)
    return notes


def _loader_notes(record: dict[str, Any]) -> list[str]:
    """Return the notes about particular loaders: workers used, choice, huge pages, versions."""
    notes = []
    plain = record["workloads"].get("plain", {}).get("summary", {})

    default = plain.get("mploader-default")
    if default and default.get("workers") is not None:
        if default["workers"] == 0:
            used = "loaded in-process"
        else:
            used = f"used {default['workers']} worker process{'es' if default['workers'] != 1 else ''}"
        notes.append(f"`mploader-default` (workers=None) {used} on this machine.")

    choice = record.get("choice")
    if choice and plain.get("mploader-choice10", {}).get("ok_runs"):
        notes.append(
            f"`mploader-choice10` keeps the first {len(choice['names'])} of {choice['tensor_count']} tensors in file "
            f"order, {choice['kept_bytes']:,} bytes, {choice['kept_fraction']:.1%} of the tensor bytes; its ratio "
            "is to `mploader-default`, the full load in the same workload."
        )

    hugeshm = record.get("hugeshm")
    entry = plain.get("mploader-hugeshm")
    if hugeshm and hugeshm.get("path") and entry and entry.get("ok_runs"):
        origin = "mounted by the harness" if hugeshm["mounted_by_harness"] else "given with --hugeshm-dir"
        grown = entry.get("median_system_shmem_huge_bytes")
        if entry.get("workers") == 0:
            grown_text = "; it loaded in-process at this size, so it did not use that directory"
        elif grown is None:
            grown_text = ""
        else:
            grown_text = (f"; machine-wide ShmemHugePages grew by a median {grown / 2**20:,.0f} MiB during its "
                          "timed call")
        notes.append(f"`mploader-hugeshm` set MPLOADER_SHM_DIR to a tmpfs {origin} with options "
                     f"`{hugeshm['mount_options']}`{grown_text}.")

    versions = record.get("loader_versions", {})
    mindspore = next((value for value in versions.values() if "mindspore" in value), None)
    if mindspore:
        notes.append(f"MindSpore {mindspore['mindspore']} under Python {mindspore['python']}, "
                     f"numpy {mindspore['numpy']}.")
    if "safetensors" in versions:
        notes.append(f"safetensors {versions['safetensors']['safetensors']}.")
    return notes


def _disk_read_note(name: str, workload: dict[str, Any], files: dict[str, Any]) -> str | None:
    entries = [entry for entry in workload["summary"].values() if entry["ok_runs"]]
    if not entries:
        return None
    largest = max(entry["median_system_disk_read_bytes"] or 0 for entry in entries)
    text = (f"`{name}`: machine-wide disk reads during a timed call, median per loader: at most "
            f"{largest / 2**20:,.1f} MiB")
    if workload["cold"]:
        smallest = min(entry["median_system_disk_read_bytes"] or 0 for entry in entries)
        return text + f", at least {smallest / 2**20:,.1f} MiB."
    file_bytes = min(files[kind]["file_bytes"] for kind in workload["file_kinds"])
    if largest < 0.01 * file_bytes:
        text += " (under 1% of the file, so the calls read from the page cache)"
    return text + "."


def append_markdown(path: Path, section: str) -> None:
    """Append ``section`` to the Markdown file at ``path``, creating it with a title if missing."""
    if not path.exists():
        path.write_text("# Benchmarks\n\nResults of the mploader benchmark harness, newest last.\n\n## Results\n",
                        encoding="utf-8")
    existing = path.read_text(encoding="utf-8")
    if existing.endswith("\n\n"):
        separator = ""
    elif existing.endswith("\n"):
        separator = "\n"
    else:
        separator = "\n\n"
    with open(path, "a", encoding="utf-8") as file:
        file.write(separator + section)


def write_plot(record: dict[str, Any], path: Path) -> str | None:
    """Plot throughput against worker count to a PNG; return a note instead if no plot can be drawn.

    The points come from the ``plain`` workload. Error bars span the fastest and slowest measured run;
    baselines are horizontal lines.
    """
    plain = record["workloads"].get("plain")
    if plain is None:
        return "the run has no plain workload; no plot written"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return "matplotlib is not installed (pip install 'mploader[bench]'); no plot written"

    summary = plain["summary"]
    points = []
    for loader in ("mploader-inprocess", "mploader-w1", "mploader-w2", "mploader-default"):
        entry = summary.get(loader)
        if entry and entry["ok_runs"] and entry.get("workers") is not None:
            points.append((entry["workers"], entry, loader))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for workers, entry, loader in points:
        rate = entry["gigabytes_per_second"]
        low = entry["loaded_bytes"] / entry["max_seconds"] / 1e9
        high = entry["loaded_bytes"] / entry["min_seconds"] / 1e9
        # mploader-default lands on the same worker count as another point, so it gets its own marker.
        marker = "s" if loader == "mploader-default" else "o"
        axes.errorbar([workers], [rate], yerr=[[rate - low], [high - rate]], fmt=marker, capsize=4, label=loader)
    styles = {"readinto": ":", "shm-floor": "--", "mindspore": "-.", "mindspore-async": (0, (1, 4)),
              "safetensors": (0, (3, 1, 1, 1))}
    for loader, style in styles.items():
        entry = summary.get(loader)
        if entry and entry["ok_runs"]:
            axes.axhline(entry["gigabytes_per_second"], linestyle=style, color="gray", label=loader)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("worker processes (0 = in-process)")
    axes.set_ylabel("GB/s of tensor data (median)")
    checkpoint = record["files"]["ckpt"]
    axes.set_title(f"{_format_size(checkpoint['file_bytes'])} checkpoint, {record['date']}")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None
