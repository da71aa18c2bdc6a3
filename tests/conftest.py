"""Shared fixtures, and the leak check that runs around every test."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import hypothesis_profiles  # noqa: F401  (registers and loads the hypothesis profile)
import psutil
import pytest
from helpers import FIXTURES

from mploader import pool
from mploader.arena import SEGMENT_PREFIX, shm_directory


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    with open(FIXTURES / "manifest.json", encoding="utf-8") as file:
        return json.load(file)["fixtures"]


def _segments() -> set[str]:
    directory = shm_directory()
    try:
        # Only this process's segments: another test run on the machine has its own.
        own_prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
        return {name for name in os.listdir(directory) if name.startswith(own_prefix)}
    except FileNotFoundError:
        return set()


def _stray_children() -> list[psutil.Process]:
    """Children of this process that are not the shared pool's workers or its fork server."""
    running = pool.current_pool()
    allowed = set(running.pids()) if running is not None else set()
    children = psutil.Process().children(recursive=False)
    stray = []
    for child in children:
        if child.pid in allowed:
            continue
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "forkserver" in command or "resource_tracker" in command:
            continue
        stray.append(child)
    return stray


@pytest.fixture(autouse=True)
def no_leaks() -> Any:
    """Fail a test that leaves a shared-memory segment or a stray child process behind."""
    before = _segments()
    yield
    # A cancelled or abandoned load may still be unwinding on its thread.
    for thread in threading.enumerate():
        if thread.name.startswith("mploader-load"):
            thread.join(timeout=30)
    leaked = _segments() - before
    assert not leaked, f"shared-memory segments left in {shm_directory()}: {sorted(leaked)}"
    stray = _stray_children()
    for child in stray:
        child.wait(timeout=5)
    assert not [child for child in stray if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the whole suite: stop the pool and check that no worker outlives it."""
    running = pool.current_pool()
    pids = running.pids() if running is not None else []
    pool.shutdown()
    survivors = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    leftover = _segments()
    if survivors or leftover:
        session.exitstatus = 1
        print(f"\nleak check failed: workers still alive {survivors}, segments left {sorted(leftover)}")
